"""The model roles of `aidsafe prepare`: the classifier tags each prompt with the policies it
touches (`--classify`), the contrast role writes benign look-alikes of policy-touching prompts
(`--contrast K`). Each is a one-node recipe on the pipeline, so it is concurrent, resumable in
the pool's directory (a second `prepare` asks only for prompts not done yet), and a prompt
whose call fails is recorded with its reason rather than lost."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypedDict

from langgraph.runtime import Runtime
from rich.console import Console

from aidsafe.agents.classifier import CLASSIFIER, CLASSIFIER_INSTRUCTIONS, classify_prompt
from aidsafe.agents.context import RunContext
from aidsafe.agents.contrast import CONTRAST, contrast_prompts
from aidsafe.config import RunConfig
from aidsafe.inputs import PromptRow
from aidsafe.jsonl import now, read_jsonl
from aidsafe.recipes.base import Done, Ledger, Recipe, RecipeGraph, one_node_graph
from aidsafe.run.directory import CLASSIFICATIONS, CONTRASTS, RunDirectory
from aidsafe.run.pipeline import Stage, run_stage


class PoolState(TypedDict, total=False):
    id: str
    prompt: str
    count: int
    record: dict[str, Any]
    calls: list[dict[str, Any]]


async def classify_row(state: PoolState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    tags, rationale, calls = await classify_prompt(runtime.context, state["prompt"])
    record = {"id": state["id"], "policies": tags, "rationale": rationale, "calls": calls}
    return {"record": record | {"at": now()}, "calls": calls}


async def contrast_row(state: PoolState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    prompts, calls = await contrast_prompts(runtime.context, state["prompt"], state["count"])
    record = {"id": state["id"], "prompts": prompts, "calls": calls}
    return {"record": record | {"at": now()}, "calls": calls}


class PoolTask(Recipe):
    """One call of one role per prompt; every prompt gets a line in the ledger, its answer
    (`answer` key) or None with the failure's reason."""

    answer: str  # the record's key for what the role answered

    def start(self, item: PromptRow) -> dict[str, Any]:
        return {"id": item.id, "prompt": item.prompt, **item.fields}

    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done:
        return Done(state["record"])

    def failed(self, item: PromptRow, failure: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": item.id,
            self.answer: None,
            "reason": failure["reason"],
            "detail": failure["detail"],
            "calls": failure["calls"],
            "at": failure["failed_at"],
        }

    async def run(
        self,
        prompts: list[tuple[str, str]],
        out: RunDirectory,
        config: RunConfig,
        fields: dict[str, Any],
        show_progress: bool,
        console: Console | None = None,
    ) -> dict[str, Any]:
        """The role over (id, prompt) pairs not done yet in `out`; every id's answer (None: it
        failed, with the reason in the ledger). `fields` reach every prompt's state and the
        fingerprint (another K of look-alikes is another run)."""
        stage = Stage(
            self,
            out,
            config,
            _items(prompts, fields),
            len(prompts),
            {"pool": "prepare", **fields},
            duplicates="skip",
            console=console,
            show_progress=show_progress,
        )
        await run_stage(stage)
        done = {row["id"]: row.get(self.answer) for row in read_jsonl(out.path(self.ledger.done))}
        return {row_id: done.get(row_id) for row_id, _ in prompts}


class ClassifyPrompts(PoolTask):
    name = "classify"
    description = "policy tags of prompts"
    verb = "classifying"
    ledger = Ledger(done=CLASSIFICATIONS, failures=CLASSIFICATIONS)
    section = "classification"
    archive_group = "classify"
    declared_roles = (CLASSIFIER,)
    thread_prefix = "classify:"
    answer = "policies"

    def graph(self) -> RecipeGraph:
        return one_node_graph(PoolState, classify_row)

    def fingerprint_data(self, ctx: RunContext) -> dict[str, Any]:
        return super().fingerprint_data(ctx) | {"instructions": CLASSIFIER_INSTRUCTIONS}


class ContrastPrompts(PoolTask):
    name = "contrast"
    description = "benign look-alikes of policy-touching prompts"
    verb = "contrasting"
    ledger = Ledger(done=CONTRASTS, failures=CONTRASTS)
    section = "contrast"
    archive_group = "contrast"
    declared_roles = (CONTRAST,)
    thread_prefix = "contrast:"
    answer = "prompts"

    def graph(self) -> RecipeGraph:
        return one_node_graph(PoolState, contrast_row)


def _items(prompts: Iterable[tuple[str, str]], fields: dict[str, Any]) -> Iterator[PromptRow]:
    for index, (row_id, prompt) in enumerate(prompts):
        yield PromptRow(index, row_id, prompt, fields=dict(fields), has_id=True)
