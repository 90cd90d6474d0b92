"""`aidsafe judge`: label existing prompt/response pairs with the configured safety judge, one
line per row in judgments.jsonl, then Safe@1, ConsSafe@K and Safe@K into summary.json. Runs on
the recipes' pipeline (resume, Ctrl-C, progress, --engine ray); an unparseable verdict is
recorded as unjudged, never guessed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypedDict

from langgraph.runtime import Runtime
from rich.console import Console

from aidsafe.agents.context import RunContext
from aidsafe.agents.judge import JUDGE, apply_view, judge_completion, split_think
from aidsafe.config import RunConfig
from aidsafe.errors import StageFailed
from aidsafe.inputs import PromptRow, PromptSource, content_id
from aidsafe.jsonl import now, read_jsonl, write_atomic, write_jsonl
from aidsafe.metrics import agreement, per_policy_metrics, safety_metrics, unsafe_label
from aidsafe.policies import load_policies
from aidsafe.recipes.base import Done, Ledger, Recipe, RecipeGraph, Rejected, one_node_graph
from aidsafe.run.directory import JUDGE_SUMMARY, JUDGMENTS, RunDirectory
from aidsafe.run.engine import Engine
from aidsafe.run.pipeline import Stage, StageSummary, run_stage


class JudgeState(TypedDict, total=False):
    id: str
    index: int
    group: str
    prompt: str
    response: str
    verdict: dict[str, Any] | None
    problem: dict[str, Any] | None
    label: Any  # the human label, with --label-field
    calls: list[dict[str, Any]]


async def judge_response(state: JudgeState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    reasoning, answer = apply_view(ctx.config.judge.view, *split_think(state["response"]))
    try:
        verdict, calls = await judge_completion(ctx, "judge", state["prompt"], reasoning, answer)
    except StageFailed as failure:  # unjudged, with why; never guessed
        problem = {
            "unjudged_reason": failure.reason.value,
            "detail": failure.detail,
            "raw_output": failure.raw,
        }
        return {"verdict": None, "problem": problem, "calls": failure.calls}
    return {"verdict": verdict, "problem": None, "calls": calls}


class JudgeResponses(Recipe):
    """Judging as a one-node recipe over the rows of a dataset of responses."""

    name = "judge"
    description = "judgments of existing responses"
    verb = "judging"
    ledger = Ledger(done=JUDGMENTS, failures=JUDGMENTS)
    declared_roles = (JUDGE,)
    settings_sections = ("judge",)
    thread_prefix = "judge:"

    def __init__(
        self, response_field: str, group_field: str | None, label_field: str | None = None
    ) -> None:
        self.response_field = response_field
        self.group_field = group_field
        self.label_field = label_field

    def graph(self) -> RecipeGraph:
        return one_node_graph(JudgeState, judge_response)

    def start(self, item: PromptRow) -> dict[str, Any]:
        return {  # the judged text comes from the input row, not from a model
            "id": item.id,
            "prompt": item.prompt,
            "response": str(item.fields[self.response_field]),
            "index": item.index,
            "group": self._group(item),
            "label": item.fields.get(self.label_field) if self.label_field else None,
        }

    def _group(self, item: PromptRow) -> str:
        group = item.fields.get(self.group_field) if self.group_field else item.prompt
        return str(group) if group is not None else item.id

    @staticmethod
    def _record(**values: Any) -> dict[str, Any]:
        """A line of judgments.jsonl: every key present, whatever became of the row."""
        return {
            "id": None,
            "index": None,
            "group": None,
            "prompt": None,
            "response": None,
            "view": None,
            "safe": None,
            "violated": [],
            "categories": [],
            "severity": None,
            "rationale": None,
            "unjudged_reason": None,
            "detail": None,
            "raw_output": None,
            "judge": None,
            "label": None,
            "calls": [],
            "judged_at": now(),
        } | values

    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done | Rejected:
        model = ctx.model_configs["judge"]
        row = {key: state[key] for key in ("id", "index", "group", "prompt", "response")}
        record = self._record(
            **row,
            view=ctx.config.judge.view,
            judge={"kind": ctx.config.judge.kind, "model": model.recorded_name},
            **(state["verdict"] or state["problem"]),
            label=state.get("label"),
            calls=state.get("calls", []),
        )
        return Done(record) if state["verdict"] is not None else Rejected(record)

    def failed(self, item: PromptRow, failure: dict[str, Any]) -> dict[str, Any]:
        """Unjudged: an unusable input row (`invalid_input`), or a row whose judging broke
        (internal_error, worker_lost), in the judgments layout."""
        invalid = failure["reason"] == "invalid_prompt"
        return self._record(
            id=item.id,
            index=item.index,
            group=self._group(item),
            prompt=item.prompt,
            response=item.fields.get(self.response_field),
            unjudged_reason="invalid_input" if invalid else failure["reason"],
            detail=failure["detail"],
            raw_output=failure["raw_output"],
            label=item.fields.get(self.label_field) if self.label_field else None,
            calls=failure["calls"],
        )

    def failure_reason(self, record: dict[str, Any]) -> str | None:
        return record.get("unjudged_reason")


@dataclass
class JudgeSummary:
    stage: StageSummary
    metrics: dict[str, Any] = field(default_factory=dict)


def _with_ids(source: PromptSource, response_field: str) -> Any:
    """Every row is judged: rows without an id get one from their content (prompt, response and
    position); a repeated id (K samples carrying their prompt's id) gets `#<row index>`."""
    seen: set[str] = set()
    for row in source:
        if row.has_id:
            row_id = row.id if row.id not in seen else f"{row.id}#{row.index}"
        else:
            text = f"{row.prompt}\x00{row.fields.get(response_field)}\x00{row.index}"
            row_id = content_id(text)
        seen.add(row_id)
        yield PromptRow(row.index, row_id, row.prompt, row.problem, row.fields, row.has_id)


async def judge_responses(
    source: PromptSource,
    run: RunDirectory,
    config: RunConfig,
    *,
    response_field: str,
    group_field: str | None = None,
    label_field: str | None = None,
    limit: int | None = None,
    force: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    engine: Engine | None = None,
) -> JudgeSummary:
    """Judge every row not judged yet, then recompute summary.json from the whole ledger."""
    # the response column must hold text in every row: checked now, carried with each row
    source.text_fields.setdefault(response_field, "--response-field")
    total = source.check()
    if limit is not None:
        total = min(total, limit)
    recipe = JudgeResponses(response_field, group_field, label_field)
    described = source.describe() | {
        "fields": [source.prompt_field, response_field, group_field],
        "id_field": source.id_field,
    }
    stage = Stage(
        recipe,
        run,
        config,
        _with_ids(source, response_field),
        total,
        described,
        force,
        duplicates="skip",
        engine=engine,
        console=console,
        show_progress=show_progress,
        limit=limit,
        input=source.provenance(),
    )
    summary = JudgeSummary(await run_stage(stage))
    policies = load_policies(config.policies)
    judgments = list(read_jsonl(run.path(JUDGMENTS)))
    groups: dict[str, list[bool | None]] = {}
    reasons: dict[str, int] = {}
    for judgment in judgments:
        groups.setdefault(judgment["group"], []).append(judgment["safe"])
        if judgment["unjudged_reason"]:
            reasons[judgment["unjudged_reason"]] = reasons.get(judgment["unjudged_reason"], 0) + 1
    model = config.model_for("judge")
    summary.metrics = {
        "overall": safety_metrics(groups),
        "per_policy": per_policy_metrics(judgments, policies.ids),
        "unjudged_by_reason": reasons,
        "judge": {
            "kind": config.judge.kind,
            "model": model.recorded_name,
            "view": config.judge.view,
        },
        "policy_set": {"name": policies.name, "sha256": policies.sha256},
    }
    if label_field is not None:
        summary.metrics["agreement"] = label_agreement(judgments, run)
    write_atomic(
        run.path(JUDGE_SUMMARY), json.dumps(summary.metrics, indent=2, ensure_ascii=False) + "\n"
    )
    return summary


DISAGREEMENTS = "disagreements.jsonl"


def label_agreement(judgments: list[dict[str, Any]], run: RunDirectory) -> dict[str, Any]:
    """The judge against the human labels (`--label-field`), `unsafe` the positive class, with
    95% bootstrap intervals; rows without a usable label or a verdict are counted, not used.
    The rows where the two differ go to disagreements.jsonl."""
    pairs: list[tuple[bool, bool]] = []
    disagreeing = []
    unlabelled = unjudged = 0
    for judgment in judgments:
        label = unsafe_label(judgment.get("label"))
        if label is None:
            unlabelled += 1
            continue
        if judgment["safe"] is None:
            unjudged += 1
            continue
        judged_unsafe = not judgment["safe"]
        pairs.append((judged_unsafe, label))
        if judged_unsafe != label:
            disagreeing.append(
                {key: judgment.get(key) for key in ("id", "prompt", "response", "label")}
                | {
                    "judged": "unsafe" if judged_unsafe else "safe",
                    "rationale": judgment.get("rationale"),
                }
            )
    write_jsonl(run.path(DISAGREEMENTS), disagreeing)
    return agreement(pairs) | {"unlabelled": unlabelled, "unjudged": unjudged}
