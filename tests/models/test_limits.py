"""Rate limits: requests and tokens per minute per model, shared by the roles calling it,
measured at the loopback stub (arrival times of the requests it received)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aidsafe.inputs import PromptSource
from aidsafe.models.limits import RateLimits
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.testing import StubOpenAIServer
from tests.conftest import make_config, read_jsonl, write_prompts


def most_in_window(arrivals: list[float], window: float) -> int:
    """The most requests that arrived within any `window` seconds."""
    arrivals = sorted(arrivals)
    most, first = 0, 0
    for last, at in enumerate(arrivals):
        while at - arrivals[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_a_run_never_sends_more_requests_than_the_configured_rate(tmp_path: Path) -> None:
    rpm = 600  # 10 per second, shared by the four roles a row calls
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(8)])
    with StubOpenAIServer() as stub:
        model = {
            "backend": "openai",
            "base_url": stub.base_url,
            "model": "stub",
            "requests_per_minute": rpm,
        }
        config = make_config(models={"default": model}, concurrency=8)
        asyncio.run(
            generate(
                PromptSource(str(prompts)),
                RunDirectory(tmp_path / "run"),
                config,
                show_progress=False,
            )
        )
        arrivals = list(stub.arrivals)
    assert len(read_jsonl(tmp_path / "run" / "traces.jsonl")) == 8
    assert len(arrivals) >= 32  # 4 calls per row
    # evenly spaced: at most 1 + 10 in any second, 1 + 20 in any two, and the run took as long
    # as its requests need at that rate
    assert most_in_window(arrivals, 1.0) <= 1 + 10
    assert most_in_window(arrivals, 2.0) <= 1 + 20
    assert max(arrivals) - min(arrivals) >= (len(arrivals) - 1) / 10 - 0.05


def test_token_limits_count_the_estimate_before_and_the_rest_after() -> None:
    async def scenario() -> tuple[float, float]:
        limits = RateLimits(None, 600)  # 10 tokens per second, a bucket of 600
        assert limits.tokens is not None
        estimate = await limits.before(400 * 4)  # 400 tokens of prompt, reserved at once
        assert estimate == 400
        await limits.after(estimate, {"input_tokens": 450, "output_tokens": 150})
        loop = asyncio.get_running_loop()
        started = loop.time()
        await limits.before(40 * 4)  # the bucket holds 600 of 600: this one waits ~4 s
        return loop.time() - started, limits.tokens.max_rate

    waited, capacity = asyncio.run(scenario())
    assert capacity == 600
    assert waited >= 3.0


def test_ray_workers_share_a_rate_limit_evenly() -> None:
    from aidsafe.run.ray import split_rate_limits

    config = make_config(
        models={
            "default": {"requests_per_minute": 600, "tokens_per_minute": 90_000},
            "refiner": {"requests_per_minute": 60},
        }
    )
    data = split_rate_limits(config.model_dump(mode="json"), 4)
    assert data["models"]["default"]["requests_per_minute"] == 150
    assert data["models"]["default"]["tokens_per_minute"] == 22_500
    assert data["models"]["refiner"]["requests_per_minute"] == 15
    assert data["models"]["refiner"]["tokens_per_minute"] is None


def test_adaptive_concurrency_halves_on_overload_once_per_round_trip_and_grows_back() -> None:
    from aidsafe.models.limits import AdaptiveConcurrency

    async def scenario() -> None:
        gate = AdaptiveConcurrency()
        for _ in range(8):
            await gate.acquire()  # unbounded before any overload
        assert gate.limit is None and gate.in_flight == 8
        gate.release(True, took=1.0)  # overload: half of the 8 then in flight
        assert gate.limit == 4.0
        gate.release(True, took=1.0)  # the same burst: no second cut within a round trip
        assert gate.limit == 4.0
        waiting = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        assert not waiting.done()  # 6 in flight, room for 4
        for _ in range(3):
            gate.release(False, took=0.1)  # healthy answers: +1/limit each
        assert 4.6 < gate.limit < 4.8 and gate.in_flight == 3
        await asyncio.wait_for(waiting, 1)  # room again: the waiter goes
        assert gate.in_flight == 4 and gate.overloads == 2

    asyncio.run(scenario())


def run_against_capacity(tmp_path: Path, stub: StubOpenAIServer, adaptive: bool) -> None:
    tmp_path.mkdir()
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(60)])
    model = {
        "backend": "openai",
        "base_url": stub.base_url,
        "model": "stub",
        "retry_wait": 0.02,
        "max_retries": 10,
        "adaptive_concurrency": adaptive,
    }
    config = make_config(models={"default": model}, concurrency=16)
    result = asyncio.run(
        generate(
            PromptSource(str(prompts)), RunDirectory(tmp_path / "run"), config, show_progress=False
        )
    )
    assert (result.stages[0].done_now, result.stages[0].failed_now) == (60, 0)


def test_aimd_keeps_an_endpoint_near_its_capacity_and_recovers_when_it_grows(
    tmp_path: Path,
) -> None:
    import threading

    with StubOpenAIServer(latency=0.05, capacity=4) as fixed:
        run_against_capacity(tmp_path / "fixed", fixed, adaptive=False)
    with StubOpenAIServer(latency=0.05, capacity=4) as adapted:
        grown: list[float] = []

        def grow() -> None:  # half way through, the endpoint gets three times the capacity
            while len(adapted.requests) < 120:
                time.sleep(0.01)
            adapted.capacity = 12
            grown.append(time.monotonic())

        threading.Thread(target=grow, daemon=True).start()
        run_against_capacity(tmp_path / "adapted", adapted, adaptive=True)
    # 16 rows ask at once, 4 fit: without AIMD most requests are refused first; with it few
    assert fixed.overloads > 60
    assert adapted.overloads < fixed.overloads / 2
    # after the capacity grew, the requests in flight grew past the old capacity
    assert grown and max(load for at, load in adapted.loads if at > grown[0]) > 6
