"""Paid-API benchmark: how close a run gets to an endpoint's limits without passing them.

Against the loopback stub (in this process, on its own threads), measured in this one run:
- rate limit: requests/s achieved at the stub / the configured `requests_per_minute` / 60, and
  the most requests seen in any one second (at most 1 + the rate);
- adaptive concurrency (AIMD): requests/s the stub accepted / its capacity (capacity / latency),
  with and without `adaptive_concurrency`, and how many requests it refused (HTTP 429).

    python benchmarks/limits.py [--rows 120] [--rpm 1200] [--capacity 8] [--latency 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from aidsafe.inputs import PromptSource
from aidsafe.recipes.registry import load_config
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.testing import StubOpenAIServer
from benchmarks.orchestration import write_prompts


def run(stub: StubOpenAIServer, rows: int, workdir: Path, name: str, **model: Any) -> float:
    """Wall seconds of an AIDSAFE run of `rows` rows, 16 in flight, against `stub`."""
    prompts = write_prompts(workdir / f"{name}.jsonl", rows)
    settings = {"backend": "openai", "base_url": stub.base_url, "model": "stub"} | model
    config = load_config(None, {"concurrency": 16, "models": {"default": settings}})
    started = time.perf_counter()
    summary = asyncio.run(
        generate(
            PromptSource(str(prompts)),
            RunDirectory(workdir / name),
            config,
            show_progress=False,
            console=Console(),
        )
    ).stages[0]
    if summary.done_now != rows:
        raise SystemExit(f"{name}: only {summary.done_now} of {rows} rows finished")
    return time.perf_counter() - started


def busiest_second(arrivals: list[float]) -> int:
    arrivals = sorted(arrivals)
    most, first = 0, 0
    for last, at in enumerate(arrivals):
        while at - arrivals[first] > 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=120)
    parser.add_argument("--rpm", type=float, default=1200)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.05)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        with StubOpenAIServer() as stub:
            run(stub, 4, workdir, "warmup")
            stub.arrivals.clear()
            run(stub, options.rows, workdir, "rate", requests_per_minute=options.rpm)
            arrivals = stub.arrivals
        achieved = (len(arrivals) - 1) / (max(arrivals) - min(arrivals))
        configured = options.rpm / 60
        print(f"rate limit {options.rpm:g}/min ({configured:.1f}/s), {len(arrivals)} requests:")
        print(f"  achieved {achieved:.2f}/s = {achieved / configured:.3f} x the configured rate")
        print(f"  busiest second: {busiest_second(arrivals)} requests (at most 1 + the rate)")
        capacity = options.capacity / options.latency
        print(
            f"\nendpoint capacity {options.capacity} in flight x {1000 * options.latency:.0f} ms "
            f"= {capacity:.0f} requests/s, 16 rows asking at once:"
        )
        for adaptive in (True, False):
            stub = StubOpenAIServer(latency=options.latency, capacity=options.capacity)
            with stub:
                wall = run(
                    stub,
                    options.rows,
                    workdir,
                    f"aimd-{adaptive}",
                    adaptive_concurrency=adaptive,
                    retry_wait=0.02,
                    max_retries=12,
                )
            accepted = len(stub.requests) / wall
            print(
                f"  adaptive_concurrency={str(adaptive).lower():5}: {accepted:.1f} requests/s = "
                f"{accepted / capacity:.2f} x capacity; {stub.overloads} refused (429) of "
                f"{stub.overloads + len(stub.requests)} sent"
            )


if __name__ == "__main__":
    main()
