"""`aidsafe filter`: keep the SFT rows whose grades reach a minimum (STAR-1-style quality
filtering)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aidsafe.agents.grader import METRICS, RUBRICS
from aidsafe.errors import UserError
from aidsafe.jsonl import read_jsonl, write_atomic
from aidsafe.run.directory import GRADES, SFT_FILTERED, RunDirectory
from aidsafe.tasks.grading import SFT


def filter_run(
    run: RunDirectory, minimum: float, metrics: list[str], out: Path | None = None
) -> tuple[Path, int, dict[str, int]]:
    """Write the SFT rows whose grades on `metrics` all reach `minimum` (STAR-1-style quality
    filtering). Returns where, how many rows were kept, and the drop count per reason."""
    unknown = [m for m in metrics if m not in RUBRICS]
    if unknown:
        raise UserError(f"--metric: unknown {unknown} (metrics: {', '.join(METRICS)})")
    if not run.path(GRADES).exists():
        raise UserError(f"{run.root}: not graded yet; run `aidsafe grade {run.root}` first")
    grades = {row["id"]: row["scores"] for row in read_jsonl(run.path(GRADES))}
    kept_rows: list[str] = []
    dropped: dict[str, int] = {}
    for row in read_jsonl(run.path(SFT)):
        reason = _drop_reason(grades.get(row["id"]), minimum, metrics)
        if reason is None:
            kept_rows.append(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    target = out or run.path(SFT_FILTERED)
    write_atomic(target, "".join(kept_rows))
    return target, len(kept_rows), dict(sorted(dropped.items()))


def _drop_reason(scores: dict[str, Any] | None, minimum: float, metrics: list[str]) -> str | None:
    if scores is None:
        return "ungraded"
    for metric in metrics:
        grade = scores.get(metric)
        if grade is None:
            return f"unscored:{metric}"
        if grade["score"] < minimum:
            return f"below_min:{metric}"
    return None
