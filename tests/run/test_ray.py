"""`--engine ray` on a local Ray instance with 2 workers against the loopback stub endpoint:
every row exactly once, the same outputs as a single-process run, resume, and a worker killed
mid-run losing nothing."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aidsafe.config import RunConfig
from aidsafe.inputs import PromptSource
from aidsafe.recipes import registry
from aidsafe.run.directory import RunDirectory
from aidsafe.run.engine import Engine
from aidsafe.run.pipeline import StageSummary, generate, make_pairs
from aidsafe.testing import StubOpenAIServer
from tests.conftest import DRAFT, INTENTS, make_config, read_jsonl, scripted, write_prompts

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="ray not installed (pip install -e '.[ray]')"
)


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[None]:
    """One local Ray instance for the module (starting one takes seconds)."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def stub() -> Iterator[StubOpenAIServer]:
    with StubOpenAIServer(latency=0.02) as server:
        yield server


def stub_config(stub: StubOpenAIServer, **overrides: Any) -> RunConfig:
    model = {"backend": "openai", "base_url": stub.base_url, "model": "stub", "retry_wait": 0}
    return make_config(models={"default": model}, **overrides)


def run(
    tmp: Path, name: str, prompts: Path, config: RunConfig, engine: Engine | None
) -> StageSummary:
    """A `generate` run of the aidsafe recipe; its one stage's summary."""
    result = asyncio.run(
        generate(
            PromptSource(str(prompts)),
            RunDirectory(tmp / name),
            config,
            show_progress=False,
            engine=engine,
        )
    )
    assert [stage.recipe for stage in result.stages] == ["aidsafe"]
    return result.stages[0]


def comparable(value: Any) -> Any:
    """A ledger row without its timings."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items() if k not in ("latency_s", "failed_at")}
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return value


def by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in rows}


def test_two_workers_write_what_one_process_writes_and_resume_skips_every_row(
    tmp_path: Path, ray_instance: None, stub: StubOpenAIServer
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(12)] + [""])
    config = stub_config(stub, concurrency=2)
    single = run(tmp_path, "single", prompts, config, None)
    ray_run = run(tmp_path, "ray", prompts, config, Engine(workers=2))
    assert (ray_run.done_now, ray_run.failed_now) == (single.done_now, single.failed_now) == (12, 1)
    for ledger in ("traces.jsonl", "sft.jsonl"):
        local_rows = read_jsonl(tmp_path / "single" / ledger)
        ray_rows = read_jsonl(tmp_path / "ray" / ledger)
        assert len(ray_rows) == len(by_id(ray_rows)) == 12  # each row exactly once
        assert comparable(by_id(ray_rows)) == comparable(by_id(local_rows))
    failures = read_jsonl(tmp_path / "ray" / "failures.jsonl")
    assert [(f["index"], f["reason"]) for f in failures] == [(12, "invalid_prompt")]
    # the same command again: everything is accounted for, nothing runs twice
    again = run(tmp_path, "ray", prompts, config, Engine(workers=2))
    assert (again.done_now, again.failed_now, again.skipped) == (0, 0, 13)
    assert len(read_jsonl(tmp_path / "ray" / "traces.jsonl")) == 12
    # belief augmentation spreads the same way: each finished row becomes a pair or a rejection
    for name, engine in (("single", None), ("ray", Engine(workers=2))):
        asyncio.run(
            make_pairs(RunDirectory(tmp_path / name), config, show_progress=False, engine=engine)
        )
    for ledger in ("dpo.jsonl", "dpo_failures.jsonl"):
        ray_rows = read_jsonl(tmp_path / "ray" / ledger)
        assert len(ray_rows) == len(by_id(ray_rows))
        local_rows = read_jsonl(tmp_path / "single" / ledger)
        assert comparable(by_id(ray_rows)) == comparable(by_id(local_rows))
    paired = read_jsonl(tmp_path / "ray" / "dpo.jsonl") + read_jsonl(
        tmp_path / "ray" / "dpo_failures.jsonl"
    )
    assert sorted(row["id"] for row in paired) == sorted(f"p{n}" for n in range(12))


def worker_pids() -> list[int]:
    """Ray actor processes running our workers, as `ps` shows them."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::RecipeWorker"):
                pids.append(int(entry))
    return pids


def test_a_worker_killed_mid_run_loses_no_row_and_duplicates_none(
    tmp_path: Path, ray_instance: None
) -> None:
    rows = 40
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(rows)])
    traces = tmp_path / "run" / "traces.jsonl"
    killed: list[tuple[int, int]] = []  # (pid, rows finished when it was killed)

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = len(read_jsonl(traces)) if traces.exists() else 0
            pids = worker_pids()
            if done >= 5 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], done))
                return
            time.sleep(0.05)

    with StubOpenAIServer(latency=0.1) as slow:
        killer = threading.Thread(target=kill_one_worker, daemon=True)
        killer.start()
        summary = run(tmp_path, "run", prompts, stub_config(slow, concurrency=2), Engine(workers=2))
        killer.join()
    assert killed and killed[0][1] < rows, "the worker was killed while rows were in flight"
    finished = read_jsonl(traces)
    failed = read_jsonl(tmp_path / "run" / "failures.jsonl")
    ids = [row["id"] for row in finished + failed]
    assert sorted(ids) == sorted(f"p{n}" for n in range(rows))  # none lost, none twice
    assert [f["reason"] for f in failed] == []  # Ray restarted the worker and reran its rows
    assert summary.done_now == rows
    assert len(read_jsonl(tmp_path / "run" / "sft.jsonl")) == rows


class CountingDecomposer:
    """A decomposer that notes each prompt it is asked about in a file (workers are other
    processes), so a test can count the calls the whole run made."""

    def __init__(self, calls: Path) -> None:
        self.calls = calls

    def __call__(self, messages: list[Any]) -> dict[str, Any]:
        with self.calls.open("a") as handle:
            handle.write(messages[-1].text.splitlines()[-1] + "\n")
        return INTENTS


class KillOnceDrafting:
    """A drafter that kills its worker the first time it drafts for the poisoned prompt."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __call__(self, messages: list[Any]) -> dict[str, Any]:
        if "poison" in messages[-1].text and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return DRAFT


def test_a_row_whose_worker_dies_continues_from_its_last_answer_in_the_same_run(
    tmp_path: Path, ray_instance: None
) -> None:
    calls = tmp_path / "decomposer-calls.txt"
    prompts = write_prompts(tmp_path / "p.jsonl", ["prompt 0", "poison 1", "prompt 2"])
    models = scripted(
        decomposer=[CountingDecomposer(calls)], drafter=[KillOnceDrafting(tmp_path / "killed")]
    )
    summary = run(tmp_path, "run", prompts, make_config(scripted=models), Engine(workers=2))
    assert (tmp_path / "killed").exists(), "the worker was killed after the row's first answer"
    assert (summary.done_now, summary.failed_now) == (3, 0)
    # the dead worker had logged the poisoned row's intents: the row went on from its draft
    asked = calls.read_text().splitlines()
    assert sorted(asked) == sorted(set(asked)) and len(asked) == 3, asked


def kill_worker_on_poison(messages: list[Any]) -> dict[str, Any]:
    """A decomposer that kills its own worker process when the prompt says so."""
    if "poison" in messages[-1].text:
        os.kill(os.getpid(), signal.SIGKILL)
    return INTENTS


def test_a_row_that_always_kills_its_worker_is_recorded_as_worker_lost(
    tmp_path: Path, ray_instance: None
) -> None:
    prompts = write_prompts(
        tmp_path / "p.jsonl", ["prompt 0", "poison 1", "prompt 2", "prompt 3", "prompt 4"]
    )
    config = make_config(scripted=scripted(decomposer=[kill_worker_on_poison]), concurrency=1)
    summary = run(tmp_path, "run", prompts, config, Engine(workers=2))
    failed = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert [(f["id"], f["reason"], f["stage"]) for f in failed] == [("p1", "worker_lost", "worker")]
    assert "died 4 times" in failed[0]["detail"]
    done = sorted(t["id"] for t in read_jsonl(tmp_path / "run" / "traces.jsonl"))
    assert done == ["p0", "p2", "p3", "p4"]
    assert (summary.done_now, summary.failed_now) == (4, 1)


def test_workers_get_the_api_keys_their_models_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidsafe.run.ray import worker_env

    def roles(config: RunConfig) -> list[str]:
        return [name for step in registry.steps(config.recipe) for name in step.roles(config)]

    monkeypatch.setenv("OPENAI_API_KEY", "sk-one")
    monkeypatch.setenv("JUDGE_KEY", "sk-two")
    monkeypatch.setenv("UNRELATED", "x")
    config = make_config(models={"default": {"backend": "openai", "model": "m"}})
    assert worker_env(config, roles(config)) == {"OPENAI_API_KEY": "sk-one"}
    config = make_config(
        recipe="unsafechain",
        models={
            "default": {"backend": "openai", "model": "m"},
            "judge": {"api_key_env": "JUDGE_KEY"},
        },
    )
    assert "judge" in roles(config)
    assert worker_env(config, roles(config)) == {"JUDGE_KEY": "sk-two", "OPENAI_API_KEY": "sk-one"}


def test_the_cli_runs_sft_and_dpo_phases_on_one_local_ray_instance(
    tmp_path: Path, stub: StubOpenAIServer
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(6)])
    out = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "aidsafe", "generate", str(prompts), "--out", str(out)),
        *("--base-url", stub.base_url, "--model", "stub", "--recipe", "aidsafe-dpo"),
        *("--engine", "ray", "--workers", "2", "--quiet"),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "done / failed this run │ 6 / 0" in " ".join(finished.stdout.split())
    assert len(read_jsonl(out / "traces.jsonl")) == 6
    paired = read_jsonl(out / "dpo.jsonl") + read_jsonl(out / "dpo_failures.jsonl")
    assert sorted(row["id"] for row in paired) == [f"p{n}" for n in range(6)]


def test_judge_and_grade_run_on_ray_workers_like_generate(
    tmp_path: Path, stub: StubOpenAIServer
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(4)])
    run(tmp_path, "run", prompts, stub_config(stub), None)
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"id": f"s{n}", "prompt": f"prompt {n % 2}", "response": "Sure."}) + "\n"
            for n in range(4)
        )
    )
    flags = ["--base-url", stub.base_url, "--model", "stub", "--engine", "ray", "--workers", "2"]
    for command in (
        ["judge", str(samples), "--out", str(tmp_path / "judged")],
        ["grade", str(tmp_path / "run")],
    ):
        finished = subprocess.run(
            [sys.executable, "-m", "aidsafe", *command, *flags, "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert finished.returncode == 0, finished.stderr[-3000:]
    judged = read_jsonl(tmp_path / "judged" / "judgments.jsonl")
    assert sorted(row["id"] for row in judged) == ["s0", "s1", "s2", "s3"]
    assert all(row["safe"] is not None for row in judged)
    grades = read_jsonl(tmp_path / "run" / "grades.jsonl")
    assert sorted(row["id"] for row in grades) == ["p0", "p1", "p2", "p3"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["grading"]["runs"][-1]["engine"] == "ray"


def test_the_workers_key_reaches_no_ray_log_and_no_run_file(
    ray_instance: None, tmp_path: Path, stub: StubOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    key = "sk-ray-secret-5a1f3c9e7d"
    monkeypatch.setenv("RAY_TEST_KEY", key)
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(4)])
    config = stub_config(stub)
    config.models["default"].api_key_env = "RAY_TEST_KEY"
    summary = run(tmp_path, "run", prompts, config, Engine(workers=2))
    assert summary.done_now == 4
    logs = Path(ray._private.worker.global_worker.node.get_session_dir_path()) / "logs"
    files = [p for p in [*logs.rglob("*"), *(tmp_path / "run").rglob("*")] if p.is_file()]
    assert files
    for path in files:
        assert key not in path.read_text(errors="replace"), path
