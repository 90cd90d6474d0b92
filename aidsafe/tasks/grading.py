"""`aidsafe grade`: the paper's six CoT metrics, scored 1-5 by the grader role, on a run's SFT
rows or on a dataset in AIDSAFE's released layout. Runs on the recipes' pipeline (resume,
Ctrl-C, progress, --engine ray); an unparseable grade is left unscored and counted."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from langgraph.runtime import Runtime
from rich.console import Console

from aidsafe.agents.context import RunContext
from aidsafe.agents.grader import GRADER, METRICS, RUBRICS, GradeItem, grade_one
from aidsafe.agents.judge import split_think
from aidsafe.config import RunConfig
from aidsafe.errors import UserError
from aidsafe.inputs import PromptRow, PromptSource, content_id
from aidsafe.jsonl import read_jsonl, write_atomic
from aidsafe.recipes.base import Done, Ledger, Recipe, RecipeGraph, one_node_graph
from aidsafe.run.directory import GRADES, GRADES_SUMMARY, MANIFEST, RunDirectory
from aidsafe.run.engine import Engine
from aidsafe.run.pipeline import Stage, StageSummary, run_stage
from aidsafe.stats import bootstrap_ci, mean

SFT = "sft.jsonl"  # the rows a run directory offers for grading


class GradeState(TypedDict, total=False):
    id: str
    prompt: str
    cot: str
    response: str
    record: dict[str, Any]
    calls: list[dict[str, Any]]


async def grade_row(state: GradeState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    item = GradeItem(state["id"], state["prompt"], state["cot"], state["response"])
    record = await grade_one(runtime.context, item)
    return {"record": record, "calls": record["calls"]}


class GradeRows(Recipe):
    """Grading as a one-node recipe: every row gets a line, unscored metrics included."""

    name = "grade"
    description = "CoT grades of rows, six rubrics"
    verb = "grading"
    ledger = Ledger(done=GRADES, failures=GRADES)
    section = "grading"
    archive_group = "grades"
    declared_roles = (GRADER,)
    thread_prefix = "grade:"

    def graph(self) -> RecipeGraph:
        return one_node_graph(GradeState, grade_row)

    def start(self, item: PromptRow) -> dict[str, Any]:
        return {"id": item.id, "prompt": item.prompt, **item.fields}

    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done:
        return Done(state["record"])

    def failed(self, item: PromptRow, failure: dict[str, Any]) -> dict[str, Any]:
        """A row whose grading broke (internal_error, worker_lost): every metric unscored,
        with the reason, in the grades layout."""
        return {
            "id": item.id,
            "reason": failure["reason"],
            "scores": dict.fromkeys(METRICS),
            "unscored": dict.fromkeys(METRICS, failure["reason"]),
            "calls": failure["calls"],
            "detail": failure["detail"],
            "graded_at": failure["failed_at"],
        }

    def fingerprint_data(self, ctx: RunContext) -> dict[str, Any]:
        return super().fingerprint_data(ctx) | {"rubrics": RUBRICS}


def _as_items(items: Iterable[GradeItem]) -> Iterator[PromptRow]:
    for index, item in enumerate(items):
        fields = {"cot": item.cot, "response": item.response}
        yield PromptRow(index, item.id, item.prompt, fields=fields, has_id=True)


def run_items(run: RunDirectory) -> Iterator[GradeItem]:
    """A run's SFT rows, whatever the recipe: the CoT is the text inside the think tags."""
    for row in read_jsonl(run.path(SFT)):
        user, assistant = row["messages"][0]["content"], row["messages"][-1]["content"]
        cot, response = split_think(assistant)
        yield GradeItem(row["id"], user, cot, response)


def dataset_items(source: PromptSource, cot_field: str, response_field: str) -> Iterator[GradeItem]:
    """Rows of a dataset in AIDSAFE's released layout (prompt, thoughts, response)."""
    for row in source:
        if row.prompt is None:
            continue  # counted by the caller through `check`; nothing to grade
        cot, response = str(row.fields[cot_field]), str(row.fields[response_field])
        item_id = row.id if row.has_id else content_id(f"{row.prompt}\x00{cot}\x00{response}")
        yield GradeItem(item_id, row.prompt, cot, response)


def pick_cot_field(source: PromptSource) -> str:
    """`refined_thoughts` when the dataset has it, else `thoughts` (AIDSAFE's two layouts)."""
    columns = source.columns()
    if columns is None:
        first = next(iter(source._records()), (0, {}))[1]  # JSONL: the first row's keys
        columns = list(first)
    for name in ("refined_thoughts", "thoughts"):
        if name in columns:
            return name
    raise UserError(
        f"{source.spec}: no thoughts column (expected refined_thoughts or thoughts; "
        f"fields: {', '.join(columns)}); name it with --cot-field"
    )


@dataclass
class GradeSummary:
    stage: StageSummary
    summary: dict[str, Any] = field(default_factory=dict)


async def grade_items(
    items: Iterable[GradeItem],
    out: RunDirectory,
    config: RunConfig,
    *,
    source: dict[str, Any] | None = None,
    input: dict[str, Any] | None = None,
    force: bool = False,
    limit: int | None = None,
    console: Console | None = None,
    show_progress: bool = True,
    engine: Engine | None = None,
) -> GradeSummary:
    """Grade every item not graded yet (a repeated id once); append one line per item to
    grades.jsonl; recompute grades_summary.json from the whole file. `source`: what the items
    are, for the fingerprint; `input`: the manifest's record of the dataset they come from."""
    stage = Stage(
        GradeRows(),
        out,
        config,
        _as_items(items),
        None,
        source or {},
        force,
        duplicates="skip",
        engine=engine,
        console=console,
        show_progress=show_progress,
        limit=limit,
        input=input,
    )
    summary = GradeSummary(await run_stage(stage))
    summary.summary = summarize_grades(read_jsonl(out.path(GRADES)))
    summary.summary["grader"] = config.model_for("grader").recorded_name
    write_atomic(out.path(GRADES_SUMMARY), json.dumps(summary.summary, indent=2) + "\n")
    return summary


def summarize_grades(rows: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: mean, 95% bootstrap CI, rows graded and rows left unscored."""
    scores: dict[str, list[float]] = {metric: [] for metric in METRICS}
    unscored = dict.fromkeys(METRICS, 0)
    rows_seen = 0
    for row in rows:
        rows_seen += 1
        for metric in METRICS:
            grade = row["scores"].get(metric)
            if grade is None:
                unscored[metric] += 1
            else:
                scores[metric].append(grade["score"])
    return {
        "rows": rows_seen,
        "metrics": {
            metric: {
                "mean": mean(values),
                "ci95": bootstrap_ci(values),
                "n_graded": len(values),
                "n_unparseable": unscored[metric],
            }
            for metric, values in scores.items()
        },
    }


def is_run_directory(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).exists() and (path / SFT).exists()
