"""`aidsafe prepare --contrast K`: the contrast role writes K benign look-alikes of each prompt
that touches a policy. A one-node recipe on the pipeline, like tagging (aidsafe.tasks.classify):
concurrent, resumable in the pool's directory (contrasts.jsonl), failures recorded."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, TypedDict

from langgraph.runtime import Runtime
from rich.console import Console

from aidsafe.agents.context import RunContext
from aidsafe.agents.contrast import CONTRAST, contrast_prompts
from aidsafe.config import RunConfig
from aidsafe.inputs import PromptRow
from aidsafe.jsonl import now, read_jsonl
from aidsafe.recipes.base import Done, Ledger, Recipe, RecipeGraph, one_node_graph
from aidsafe.run.directory import CONTRASTS, RunDirectory
from aidsafe.run.pipeline import Stage, run_stage


class ContrastState(TypedDict, total=False):
    id: str
    prompt: str
    count: int
    record: dict[str, Any]
    calls: list[dict[str, Any]]


async def contrast_row(state: ContrastState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    prompts, calls = await contrast_prompts(runtime.context, state["prompt"], state["count"])
    record = {"id": state["id"], "prompts": prompts, "calls": calls, "written_at": now()}
    return {"record": record, "calls": calls}


class ContrastPrompts(Recipe):
    """Look-alikes as a one-node recipe: every prompt gets a line, written or failed."""

    name = "contrast"
    description = "benign look-alikes of policy-touching prompts"
    verb = "contrasting"
    ledger = Ledger(done=CONTRASTS, failures=CONTRASTS)
    section = "contrast"
    archive_group = "contrast"
    declared_roles = (CONTRAST,)
    thread_prefix = "contrast:"

    def graph(self) -> RecipeGraph:
        return one_node_graph(ContrastState, contrast_row)

    def start(self, item: PromptRow) -> dict[str, Any]:
        return {"id": item.id, "prompt": item.prompt, "count": item.fields["count"]}

    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done:
        return Done(state["record"])

    def failed(self, item: PromptRow, failure: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": item.id,
            "reason": failure["reason"],
            "prompts": None,
            "detail": failure["detail"],
            "calls": failure["calls"],
            "written_at": failure["failed_at"],
        }


def _items(prompts: Iterable[tuple[str, str]], count: int) -> Iterator[PromptRow]:
    for index, (row_id, prompt) in enumerate(prompts):
        yield PromptRow(index, row_id, prompt, fields={"count": count}, has_id=True)


async def write_contrasts(
    prompts: list[tuple[str, str]],
    count: int,
    out: RunDirectory,
    config: RunConfig,
    *,
    console: Console | None = None,
    show_progress: bool = True,
) -> dict[str, list[str] | None]:
    """Look-alikes of each (id, prompt) not done yet in `out`; every id's look-alikes (None: the
    role failed on it, with the reason in contrasts.jsonl)."""
    stage = Stage(
        ContrastPrompts(),
        out,
        config,
        _items(prompts, count),
        len(prompts),
        {"pool": "prepare", "count": count},  # another K is another run of the role
        duplicates="skip",
        console=console,
        show_progress=show_progress,
    )
    await run_stage(stage)
    written = {row["id"]: row.get("prompts") for row in read_jsonl(out.path(CONTRASTS))}
    return {row_id: written.get(row_id) for row_id, _ in prompts}
