"""`generate --preview N`: what a seeded sample of N rows cost (tokens, latency, USD where the
models have prices), and what the whole input would, as a mean and a 90% bootstrap interval.

The preview's rows are rows of the run itself (same directory, same fingerprint), so running the
command again without `--preview` continues from them; this module only reads the ledgers and
writes `preview/preview.json` beside them."""

from __future__ import annotations

import json
from typing import Any

from aidsafe.jsonl import read_jsonl, write_atomic
from aidsafe.recipes.base import Recipe
from aidsafe.run.directory import PREVIEW, RunDirectory
from aidsafe.run.pipeline import PREVIEW_SEED, Preview
from aidsafe.stats import bootstrap_ci, mean

LEVEL = 0.9  # the projection's interval
MEASURES = ("tokens", "cost_usd", "latency_s")


def row_figures(row: dict[str, Any], ok: bool) -> dict[str, Any]:
    """One finished or failed row's spending, from its calls."""
    calls = row.get("calls") or []
    figures: dict[str, Any] = {
        "id": row["id"],
        "ok": ok,
        "calls": len(calls),
        "tokens": sum(c.get("input_tokens", 0) + c.get("output_tokens", 0) for c in calls),
        "latency_s": round(sum(c.get("latency_s", 0.0) for c in calls), 4),
    }
    if any(c.get("cost_usd") is not None for c in calls):
        figures["cost_usd"] = round(sum(c.get("cost_usd") or 0.0 for c in calls), 8)
    if not ok:
        figures["reason"] = row.get("reason")
    return figures


def preview_report(
    run: RunDirectory, recipe: Recipe, preview: Preview
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The preview's figures (also written to preview/preview.json) and its rows' records (done
    records and failure rows, in input order) for showing."""
    wanted = {row_id: n for n, row_id in enumerate(preview.ids)}
    records: list[tuple[int, dict[str, Any], bool]] = []
    for name, ok in ((recipe.ledger.done, True), (recipe.ledger.failures, False)):
        for row in read_jsonl(run.path(name)):
            if row.get("id") in wanted:
                records.append((wanted[row["id"]], row, ok))
    records.sort(key=lambda entry: entry[0])
    rows = [row_figures(row, ok) for _, row, ok in records]
    projection: dict[str, Any] = {}
    for measure in MEASURES:
        values = [float(row[measure]) for row in rows if measure in row]
        if not values or len(values) < len(rows):
            continue
        average = mean(values)
        low, high = bootstrap_ci(values, level=LEVEL) or (0.0, 0.0)
        assert average is not None
        projection[measure] = {
            "per_row": round(average, 8),
            "per_row_interval": [round(low, 8), round(high, 8)],
            "input": round(average * preview.input_rows, 6),
            "input_interval": [
                round(low * preview.input_rows, 6),
                round(high * preview.input_rows, 6),
            ],
        }
    report = {
        "sample": {"rows": len(preview.ids), "of": preview.input_rows, "seed": PREVIEW_SEED},
        "rows": rows,
        "level": LEVEL,
        "projection": projection,
    }
    path = run.path(PREVIEW) / "preview.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report, indent=2) + "\n")
    return report, [row for _, row, _ in records]
