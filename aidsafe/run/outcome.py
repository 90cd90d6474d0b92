"""What one item comes to: its graph run to the end (replayed from the response log after a
crash, see aidsafe.models.replay), then the recipe's done record or rejection, or a typed
failure. The same code runs in this process and on a Ray worker; the driver records the
Outcome."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

from aidsafe.agents.context import RunContext
from aidsafe.errors import StageFailed
from aidsafe.inputs import PromptRow
from aidsafe.models.replay import Replay, ResponseLog, current
from aidsafe.recipes.base import Done, Recipe, Rejected
from aidsafe.records import Reason, failure_record


@dataclass
class Outcome:
    """What one item came to, computed where its graph ran and recorded by the driver (the run
    directory is written by one process only)."""

    ok: bool
    tokens: int  # spent on this item by the process that ran it (logged answers are free)
    record: dict[str, Any]  # done record, or failure record
    derived: list[dict[str, Any]] = field(default_factory=list)
    replayed: int = 0  # answers served from the response log
    cost: float = 0.0  # what this item's new answers cost, where the models have prices


def threads_of(recipe: Recipe, digest: str) -> str:
    """What every thread of a recipe's stage under one configuration starts with: answers
    logged under another configuration (before --force) are never served to this one."""
    return f"{recipe.thread_prefix}{digest[:16]}:"


def thread_id(recipe: Recipe, digest: str, item: PromptRow) -> str:
    """An item's thread in the response log."""
    return threads_of(recipe, digest) + item.id


def with_input(record: dict[str, Any], derived: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """The input row's own metadata, kept in every row made from it: in a training row's
    `metadata` column (`metadata.input`: SFT and DPO rows), else as `input_metadata` (traces),
    so a dataset can be split by it."""
    for row in [record, *derived]:
        if isinstance(row.get("metadata"), dict):
            row["metadata"]["input"] = meta
        else:
            row["input_metadata"] = meta


def _failed(recipe: Recipe, item: PromptRow, failure: dict[str, Any]) -> dict[str, Any]:
    if item.metadata is not None:
        failure["input_metadata"] = item.metadata
    return recipe.failed(item, failure)


def _internal_error(error: BaseException) -> StageFailed:
    detail = "".join(traceback.format_exception_only(error)).strip()
    last = traceback.extract_tb(error.__traceback__)[-1:]
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return StageFailed("unknown", Reason.INTERNAL_ERROR, detail + where)


async def item_outcome(
    recipe: Recipe,
    graph: Any,
    ctx: RunContext,
    item: PromptRow,
    digest: str,
    answers: dict[str, dict[str, Any]] | None = None,
    log: ResponseLog | None = None,
) -> Outcome:
    """Run one item through the recipe's graph, serving `answers` (its logged ones) first and
    logging every new answer to `log`."""
    if item.prompt is None:
        invalid = failure_record(
            item.id, item.index, item.prompt, "input", Reason.INVALID_PROMPT, item.problem
        )
        return Outcome(False, 0, _failed(recipe, item, invalid))
    replay = Replay(thread_id(recipe, digest, item), answers or {}, log)
    token = current.set(replay)
    state: dict[str, Any] = {}
    try:
        # the state after each step (what `ainvoke` does too), so a failure keeps every call
        async for values in graph.astream(
            recipe.start(item),
            {"recursion_limit": recipe.recursion_limit(ctx.config)},
            context=ctx,
            stream_mode="values",
        ):
            state = values
        result = recipe.finish(dict(state), ctx)
    except Exception as error:  # a typed failure, or a bug: the row fails, the run goes on
        stopped = error if isinstance(error, StageFailed) else _internal_error(error)
        calls = [*state.get("calls", []), *stopped.calls]
        record = failure_record(
            item.id,
            item.index,
            item.prompt,
            stopped.stage,
            stopped.reason,
            stopped.detail,
            stopped.raw,
            calls,
        )
        result = Rejected(recipe.failed(item, record))
    finally:
        current.reset(token)
    if item.metadata is not None:
        with_input(result.record, result.derived if isinstance(result, Done) else [], item.metadata)
    done = isinstance(result, Done)
    derived = result.derived if isinstance(result, Done) else []
    return Outcome(
        done, replay.live_tokens, result.record, derived, replay.served, replay.live_cost
    )
