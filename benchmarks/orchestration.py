"""Orchestration benchmark: does aidsafe's own code keep an endpoint busy? The full AIDSAFE graph
runs against a loopback OpenAI-compatible stub (a separate process, so its CPU is not ours) that
answers every request with a schema-valid answer after a fixed latency.

Prints, all measured in this one run:
- our process's CPU milliseconds per LLM call at zero latency, `checkpoint: step` and `row`, at
  --zero-concurrency rows in flight (default 64);
- the floor, against the same stub at the same concurrency and number of calls: a bare
  `openai.AsyncOpenAI` loop sending the request bodies aidsafe sent (captured from one row: the
  same messages and json_schema `response_format`, in `extra_body` as aidsafe sends it), the same
  with `response_format` as the client's typed parameter, and a bare `httpx2.AsyncClient` POST
  loop (the HTTP client under openai 3.x); then the ratio aidsafe / floor;
- bytes written to the run directory per LLM call: every file under it after the run, and the
  response log's bytes appended during the run (compacted away at the end of a run whose rows
  all finished);
- concurrency efficiency = achieved rows/s / ideal rows/s at concurrency 1, 16, 64, 256 with
  200 ms latency, where ideal = concurrency / (LLM calls per row x latency);
- with --profile FILE: a cProfile of one more zero-latency `step` run (stats saved to FILE),
  summarised as self time by package and the top entries by cumulative time;
- with --memory: peak RSS growth from row 1,000 to row 10,000 of a zero-latency run.

    python benchmarks/orchestration.py [--latency 0.2] [--levels 1,16,64,256]
        [--zero-concurrency 64] [--zero-rows-per-slot 4] [--profile FILE] [--memory]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
from rich.console import Console

from aidsafe.inputs import PromptSource
from aidsafe.jsonl import read_jsonl
from aidsafe.recipes.registry import load_config
from aidsafe.run.directory import RESPONSES, RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.testing import StubOpenAIServer

TARGET_CPU_MS = 2.0  # the targets
TARGET_EFFICIENCY = 0.9
TARGET_BYTES = 5 * 1024


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
) -> dict[str, Any]:
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
    return {"rows": rows, "calls": calls, "cpu_s": cpu, "wall_s": wall, "out": out.root}


def capture_bodies(workdir: Path) -> list[dict[str, Any]]:
    """The request bodies aidsafe sends for one row (an in-process stub records them)."""
    with StubOpenAIServer() as stub:
        run(stub.base_url, 1, 1, workdir, "capture")
        return list(stub.requests)


async def _loop(calls: int, concurrency: int, call: Callable[[int], Awaitable[None]]) -> None:
    numbers = iter(range(calls))

    async def worker() -> None:
        for n in numbers:  # one iterator shared by the workers: each call is made once
            await call(n)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def floor_openai(
    base_url: str, bodies: list[dict[str, Any]], calls: int, concurrency: int, typed: bool
) -> float:
    """CPU seconds of a bare openai.AsyncOpenAI loop sending `bodies` round robin. `typed`:
    response_format as the client's typed parameter (which the client walks on every request)
    rather than in extra_body, as aidsafe sends it."""

    async def main() -> None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="stub", max_retries=0)

        async def call(n: int) -> None:
            body = dict(bodies[n % len(bodies)])
            model, messages = body.pop("model"), body.pop("messages")
            if typed:
                response = await client.chat.completions.create(
                    model=model,
                    messages=messages,
                    response_format=body.pop("response_format"),
                    extra_body=body,
                )
            else:
                response = await client.chat.completions.create(
                    model=model, messages=messages, extra_body=body
                )
            json.loads(response.choices[0].message.content or "")

        async with client:
            await _loop(calls, concurrency, call)

    cpu = time.process_time()
    asyncio.run(main())
    return time.process_time() - cpu


def floor_httpx(base_url: str, bodies: list[dict[str, Any]], calls: int, concurrency: int) -> float:
    """CPU seconds of a bare httpx2.AsyncClient POST loop sending `bodies` round robin: the HTTP
    client under openai 3.x (and so under aidsafe). httpx 0.28 / httpcore 1.0 is no floor here:
    its connection pool costs 5-8 ms of CPU per call with 64 connections in use."""

    async def main() -> None:
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx2.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:

            async def call(n: int) -> None:
                response = await client.post("/chat/completions", json=bodies[n % len(bodies)])
                response.raise_for_status()
                json.loads(response.json()["choices"][0]["message"]["content"])

            await _loop(calls, concurrency, call)

    cpu = time.process_time()
    asyncio.run(main())
    return time.process_time() - cpu


def floor_rows(
    base_url: str, bodies: list[dict[str, Any]], rows: int, calls_per_row: int, concurrency: int
) -> float:
    """Wall seconds of a bare aiohttp loop (the client under `backend: openai`) running `rows`
    rows of `calls_per_row` sequential POSTs, `concurrency` rows in flight: the efficiency the
    endpoint and this machine allow, measured beside ours."""

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def row(n: int) -> None:
                for k in range(calls_per_row):
                    body = bodies[(n + k) % len(bodies)]
                    url = f"{base_url}/chat/completions"
                    async with session.post(url, json=body) as response:
                        json.loads(await response.read())

            await _loop(rows, concurrency, row)

    wall = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - wall


def written(root: Path) -> tuple[dict[str, int], int]:
    """Bytes of every file under a run directory by top-level entry, and the response log's
    bytes appended during the run (from the manifest; the log is compacted when a run ends)."""
    sizes: Counter[str] = Counter()
    for path in root.rglob("*"):
        if path.is_file():
            sizes[path.relative_to(root).parts[0]] += path.stat().st_size
    manifest = json.loads((root / "manifest.json").read_text())
    sections = [manifest, *(v for v in manifest.values() if isinstance(v, dict))]
    appended = sum(
        r.get("response_log_bytes", 0) for s in sections for r in s.get("runs", []) or []
    )
    return dict(sizes), appended


def per_call_ms(cpu_s: float, calls: int) -> float:
    return 1000 * cpu_s / calls


def zero_latency(
    url: str, workdir: Path, concurrency: int, rows: int, bodies: list[dict[str, Any]]
) -> dict[str, float]:
    """The zero-latency measures at one concurrency; prints them, returns the headline ones."""
    results: dict[str, float] = {}
    print(f"\nzero latency, {concurrency} in flight, {rows} rows:")
    bytes_lines = []
    calls = 0
    for mode in ("step", "row"):
        zero = run(url, rows, concurrency, workdir, f"zero-{mode}-c{concurrency}", mode)
        calls = zero["calls"]
        results[mode] = per_call_ms(zero["cpu_s"], calls)
        print(
            f"  aidsafe, checkpoint={mode}: {results[mode]:6.2f} ms CPU per LLM call "
            f"({calls} calls, {calls / zero['wall_s']:.0f} calls/s)"
        )
        sizes, log_bytes = written(zero["out"])
        on_disk = sum(sizes.values())
        total = on_disk + log_bytes - sizes.get(RESPONSES, 0)
        results[f"bytes_{mode}"] = total / calls
        parts = ", ".join(f"{name} {size / calls:.0f}" for name, size in sorted(sizes.items()))
        bytes_lines.append(
            f"  checkpoint={mode}: {total / calls:,.0f} B written per call "
            f"(response log {log_bytes / calls:,.0f} B = {log_bytes / max(total, 1):.0%}); "
            f"on disk after the run {on_disk / calls:,.0f} B per call: {parts}"
        )
    floors = {
        "openai": floor_openai(url, bodies, calls, concurrency, typed=False),
        "openai_typed": floor_openai(url, bodies, calls, concurrency, typed=True),
        "httpx": floor_httpx(url, bodies, calls, concurrency),
    }
    labels = {
        "openai": "floor: bare openai.AsyncOpenAI (schema in extra_body, as aidsafe)",
        "openai_typed": "       bare openai.AsyncOpenAI (typed response_format param)",
        "httpx": "floor: bare httpx2.AsyncClient POST",
    }
    for name, cpu in floors.items():
        results[name] = per_call_ms(cpu, calls)
        print(f"  {labels[name]}: {results[name]:6.2f} ms CPU per call")
    for mode in ("step", "row"):
        print(
            f"  ratio aidsafe/floor, checkpoint={mode}: {results[mode] / results['openai']:.2f}x "
            f"the openai client, {results[mode] / results['httpx']:.2f}x httpx2"
        )
    print("bytes written to the run directory per LLM call (after the run):")
    print("\n".join(bytes_lines))
    return results


LAYERS = {  # package -> the layer its self time is charged to
    "openai": "openai client + HTTP (openai, httpx2, httpcore2, h11, anyio)",
    "httpx2": "openai client + HTTP (openai, httpx2, httpcore2, h11, anyio)",
    "httpcore2": "openai client + HTTP (openai, httpx2, httpcore2, h11, anyio)",
    "h11": "openai client + HTTP (openai, httpx2, httpcore2, h11, anyio)",
    "anyio": "openai client + HTTP (openai, httpx2, httpcore2, h11, anyio)",
    "langchain_core": "LangChain (langchain_core, langchain_openai)",
    "langchain_openai": "LangChain (langchain_core, langchain_openai)",
    "langgraph": "LangGraph",
    "aidsafe": "aidsafe",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "benchmarks": "this benchmark (the floor's loop; the run's wrapper)",
}
EVENT_LOOP = "asyncio event loop (select, scheduling)"


def profile(
    url: str,
    workdir: Path,
    concurrency: int,
    rows: int,
    target: Path,
    bodies: list[dict[str, Any]],
) -> None:
    """One zero-latency `step` run under cProfile, and the openai floor's loop for as many
    calls, so that the client stack's cost in both is seen with the same overhead. Self time
    is charged to layers: a package's own functions to its layer, the standard library's and
    builtins' to the layer of whoever called them (split by their callers' shares), what only
    the event loop called to the loop.
    Cumulative times stop at task boundaries (asyncio.wait_for and LangGraph run each call in a
    task of its own), so they are shown within one call, not per row."""
    profiler = cProfile.Profile()
    profiler.enable()
    result = run(url, rows, concurrency, workdir, "profile", "step")
    profiler.disable()
    profiler.dump_stats(str(target))
    raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    calls = result["calls"]
    floor_profiler = cProfile.Profile()
    floor_profiler.enable()
    floor_openai(url, bodies, calls, concurrency, typed=False)
    floor_profiler.disable()
    floor_raw: dict[Any, Any] = pstats.Stats(floor_profiler).stats  # type: ignore[attr-defined]
    layers, floor_layers = layer_times(raw), layer_times(floor_raw)
    print(
        f"\nprofile (cProfile, checkpoint=step, {calls} calls; stats in {target}), "
        "ms per LLM call under the profiler (it inflates Python-heavy code most):"
    )
    print(f"  {'aidsafe':>8} {'share':>6} {'floor':>8}  layer")
    for layer, seconds in layers.most_common():
        print(
            f"  {1000 * seconds / calls:8.2f} {seconds / layers.total():6.1%} "
            f"{1000 * floor_layers.get(layer, 0.0) / calls:8.2f}  {layer}"
        )
    print(
        f"  {1000 * layers.total() / calls:8.2f} {1:6.1%} "
        f"{1000 * floor_layers.total() / calls:8.2f}  total (floor: the bare openai loop)"
    )
    print("  top entries by cumulative time, ms per LLM call under the profiler:")
    skip = ("asyncio", "threading", "selectors", "benchmarks", "_contextvars", "runners.py")
    entries = []
    for (filename, line, function), (_, _, _, cumtime, _) in raw.items():
        if filename == "~" or any(part in filename or part in function for part in skip):
            continue
        entries.append((cumtime, f"{_short(filename)}:{line}({function})"))
    for cumtime, where in sorted(entries, reverse=True)[:20]:
        print(f"  {1000 * cumtime / calls:7.2f}  {where}")


def layer_times(raw: dict[Any, Any]) -> Counter[str]:
    """Self time by layer (see `profile`)."""
    layers: Counter[str] = Counter()

    def charge(function: Any, share: float, depth: int) -> None:
        layer = LAYERS.get(_package(function[0]))
        if layer is not None:
            layers[layer] += share
            return
        callers = raw[function][4] if function in raw else {}
        weights = {caller: edge[3] for caller, edge in callers.items() if edge[3] > 0}
        if depth >= 12 or not weights:
            layers[EVENT_LOOP if _is_loop(function) or not weights else "other"] += share
            return
        total = sum(weights.values())
        for caller, weight in weights.items():
            charge(caller, share * weight / total, depth + 1)

    for function, (_, _, tottime, _, _) in raw.items():
        charge(function, tottime, 0)
    return layers


def _is_loop(function: Any) -> bool:
    filename, _, name = function
    return any(part in filename or part in name for part in ("asyncio", "selectors", "epoll"))


def _package(filename: str) -> str:
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    if "benchmarks" in parts:
        return "benchmarks"
    if "aidsafe" in parts:
        return "aidsafe"
    return "stdlib"


def _short(filename: str) -> str:
    parts = Path(filename).parts
    for anchor in ("site-packages", "aidsafe"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + (anchor == "site-packages") :])
    return Path(filename).name


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


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


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
    parser.add_argument(
        "--zero-concurrency",
        default="64",
        help="rows in flight of the zero-latency CPU runs and their floor (e.g. 16,64)",
    )
    parser.add_argument(
        "--zero-rows-per-slot",
        type=int,
        default=4,
        help="zero-latency rows = in flight x this, at least 200",
    )
    parser.add_argument("--profile", type=Path, help="also a cProfile run; its stats go here")
    parser.add_argument("--memory", action="store_true", help="also the 10,000-row memory run")
    parser.add_argument("--checkpoint", default="step", choices=("step", "row"))
    options = parser.parse_args()
    zero_levels = [int(x) for x in options.zero_concurrency.split(",")]
    headline: dict[str, float] = {}
    efficiency: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        stub, url = start_stub(0.0)
        try:
            bodies = capture_bodies(workdir)
            run(url, 20, 16, workdir, "warmup")
            floor_openai(url, bodies, 64, 16, typed=False)  # the floors' code paths warm too
            floor_httpx(url, bodies, 64, 16)
            for level in zero_levels:
                rows = max(level * options.zero_rows_per_slot, 200)
                headline = zero_latency(url, workdir, level, rows, bodies)
            if options.profile is not None:
                rows = max(zero_levels[-1] * options.zero_rows_per_slot, 200)
                profile(url, workdir, zero_levels[-1], rows, options.profile, bodies)
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
            print(
                f"{'in flight':>10} {'rows':>6} {'rows/s':>8} {'ideal':>8} {'efficiency':>10} "
                f"{'floor':>6} {'ratio':>6}"
            )
            for level in (int(x) for x in options.levels.split(",")):
                rows = max(level * options.rows_per_slot, options.min_rows)
                result = run(url, rows, level, workdir, f"c{level}", options.checkpoint)
                calls_per_row = round(result["calls"] / result["rows"])
                ideal = level / (calls_per_row * options.latency)
                achieved = result["rows"] / result["wall_s"]
                efficiency[level] = achieved / ideal
                floor = rows / floor_rows(url, bodies, rows, calls_per_row, level) / ideal
                print(
                    f"{level:>10} {result['rows']:>6.0f} {achieved:>8.2f} {ideal:>8.2f} "
                    f"{achieved / ideal:>10.2f} {floor:>6.2f} {achieved / ideal / floor:>6.2f}"
                )
            print(
                "  floor: the same rows of sequential calls from a bare aiohttp loop on the same "
                "stub; ratio = ours / floor"
            )
        finally:
            stub.terminate()
    level = zero_levels[-1]
    print(f"\ntargets (issue), zero-latency figures at {level} in flight:")
    for mode in ("step", "row"):
        cpu = headline[mode]
        print(
            f"  CPU per call <= {TARGET_CPU_MS} ms, checkpoint={mode}: {cpu:.2f} ms "
            f"({cpu / headline['openai']:.2f}x the floor): {verdict(cpu <= TARGET_CPU_MS)}"
        )
    for mode in ("step", "row"):
        size = headline[f"bytes_{mode}"]
        print(
            f"  bytes written per call <= {TARGET_BYTES / 1024:.0f} KB, checkpoint={mode}: "
            f"{size / 1024:.1f} KB: {verdict(size <= TARGET_BYTES)}"
        )
    if 64 in efficiency:
        print(
            f"  efficiency >= {TARGET_EFFICIENCY} at 64 in flight, checkpoint="
            f"{options.checkpoint}: {efficiency[64]:.2f}: "
            f"{verdict(efficiency[64] >= TARGET_EFFICIENCY)}"
        )


if __name__ == "__main__":
    main()
