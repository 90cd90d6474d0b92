"""The row vocabulary shared by every layer: why a row failed (one enumerated type), the
assistant turn of SFT and DPO rows, token totals, and one builder per shared record part."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from aidsafe import __version__
from aidsafe.jsonl import now


class Reason(StrEnum):
    """Why a row, pair, judgment or grade has no result. Written to the ledgers as its value."""

    INVALID_PROMPT = "invalid_prompt"  # the input row has no usable prompt text
    DUPLICATE_ID = "duplicate_id"  # an earlier input row has the same id
    MALFORMED_OUTPUT = "malformed_output"  # the model's answer stayed invalid after repairs
    ENDPOINT_ERROR = "endpoint_error"  # the endpoint failed (retries exhausted or fatal)
    TRUNCATED = "truncated"  # the answer was cut at the role's max_tokens before it was valid
    TEACHER_REFUSED = "teacher_refused"  # the model refused, or its provider filtered, the task
    UNJUDGED = "unjudged"  # no sample could be judged
    INTERNAL_ERROR = "internal_error"  # a bug or an unexpected library error in this row
    WORKER_LOST = "worker_lost"  # the Ray worker running the row died every time
    NO_VIOLATING_BELIEF = "no_violating_belief"  # belief augmentation found no rejected side
    CHOSEN_UNSAFE = "chosen_unsafe"  # the judge found the chosen side unsafe
    IDENTICAL_SIDES = "identical_sides"  # chosen and rejected are the same text


def assistant_content(cot: str, response: str) -> str:
    """The assistant turn: the chain of thought in think tags, then the response."""
    return f"<think>\n{cot.strip()}\n</think>\n\n{response.strip()}"


def sft_row(
    row_id: str, prompt: str, cot: str, response: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """A TRL conversational SFT row: `messages` (the user's prompt, then the CoT in think tags
    and the response), with `id` and provenance in a separate `metadata` column."""
    return {
        "id": row_id,
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": assistant_content(cot, response)},
        ],
        "metadata": metadata,
    }


def dpo_row(
    row_id: str, prompt: str, chosen: str, rejected: str, metadata: dict[str, Any]
) -> dict[str, Any]:
    """A TRL conversational preference row: `prompt`, `chosen` and `rejected` (assistant turns
    already in their final text), with `id` and a separate `metadata` column."""
    return {
        "id": row_id,
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "metadata": metadata,
    }


def model_name(model: Mapping[str, Any]) -> str:
    """A model's short name for row metadata (a local GGUF by its file name)."""
    name = model.get("model") or model["backend"]
    return Path(name).name if model["backend"] == "local" else str(name)


def tokens(calls: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Input and output tokens of a list of call records."""
    totals = {"input": 0, "output": 0}
    for call in calls:
        totals["input"] += call.get("input_tokens", 0)
        totals["output"] += call.get("output_tokens", 0)
    return totals


def total_tokens(calls: Iterable[Mapping[str, Any]]) -> int:
    return sum(tokens(calls).values())


def cost(calls: Iterable[Mapping[str, Any]]) -> float | None:
    """What a list of call records cost (None when no call had a price)."""
    prices = [call["cost_usd"] for call in calls if call.get("cost_usd") is not None]
    return round(sum(prices), 8) if prices else None


def provenance(
    policy_set: Mapping[str, Any], models: Mapping[str, Any], calls: list[dict[str, Any]]
) -> dict[str, Any]:
    """The block every trace ends with: the policy set, the model of each role, every call,
    tokens and latency, and the aidsafe version."""
    return {
        "policy_set": dict(policy_set),
        "models": dict(models),
        "calls": calls,
        "tokens": tokens(calls),
        **({"cost_usd": spent} if (spent := cost(calls)) is not None else {}),
        "latency_s": round(sum(c.get("latency_s", 0.0) for c in calls), 4),
        "aidsafe_version": __version__,
    }


def failure_record(
    row_id: str,
    index: int | None,
    prompt: str | None,
    stage: str,
    reason: Reason,
    detail: str | None,
    raw: str | None = None,
    calls: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A line of a failures ledger."""
    return {
        "id": row_id,
        "index": index,
        "prompt": prompt,
        "stage": stage,
        "reason": Reason(reason).value,
        "detail": detail or "",
        "raw_output": raw,
        "calls": calls or [],
        **extra,
        "failed_at": now(),
    }
