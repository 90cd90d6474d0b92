"""Viewer benchmark: `aidsafe view` over a synthetic AIDSAFE run of N rows (default 100,000),
with traces shaped like a real model's (4-8 thoughts of 10-30 words, 1-3 deliberation rounds,
removals, 5-9 calls), 5% failed rows and grades for half the rows.

Prints, measured in this one run: the time to write the run and to build the page, the page's
size and size per row, and, in headless Chromium, the time from navigation to the first screen
of rows (as measured by the page itself), to a search over every row, and to a row's page.

    python -m benchmarks.viewer [--rows 100000] [--out DIR] [--no-browser]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from aidsafe.agents.grader import METRICS
from aidsafe.schemas import REMOVAL_REASONS
from aidsafe.tasks.view import build_view

POLICIES = [
    "hate_harassment_violence",
    "fraud_deception",
    "physical_harm",
    "illegal_activities",
    "respect_helpfulness",
]
ROLES = ["decomposer", "drafter", "deliberator_1", "deliberator_2", "refiner"]


def _vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    return [
        "".join(rng.choices(letters, weights, k=rng.choice([2, 3, 4, 5, 5, 6, 7, 8, 9])))
        for _ in range(size)
    ]


def _text(rng: random.Random, words: list[str], low: int, high: int) -> str:
    # Zipf-like word choice, so the text compresses about as well as prose does
    picked = [words[min(len(words) - 1, int(rng.paretovariate(1.1)) - 1)] for _ in range(3)]
    picked += rng.choices(words, k=rng.randint(low, high) - 3)
    rng.shuffle(picked)
    return " ".join(picked).capitalize() + "."


def _thought(rng: random.Random, words: list[str], author: str, turn: int) -> dict[str, Any]:
    cited = rng.sample(POLICIES, k=rng.choice([0, 1, 1, 2]))
    return {"text": _text(rng, words, 10, 30), "policies": cited, "author": author, "turn": turn}


def _call(rng: random.Random, role: str, stage: str, attempt: int = 0) -> dict[str, Any]:
    return {
        "role": role,
        "stage": stage,
        "attempt": attempt,
        "model": "Qwen2.5-7B-Instruct",
        "input_tokens": rng.randint(900, 2600),
        "output_tokens": rng.randint(40, 400),
        "latency_s": round(rng.lognormvariate(0.5, 0.6), 4),
        "ok": True,
    }


def _trace(rng: random.Random, words: list[str], row_id: str, prompt: str) -> dict[str, Any]:
    thoughts = [_thought(rng, words, "drafter", 0) for _ in range(rng.randint(3, 5))]
    response = _text(rng, words, 40, 120)
    initial = response
    turns = []
    calls = [_call(rng, "decomposer", "decompose_intents"), _call(rng, "drafter", "draft")]
    rounds = rng.choice([1, 1, 2, 3])
    for turn in range(1, 2 * rounds + 1):
        agent = f"deliberator_{(turn - 1) % 2 + 1}"
        last = turn == 2 * rounds
        added = (
            [] if last else [_thought(rng, words, agent, turn) for _ in range(rng.randint(0, 2))]
        )
        new_response = None if last or rng.random() < 0.5 else _text(rng, words, 40, 120)
        thoughts += added
        response = new_response or response
        turns.append(
            {
                "turn": turn,
                "round": (turn + 1) // 2,
                "agent": agent,
                "action": "agree" if last else "revise",
                "thoughts": added,
                "response": new_response,
            }
        )
        calls.append(_call(rng, agent, "deliberate", attempt=int(rng.random() < 0.05)))
    removed_numbers = rng.sample(range(1, len(thoughts) + 1), k=rng.choice([0, 1, 1, 2, 3]))
    removed = [
        {
            "thought": n,
            "text": thoughts[n - 1]["text"],
            "reason": rng.choice(REMOVAL_REASONS),
            "explanation": _text(rng, words, 6, 14),
        }
        for n in sorted(removed_numbers)
    ]
    calls.append(_call(rng, "refiner", "refine"))
    return {
        "id": row_id,
        "prompt": prompt,
        "recipe": "aidsafe",
        "intents": {
            "explicit": [_text(rng, words, 4, 10)],
            "implicit": [_text(rng, words, 4, 10) for _ in range(rng.randint(0, 2))],
        },
        "initial_cot": [t for t in thoughts if t["turn"] == 0],
        "initial_response": initial,
        "deliberation": {"turns": turns, "agreed": rng.random() < 0.9, "rounds": rounds},
        "thoughts": thoughts,
        "removed": removed,
        "final_cot": [t for n, t in enumerate(thoughts, 1) if n not in removed_numbers],
        "response": response,
        "notes": [],
        "policy_set": {"name": "aidsafe-default", "version": "1.0", "sha256": "016c" + "0" * 60},
        "models": {role: {"backend": "openai", "model": "Qwen2.5-7B-Instruct"} for role in ROLES},
        "calls": calls,
        "tokens": {
            "input": sum(c["input_tokens"] for c in calls),
            "output": sum(c["output_tokens"] for c in calls),
        },
        "latency_s": round(sum(c["latency_s"] for c in calls), 4),
        "aidsafe_version": "0.1.0",
    }


def synthetic_run(root: Path, rows: int, seed: int = 0) -> Path:
    """Write a finished AIDSAFE run directory of `rows` rows (traces, failures, grades)."""
    rng = random.Random(seed)
    words = _vocabulary(rng)
    root.mkdir(parents=True, exist_ok=True)
    manifest = {
        "recipe": "aidsafe",
        "policy_set": {"name": "aidsafe-default", "version": "1.0", "sha256": "016c" + "0" * 60},
        "config": {"models": {role: {"model": "Qwen2.5-7B-Instruct"} for role in ROLES}},
        "runs": [],
        "aidsafe_version": "0.1.0",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    with (
        (root / "traces.jsonl").open("w") as traces,
        (root / "failures.jsonl").open("w") as failures,
        (root / "grades.jsonl").open("w") as grades,
    ):
        for n in range(rows):
            row_id = f"row-{n:06d}"
            prompt = _text(rng, words, 8, 40)
            if rng.random() < 0.05:
                failure = {
                    "id": row_id,
                    "index": n,
                    "prompt": prompt,
                    "stage": rng.choice(["draft", "deliberate", "refine"]),
                    "reason": rng.choice(["malformed_output", "endpoint_error"]),
                    "detail": _text(rng, words, 5, 15),
                    "raw_output": _text(rng, words, 5, 30),
                    "calls": [_call(rng, "drafter", "draft")],
                    "failed_at": "2026-11-23T00:00:00+00:00",
                }
                failures.write(json.dumps(failure, ensure_ascii=False) + "\n")
                continue
            traces.write(json.dumps(_trace(rng, words, row_id, prompt), ensure_ascii=False) + "\n")
            if n % 2 == 0:
                scores = {
                    m: {"score": rng.randint(1, 5), "rationale": _text(rng, words, 8, 20)}
                    for m in METRICS
                }
                grade = {
                    "id": row_id,
                    "scores": scores,
                    "unscored": {},
                    "calls": [_call(rng, "grader", f"grade:{m}") for m in METRICS],
                    "graded_at": "2026-11-23T00:00:00+00:00",
                }
                grades.write(json.dumps(grade, ensure_ascii=False) + "\n")
    return root


def browse(page: Path) -> dict[str, float]:
    """Milliseconds to the first screen of rows, to a search over every row and to a row's
    page, as the page measures them, in headless Chromium."""
    from tests.browser import Browser

    with Browser() as browser:
        started = time.perf_counter()
        browser.open(page.resolve().as_uri())
        first = float(browser.wait("document.body.dataset.firstScreenMs", timeout=600))
        wall = (time.perf_counter() - started) * 1000
        browser.evaluate("location.hash = 'q=' + encodeURIComponent('zzzzqqq')")
        search = float(browser.wait("document.body.dataset.searchMs", timeout=600))
        browser.evaluate("location.hash = 'row=row-000002'")
        row = float(browser.wait("document.body.dataset.rowMs", timeout=600))
        if browser.errors():
            raise SystemExit(f"the page reported errors: {browser.errors()}")
    return {
        "first_screen_ms": first,
        "navigation_to_first_screen_ms": wall,
        "search_ms": search,
        "row_ms": row,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None, help="keep the run and page here")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch) / "run"
        started = time.perf_counter()
        synthetic_run(root, args.rows)
        wrote = time.perf_counter() - started
        ledger_mb = sum(p.stat().st_size for p in root.glob("*.jsonl")) / 1e6
        started = time.perf_counter()
        result = build_view(root)
        built = time.perf_counter() - started
        print(
            f"rows: {result.rows:,}; run written in {wrote:.1f} s ({ledger_mb:.0f} MB of ledgers)"
        )
        print(
            f"page built in {built:.1f} s: {result.bytes / 1e6:.1f} MB, "
            f"{result.bytes_per_row:,.0f} bytes per row"
        )
        print(f"  ledgers ÷ page size: {ledger_mb * 1e6 / result.bytes:.1f}")
        if not args.no_browser:
            times = browse(result.path)
            for name, value in times.items():
                print(f"{name}: {value:,.0f}")


if __name__ == "__main__":
    main()
