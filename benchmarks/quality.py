"""Quality benchmark: the paper's comparison, on any configured model. The same prompts and the
same generator model run through the zero-shot baseline and the AIDSAFE recipe; one grader
scores both; `aidsafe compare` prints the table (and writes an HTML report).

    python benchmarks/quality.py                       # embedded model, examples/prompts.jsonl
    python benchmarks/quality.py --config my.yaml --prompts data.jsonl --limit 200 --out runs/q

Everything it runs is the CLI a user runs; re-running continues where it stopped."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def aidsafe(*args: str) -> None:
    command = [sys.executable, "-m", "aidsafe", *args]
    print("$ aidsafe " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default=str(ROOT / "examples" / "prompts.jsonl"))
    parser.add_argument("--config", help="config file for every role (default: embedded model)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    options = parser.parse_args()
    extra = ["--config", options.config] if options.config else []
    limit = ["--limit", str(options.limit)] if options.limit else []
    out = Path(options.out)
    started = time.perf_counter()
    for recipe in ("baseline", "aidsafe"):
        aidsafe(
            "generate",
            options.prompts,
            "--out",
            str(out / recipe),
            "--recipe",
            recipe,
            "--quiet",
            *limit,
            *extra,
        )
        aidsafe("grade", str(out / recipe), *extra)
    aidsafe(
        "compare",
        str(out / "baseline"),
        str(out / "aidsafe"),
        "--html",
        str(out / "report.html"),
        "--json",
        str(out / "comparison.json"),
    )
    print(f"total wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
