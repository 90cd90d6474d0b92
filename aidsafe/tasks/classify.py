"""`aidsafe prepare --classify`: the classifier role tags each prompt of a pool with the
policies it touches. A one-node recipe on the pipeline, so tagging is resumable (a second
`prepare` into the same directory asks only for prompts not tagged yet), concurrent, and a
prompt whose tagging fails is recorded with its reason rather than lost."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypedDict

from langgraph.runtime import Runtime
from rich.console import Console

from aidsafe.agents.classifier import CLASSIFIER, CLASSIFIER_INSTRUCTIONS, classify_prompt
from aidsafe.agents.context import RunContext
from aidsafe.config import RunConfig
from aidsafe.inputs import PromptRow
from aidsafe.jsonl import now, read_jsonl
from aidsafe.recipes.base import Done, Ledger, Recipe, RecipeGraph, one_node_graph
from aidsafe.run.directory import CLASSIFICATIONS, RunDirectory
from aidsafe.run.pipeline import Stage, StageSummary, run_stage


class ClassifyState(TypedDict, total=False):
    id: str
    prompt: str
    record: dict[str, Any]
    calls: list[dict[str, Any]]


async def classify_row(state: ClassifyState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    tags, rationale, calls = await classify_prompt(runtime.context, state["prompt"])
    record = {
        "id": state["id"],
        "policies": tags,
        "rationale": rationale,
        "calls": calls,
        "classified_at": now(),
    }
    return {"record": record, "calls": calls}


class ClassifyPrompts(Recipe):
    """Tagging as a one-node recipe: every prompt gets a line, tagged or failed."""

    name = "classify"
    description = "policy tags of prompts"
    verb = "classifying"
    ledger = Ledger(done=CLASSIFICATIONS, failures=CLASSIFICATIONS)
    section = "classification"
    archive_group = "classify"
    declared_roles = (CLASSIFIER,)
    thread_prefix = "classify:"

    def graph(self) -> RecipeGraph:
        return one_node_graph(ClassifyState, classify_row)

    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done:
        return Done(state["record"])

    def failed(self, item: PromptRow, failure: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": item.id,
            "reason": failure["reason"],
            "policies": None,
            "detail": failure["detail"],
            "calls": failure["calls"],
            "classified_at": failure["failed_at"],
        }

    def fingerprint_data(self, ctx: RunContext) -> dict[str, Any]:
        return super().fingerprint_data(ctx) | {"instructions": CLASSIFIER_INSTRUCTIONS}


def _items(prompts: Iterable[tuple[str, str]]) -> Iterator[PromptRow]:
    for index, (row_id, prompt) in enumerate(prompts):
        yield PromptRow(index, row_id, prompt, has_id=True)


async def classify_prompts(
    prompts: list[tuple[str, str]],
    out: RunDirectory,
    config: RunConfig,
    *,
    console: Console | None = None,
    show_progress: bool = True,
) -> tuple[dict[str, list[str] | None], StageSummary]:
    """Tag (id, prompt) pairs not tagged yet in `out`; every pair's tags (None: its tagging
    failed, with the reason in classifications.jsonl), and the stage's summary."""
    stage = Stage(
        ClassifyPrompts(),
        out,
        config,
        _items(prompts),
        len(prompts),
        {"pool": "prepare"},
        duplicates="skip",
        console=console,
        show_progress=show_progress,
    )
    summary = await run_stage(stage)
    tags: dict[str, list[str] | None] = {}
    for row in read_jsonl(out.path(CLASSIFICATIONS)):
        tags[row["id"]] = row.get("policies")
    return {row_id: tags.get(row_id) for row_id, _ in prompts}, summary
