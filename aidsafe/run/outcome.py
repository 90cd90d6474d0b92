"""What one item comes to: its graph thread run (or continued from its checkpoint) to the end,
then the recipe's done record or rejection, or a typed failure. The same code runs in this
process and on a Ray worker; the driver records the Outcome."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from aidsafe.agents.context import RunContext
from aidsafe.errors import StageFailed
from aidsafe.inputs import PromptRow
from aidsafe.recipes.base import Done, Recipe
from aidsafe.records import Reason, failure_record, total_tokens


@dataclass
class Outcome:
    """What one item came to, computed where its graph ran and recorded by the driver (the run
    directory is written by one process only)."""

    ok: bool
    tokens: int  # spent on this item by the process that ran it
    record: dict[str, Any]  # done record, or failure record
    derived: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = True  # False: a failure whose checkpoint --retry-failed resumes


@contextlib.asynccontextmanager
async def open_checkpoints(path: str) -> AsyncIterator[AsyncSqliteSaver]:
    """The run's SQLite checkpointer. WAL with synchronous=NORMAL: a commit survives the process
    being killed (what resume promises) without an fsync per checkpoint, which cost more CPU
    and wall time than everything else a row does (see benchmarks/orchestration.py)."""
    async with AsyncSqliteSaver.from_conn_string(path) as saver:
        await saver.setup()  # journal_mode=WAL
        await saver.conn.execute("PRAGMA synchronous=NORMAL")
        yield saver


def thread_id(recipe: Recipe, digest: str, item: PromptRow) -> str:
    """A thread per item, recipe and configuration: a thread saved under another configuration
    (before --force) is never resumed under this one."""
    return f"{recipe.thread_prefix}{digest[:16]}:{item.id}"


def _internal_error(error: BaseException) -> StageFailed:
    detail = "".join(traceback.format_exception_only(error)).strip()
    last = traceback.extract_tb(error.__traceback__)[-1:]
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return StageFailed("unknown", Reason.INTERNAL_ERROR, detail + where)


async def item_outcome(
    recipe: Recipe,
    graph: Any,
    saver: BaseCheckpointSaver[Any],
    ctx: RunContext,
    item: PromptRow,
    digest: str,
) -> Outcome:
    """Run (or continue) one item through the recipe's graph."""
    if item.prompt is None:
        failure = failure_record(
            item.id, item.index, item.prompt, "input", Reason.INVALID_PROMPT, item.problem
        )
        return Outcome(False, 0, recipe.failed(item, failure))
    thread = {
        "configurable": {"thread_id": thread_id(recipe, digest, item)},
        "recursion_limit": recipe.recursion_limit(ctx.config),
    }
    snapshot = await graph.aget_state(thread)
    calls_before = len(snapshot.values.get("calls", [])) if snapshot.values else 0
    calls: list[dict[str, Any]] = []
    try:
        if snapshot.values and not snapshot.next:
            state = dict(snapshot.values)  # finished before a crash, not yet in the ledger
        else:
            durability = "sync" if ctx.config.checkpoint == "step" else "exit"
            state = dict(
                await graph.ainvoke(
                    None if snapshot.next else recipe.start(item),
                    thread,
                    context=ctx,
                    durability=durability,
                )
            )
        calls = state.get("calls", [])
        result = recipe.finish(state, ctx)
    except StageFailed as failure:
        saved = (await graph.aget_state(thread)).values or {}
        calls = [*saved.get("calls", []), *failure.calls]
        record = failure_record(
            item.id,
            item.index,
            item.prompt,
            failure.stage,
            failure.reason,
            failure.detail,
            failure.raw,
            calls,
        )
        tokens = total_tokens(calls[calls_before:])
        return Outcome(False, tokens, recipe.failed(item, record), finished=False)
    except Exception as error:  # a bug or an unexpected library error: keep the run going
        bug = _internal_error(error)
        record = failure_record(
            item.id, item.index, item.prompt, bug.stage, bug.reason, bug.detail, None, calls
        )
        return Outcome(False, total_tokens(calls[calls_before:]), recipe.failed(item, record))
    tokens = total_tokens(calls[calls_before:])
    if isinstance(result, Done):
        return Outcome(True, tokens, result.record, result.derived)
    return Outcome(False, tokens, result.record)
