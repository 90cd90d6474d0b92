"""Output rows in the formats people train on (TRL conversational SFT), and export of a run
directory as a Hugging Face `datasets` dataset (Parquet or save_to_disk)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from aidsafe.errors import UserError
from aidsafe.prompts import format_thoughts
from aidsafe.rundir import DPO, SFT, RunDirectory

ExportTarget = Literal["parquet", "hf", "jsonl"]


def assistant_content(cot: str, response: str) -> str:
    """The assistant turn: the chain of thought in think tags, then the response."""
    return f"<think>\n{cot.strip()}\n</think>\n\n{response.strip()}"


def model_name(model: dict[str, Any]) -> str:
    name = model.get("model") or model["backend"]
    return Path(name).name if model["backend"] == "local" else name


def sft_row(trace: dict[str, Any]) -> dict[str, Any]:
    """TRL conversational SFT row: `messages`, plus `id` and a separate `metadata` column."""
    reasons = Counter(removal["reason"] for removal in trace["removed"])
    return {
        "id": trace["id"],
        "messages": [
            {"role": "user", "content": trace["prompt"]},
            {
                "role": "assistant",
                "content": assistant_content(
                    format_thoughts(trace["final_cot"]), trace["response"]
                ),
            },
        ],
        "metadata": {
            "recipe": trace["recipe"],
            "policy_set": trace["policy_set"]["name"],
            "policy_sha256": trace["policy_set"]["sha256"],
            "models": {role: model_name(m) for role, m in trace["models"].items()},
            "deliberation_turns": len(trace["deliberation"]["turns"]),
            "agreed": trace["deliberation"]["agreed"],
            "thoughts_total": len(trace["thoughts"]),
            "thoughts_removed": len(trace["removed"]),
            "removed_by_reason": {
                reason: reasons.get(reason, 0)
                for reason in ("repetitive", "redundant", "deceptive", "policy_inconsistent")
            },
            "input_tokens": trace["tokens"]["input"],
            "output_tokens": trace["tokens"]["output"],
            "latency_s": trace["latency_s"],
        },
    }


def sft_rows(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The SFT rows of one trace: one per AIDSAFE or baseline prompt; for UnsafeChain, one per
    kept answer."""
    if trace["recipe"] == "unsafechain":
        from aidsafe.unsafechain import unsafechain_sft_rows

        return unsafechain_sft_rows(trace)
    return [sft_row(trace)]


def export_run(
    run: Path, to: ExportTarget, out: Path | None = None, kind: Literal["sft", "dpo"] = "sft"
) -> tuple[Path, int]:
    """Write a run's SFT rows or DPO pairs as a dataset. Returns where, and how many rows."""
    import datasets

    rundir = RunDirectory(run)
    source = rundir.path(SFT if kind == "sft" else DPO)
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
