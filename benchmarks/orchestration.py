"""Orchestration benchmark: does aidsafe's own code keep an endpoint busy? The full AIDSAFE graph
runs against a loopback OpenAI-compatible stub (a separate process, so its CPU is not ours) that
answers every request with a schema-valid answer after a fixed latency.

Prints, all measured in this one run:
- our process's CPU milliseconds per LLM call, at zero latency;
- concurrency efficiency = achieved rows/s / ideal rows/s at concurrency 1, 16, 64, 256 with
  200 ms latency, where ideal = concurrency / (LLM calls per row x latency);
- with --memory: peak RSS growth from row 1,000 to row 10,000 of a zero-latency run.

    python benchmarks/orchestration.py [--latency 0.2] [--levels 1,16,64,256] [--memory]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console

from aidsafe.inputs import PromptSource
from aidsafe.jsonl import read_jsonl
from aidsafe.recipes.registry import load_config
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate


def start_stub(latency: float) -> tuple[subprocess.Popen[str], str]:
    code = f"from aidsafe.testing import serve_stub; serve_stub(0, {latency})"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def write_prompts(path: Path, rows: int) -> Path:
    with path.open("w") as handle:
        for n in range(rows):
            handle.write(
                json.dumps({"id": f"r{n}", "prompt": f"benchmark prompt number {n}"}) + "\n"
            )
    return path


def run(
    base_url: str, rows: int, concurrency: int, workdir: Path, name: str, checkpoint: str = "step"
) -> dict[str, float]:
    prompts = write_prompts(workdir / f"{name}.jsonl", rows)
    config = load_config(
        None,
        {
            "concurrency": concurrency,
            "checkpoint": checkpoint,
            "models": {
                "default": {
                    "backend": "openai",
                    "base_url": base_url,
                    "model": "stub",
                    "structured_output": "json_schema",
                }
            },
        },
    )
    out = RunDirectory(workdir / name)
    cpu, wall = time.process_time(), time.perf_counter()
    summary = asyncio.run(
        generate(PromptSource(str(prompts)), out, config, show_progress=False, console=Console())
    ).stages[0]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    calls = sum(len(t["calls"]) for t in read_jsonl(out.path("traces.jsonl")))
    if summary.done_now != rows:
        reasons = {f["detail"][:200] for f in read_jsonl(out.path("failures.jsonl"))}
        raise SystemExit(f"only {summary.done_now} of {rows} rows finished: {reasons}")
    return {"rows": rows, "calls": calls, "cpu_s": cpu, "wall_s": wall}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_run(base_url: str, workdir: Path, rows: int) -> tuple[float, float]:
    """Peak RSS when the ledger holds 1,000 rows, and at the end."""
    marks: dict[str, float] = {}
    traces = workdir / "memory" / "traces.jsonl"

    def watch() -> None:
        while "end" not in marks:
            if "1000" not in marks and traces.exists():
                with traces.open() as handle:
                    if sum(1 for _ in handle) >= 1000:
                        marks["1000"] = peak_rss_mb()
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run(base_url, rows, 64, workdir, "memory")
    marks["end"] = peak_rss_mb()
    return marks.get("1000", float("nan")), marks["end"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--levels", default="1,16,64,256")
    parser.add_argument(
        "--rows-per-slot",
        type=int,
        default=4,
        help="rows = slots x this, at least --min-rows (so a run's start-up is a small share)",
    )
    parser.add_argument("--min-rows", type=int, default=32)
    parser.add_argument("--memory", action="store_true", help="also the 10,000-row memory run")
    parser.add_argument("--checkpoint", default="step", choices=("step", "row"))
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stub, url = start_stub(0.0)
        try:
            run(url, 20, 16, workdir, "warmup")
            for mode in ("step", "row"):
                zero = run(url, 200, 16, workdir, f"zero-{mode}", mode)
                print(
                    f"CPU per LLM call at zero latency, checkpoint={mode}: "
                    f"{1000 * zero['cpu_s'] / zero['calls']:.2f} ms "
                    f"({zero['calls']} calls, {zero['calls'] / zero['wall_s']:.0f} calls/s)"
                )
            if options.memory:
                at_1000, at_end = memory_run(url, workdir, 10_000)
                print(
                    f"peak RSS: {at_1000:.0f} MB at row 1,000, {at_end:.0f} MB at row 10,000 "
                    f"(growth {at_end - at_1000:.0f} MB; target < 200 MB)"
                )
        finally:
            stub.terminate()
        stub, url = start_stub(options.latency)
        try:
            print(
                f"\nconcurrency efficiency at {1000 * options.latency:.0f} ms latency, "
                f"checkpoint={options.checkpoint}:"
            )
            print(f"{'in flight':>10} {'rows':>6} {'rows/s':>8} {'ideal':>8} {'efficiency':>10}")
            for level in (int(x) for x in options.levels.split(",")):
                rows = max(level * options.rows_per_slot, options.min_rows)
                result = run(url, rows, level, workdir, f"c{level}", options.checkpoint)
                calls_per_row = result["calls"] / result["rows"]
                ideal = level / (calls_per_row * options.latency)
                achieved = result["rows"] / result["wall_s"]
                print(
                    f"{level:>10} {result['rows']:>6.0f} {achieved:>8.2f} {ideal:>8.2f} "
                    f"{achieved / ideal:>10.2f}"
                )
        finally:
            stub.terminate()


if __name__ == "__main__":
    main()
