"""`aidsafe split`: hold out a share of a run's prompts for evaluation, by id, stratified by the
prompts' source and first category (or policy tag) when their input metadata has them. The
held-out ids go to `split.json`; `aidsafe export` then leaves them out of every training file,
so a model is never trained on a prompt it will be evaluated on."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from aidsafe.errors import UserError
from aidsafe.jsonl import now, read_jsonl, write_atomic
from aidsafe.run.directory import SPLIT, RunDirectory

SOURCE = "sft.jsonl"  # the rows a split draws from: every finished prompt of the run


def stratum(row: dict[str, Any]) -> str:
    """A row's stratum: `source / category` from its input metadata (`-` where missing)."""
    meta = (row.get("metadata") or {}).get("input") or {}
    labels = meta.get("categories") or meta.get("policies") or []
    return f"{meta.get('source', '-')} / {labels[0] if labels else '-'}"


def split_run(run_dir: Path, fraction: float, seed: int) -> dict[str, Any]:
    """Choose round(fraction x stratum size) ids per stratum (at least one where the stratum
    has two or more rows), by the sha256 of `seed:id`, so the same run, fraction and seed always
    hold out the same prompts; write and return split.json."""
    if not 0 < fraction < 1:
        raise UserError(f"--eval-fraction: expected a number between 0 and 1, got {fraction}")
    run = RunDirectory(run_dir)
    if run.manifest() is None:
        raise UserError(f"{run_dir}: not a run directory (no manifest.json)")
    strata: dict[str, list[str]] = defaultdict(list)
    for row in read_jsonl(run.path(SOURCE)):
        strata[stratum(row)].append(row["id"])
    if not strata:
        raise UserError(f"{run.path(SOURCE)}: no finished rows to split")
    held: list[str] = []
    sizes = {}
    for name, ids in sorted(strata.items()):
        wanted = round(fraction * len(ids))
        if wanted == 0 and len(ids) >= 2:
            wanted = 1
        order = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
        held += order[:wanted]
        sizes[name] = {"rows": len(ids), "held_out": wanted}
    report = {
        "created": now(),
        "eval_fraction": fraction,
        "seed": seed,
        "rows": sum(len(ids) for ids in strata.values()),
        "held_out": len(held),
        "strata": sizes,
        "eval_ids": sorted(held),
    }
    write_atomic(run.path(SPLIT), json.dumps(report, indent=2) + "\n")
    return report


def held_out(run: RunDirectory) -> set[str]:
    """The ids `aidsafe split` held out of training in this run (none without a split)."""
    path = run.path(SPLIT)
    if not path.exists():
        return set()
    try:
        return set(json.loads(path.read_text(encoding="utf-8"))["eval_ids"])
    except (ValueError, KeyError) as error:
        raise UserError(
            f"{path}: not a split aidsafe wrote ({error}); run `aidsafe split` again"
        ) from error
