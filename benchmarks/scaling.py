"""Scale-out benchmark: rows/s of the AIDSAFE recipe with `--engine ray` and 1 vs 2 workers,
against the loopback stub endpoint (a separate process) answering after a fixed latency.

Prints, measured in this one run: rows/s with 1 and 2 workers and their ratio; the driver's
own CPU per row (what bounds one driver); and a paper estimate for N machines x M GPUs.

    python benchmarks/scaling.py [--latency 0.2] [--concurrency 32] [--rows 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import ray
from rich.console import Console

from aidsafe.inputs import PromptSource
from aidsafe.jsonl import read_jsonl
from aidsafe.recipes.registry import load_config
from aidsafe.run.directory import RunDirectory
from aidsafe.run.engine import Engine
from aidsafe.run.pipeline import generate
from benchmarks.orchestration import start_stub, write_prompts


def run(url: str, rows: int, concurrency: int, workers: int, workdir: Path) -> dict[str, float]:
    prompts = write_prompts(workdir / f"w{workers}.jsonl", rows)
    model = {
        "backend": "openai",
        "base_url": url,
        "model": "stub",
        "structured_output": "json_schema",
    }
    config = load_config(None, {"concurrency": concurrency, "models": {"default": model}})
    out = RunDirectory(workdir / f"w{workers}")
    cpu, wall = time.process_time(), time.perf_counter()
    summary = asyncio.run(
        generate(
            PromptSource(str(prompts)),
            out,
            config,
            show_progress=False,
            console=Console(stderr=True),
            engine=Engine(workers=workers),
        )
    ).stages[0]
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if summary.done_now != rows:
        raise SystemExit(f"only {summary.done_now} of {rows} rows finished")
    calls = sum(len(t["calls"]) for t in read_jsonl(out.path("traces.jsonl")))
    return {"rows_per_s": rows / wall, "driver_cpu_per_row": cpu / rows, "calls": calls / rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=32, help="rows in flight per worker")
    parser.add_argument("--rows", type=int, default=256)
    options = parser.parse_args()
    stub, url = start_stub(options.latency)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "warmup").mkdir()
            run(url, 16, options.concurrency, 2, workdir / "warmup")  # imports, caches
            one = run(url, options.rows, options.concurrency, 1, workdir)
            two = run(url, options.rows, options.concurrency, 2, workdir)
    finally:
        ray.shutdown()
        stub.terminate()
    scaling = two["rows_per_s"] / one["rows_per_s"]
    ideal_one = options.concurrency / (one["calls"] * options.latency)
    print(
        f"{options.rows} rows, {one['calls']:.1f} LLM calls per row, {options.latency * 1000:.0f} "
        f"ms latency, {options.concurrency} rows in flight per worker"
    )
    print(f"1 worker:  {one['rows_per_s']:.2f} rows/s (ideal {ideal_one:.2f})")
    print(f"2 workers: {two['rows_per_s']:.2f} rows/s (ideal {2 * ideal_one:.2f})")
    print(f"scaling 2 vs 1 workers: {scaling:.2f}x (ideal 2.00x)")
    driver_limit = 1 / two["driver_cpu_per_row"]
    print(
        f"driver CPU per row: {1000 * two['driver_cpu_per_row']:.1f} ms, so one driver records "
        f"up to ~{driver_limit:.0f} rows/s"
    )
    per_worker = two["rows_per_s"] / 2
    print(
        "\npaper estimate for N machines x M GPUs (one worker and one vLLM engine per GPU):\n"
        f"  rows/s ~= min(N x M x r_gpu, {driver_limit:.0f}), where r_gpu = rows/s one engine "
        "sustains for this recipe\n"
        f"  (its generated tokens/s / tokens per row; benchmarks/engine.py measures it) and a "
        f"worker's CPU allows ~{per_worker:.1f} rows/s at this latency and concurrency, more "
        "with more rows in flight\n"
        f"  e.g. 4 x 8 GPUs at r_gpu = 5 rows/s: min(160, {driver_limit:.0f}) rows/s = "
        f"{min(160, driver_limit):.0f} rows/s, {min(160, driver_limit) * 3600:,.0f} rows/hour"
    )
    print(json.dumps({"one": one, "two": two, "scaling": scaling}))


if __name__ == "__main__":
    main()
