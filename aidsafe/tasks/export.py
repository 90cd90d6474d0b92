"""`aidsafe export`: a run's SFT rows or DPO pairs (TRL conversational rows) as a Hugging Face
`datasets` dataset: Parquet, JSONL or a save_to_disk folder."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from aidsafe.errors import UserError
from aidsafe.run.directory import RunDirectory

ExportTarget = Literal["parquet", "hf", "jsonl"]
# The ledgers people train on: TRL conversational SFT rows and DPO preference rows.
SOURCES = {"sft": "sft.jsonl", "dpo": "dpo.jsonl"}


def export_run(
    run: Path, to: ExportTarget, out: Path | None = None, kind: Literal["sft", "dpo"] = "sft"
) -> tuple[Path, int]:
    """Write a run's SFT rows or DPO pairs as a dataset. Returns where, and how many rows."""
    import datasets

    rundir = RunDirectory(run)
    source = rundir.path(SOURCES[kind])
    if not source.exists() and kind == "dpo":
        raise UserError(f"{run}: no DPO pairs yet (no dpo.jsonl); make them with `aidsafe dpo`")
    if not source.exists():
        raise UserError(f"{run}: no {source.name} here; is this a finished aidsafe run directory?")
    if source.stat().st_size == 0:
        raise UserError(f"{source}: no finished rows to export yet")
    dataset = datasets.Dataset.from_json(str(source))
    if to == "parquet":
        target = out or rundir.path(f"{kind}.parquet")
        dataset.to_parquet(str(target))
    elif to == "jsonl":
        target = out or rundir.path(f"export-{kind}.jsonl")
        dataset.to_json(str(target), lines=True, force_ascii=False)
    else:
        target = out or rundir.path(f"{kind}_dataset")
        dataset.save_to_disk(str(target))
    return Path(target), len(dataset)
