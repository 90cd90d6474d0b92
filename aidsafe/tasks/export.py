"""`aidsafe export`: a run's SFT rows or DPO pairs (TRL conversational rows) as a Hugging Face
`datasets` dataset: Parquet, JSONL or a save_to_disk folder. Rows that would carry a local
absolute path or a configured secret off this machine are refused before anything is written."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from aidsafe.config import RunConfig
from aidsafe.errors import UserError
from aidsafe.jsonl import read_jsonl
from aidsafe.portable import configured_secrets, leaks
from aidsafe.run.directory import RunDirectory
from aidsafe.tasks.split import held_out

ExportTarget = Literal["parquet", "hf", "jsonl"]
# The ledgers people train on: TRL conversational SFT rows and DPO preference rows.
SOURCES = {"sft": "sft.jsonl", "dpo": "dpo.jsonl"}
# Their conversation columns: the user's and the model's text, where a line may well start with
# `/`; checked for secrets only. Every other field is provenance, checked for paths as well.
CONVERSATION = ("messages", "prompt", "chosen", "rejected")


def secrets_of(config: RunConfig) -> dict[str, str]:
    """The secrets an export must not carry: the API keys of every model the config names (by
    its `api_key_env`) and of every credential-named environment variable, by variable name."""
    roles = {"default", *config.models}
    return configured_secrets(config.model_for(role).api_key_env for role in roles)


def check_shareable(path: Path, secrets: Mapping[str, str]) -> None:
    """Refuse (UserError, naming the line, the row and the field) a ledger in which a row holds
    a local absolute path outside its conversation, or a secret's value anywhere."""
    for number, row in enumerate(read_jsonl(path), 1):
        for problem in leaks(row, secrets, CONVERSATION):
            raise UserError(
                f"{path}: line {number} (id {row.get('id')!r}): {problem}; it must not leave "
                "this machine, so nothing was exported"
            )


def training_rows(run: RunDirectory, source: Path) -> Any:
    """A ledger as a `datasets.Dataset`, without the prompts `aidsafe split` held out for
    evaluation (a model must never be trained on a prompt it is evaluated on)."""
    import datasets

    dataset = datasets.Dataset.from_json(str(source))
    held = held_out(run)
    if held:
        dataset = dataset.filter(lambda row: row["id"] not in held)
    return dataset


def export_run(
    run: Path,
    to: ExportTarget,
    out: Path | None = None,
    kind: Literal["sft", "dpo"] = "sft",
    secrets: Mapping[str, str] | None = None,
) -> tuple[Path, int]:
    """Write a run's SFT rows or DPO pairs as a dataset. Returns where, and how many rows.
    `secrets` (variable name -> value; default: those of the default config) are refused."""

    rundir = RunDirectory(run)
    source = rundir.path(SOURCES[kind])
    if not source.exists() and kind == "dpo":
        raise UserError(f"{run}: no DPO pairs yet (no dpo.jsonl); make them with `aidsafe dpo`")
    if not source.exists():
        raise UserError(f"{run}: no {source.name} here; is this a finished aidsafe run directory?")
    if source.stat().st_size == 0:
        raise UserError(f"{source}: no finished rows to export yet")
    check_shareable(source, secrets_of(RunConfig()) if secrets is None else secrets)
    dataset = training_rows(rundir, source)
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
