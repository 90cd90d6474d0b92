"""`aidsafe judge`: label existing prompt/response pairs with the configured safety judge, one
line per row in judgments.jsonl, then Safe@1, ConsSafe@K and Safe@K into summary.json. Runs on
the recipes' pipeline (resume, Ctrl-C, progress, --engine ray); an unparseable verdict is
recorded as unjudged, never guessed."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from langgraph.runtime import Runtime
from rich.console import Console

from aidsafe.agents.context import RunContext
from aidsafe.agents.judge import JUDGE, apply_view, guard_verdict, judge_completion, split_think
from aidsafe.config import RunConfig
from aidsafe.errors import StageFailed, UserError
from aidsafe.inputs import PromptRow, PromptSource, category_names, content_id
from aidsafe.jsonl import now, read_jsonl, write_atomic, write_jsonl
from aidsafe.metrics import (
    AGREEMENT,
    agreement,
    agreement_figures,
    figure_text,
    per_policy_metrics,
    safety_metrics,
    unsafe_label,
)
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
    label_categories: (
        list[str] | None
    )  # the policies the label names, with --label-categories-field
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
        self,
        response_field: str,
        group_field: str | None,
        label_field: str | None = None,
        label_categories_field: str | None = None,
    ) -> None:
        self.response_field = response_field
        self.group_field = group_field
        self.label_field = label_field
        self.label_categories_field = label_categories_field

    def graph(self) -> RecipeGraph:
        return one_node_graph(JudgeState, judge_response)

    def start(self, item: PromptRow) -> dict[str, Any]:
        return {  # the judged text comes from the input row, not from a model
            "id": item.id,
            "prompt": item.prompt,
            "response": str(item.fields[self.response_field]),
            "index": item.index,
            "group": self._group(item),
            **self.labels_of(item),
        }

    def labels_of(self, item: PromptRow) -> dict[str, Any]:
        """The row's human label and label categories (None where not asked for)."""
        named = self.label_categories_field
        return {
            "label": item.fields.get(self.label_field) if self.label_field else None,
            "label_categories": category_names(item.fields.get(named)) if named else None,
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
            "p_unsafe": None,
            "text_safe": None,
            "rationale": None,
            "unjudged_reason": None,
            "detail": None,
            "raw_output": None,
            "judge": None,
            "label": None,
            "label_categories": None,
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
            label_categories=state.get("label_categories"),
            calls=state.get("calls", []),
        )
        return Done(record) if state["verdict"] is not None else Rejected(record)

    def fingerprint_data(self, ctx: RunContext) -> dict[str, Any]:
        """A guard's cut-off is applied again to the recorded P(unsafe) on every run, with no
        calls (`refresh`): only whether probabilities are asked for decides the calls."""
        data = super().fingerprint_data(ctx)
        judge = data["settings"]["judge"]
        if "threshold" in judge:
            judge["threshold"] = "logprobs"
        return data

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
            **self.labels_of(item),
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
    label_categories_field: str | None = None,
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
    if label_categories_field is not None and label_field is None:
        raise UserError("--label-categories-field needs --label-field")
    recipe = JudgeResponses(response_field, group_field, label_field, label_categories_field)
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
    labels = None
    if label_field is not None:
        labels = {row.id: recipe.labels_of(row) for row in _with_ids(source, response_field)}
    judgments = refresh(run, config, labels)
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
        summary.metrics["agreement"] = label_agreement(
            judgments, run, policies.ids, config.judge.categories
        )
    write_atomic(
        run.path(JUDGE_SUMMARY), json.dumps(summary.metrics, indent=2, ensure_ascii=False) + "\n"
    )
    return summary


def refresh(
    run: RunDirectory, config: RunConfig, labels: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """The judgments, brought up to date with no calls: each row's `label` and
    `label_categories` from the input as it is now (`labels`, by row id: labels added or
    corrected after judging count), and each guard verdict with a recorded P(unsafe) decided
    again at the configured threshold (judge once, then try cut-offs). judgments.jsonl is
    rewritten (atomically, under the directory's lock) when anything changed."""
    threshold = config.judge.threshold
    if threshold is None and labels is None:
        return list(read_jsonl(run.path(JUDGMENTS)))
    run.lock()
    try:
        judgments = list(read_jsonl(run.path(JUDGMENTS)))
        changed = False
        for judgment in judgments:
            update = dict(labels.get(judgment["id"], {})) if labels is not None else {}
            decided = judgment.get("p_unsafe") is not None and judgment["safe"] is not None
            if threshold is not None and decided:
                update |= guard_verdict(
                    bool(judgment.get("text_safe", judgment["safe"])),
                    judgment.get("categories") or [],
                    config.judge.categories,
                    judgment["p_unsafe"],
                    threshold,
                )
            if any(judgment.get(key) != value for key, value in update.items()):
                judgment.update(update)
                changed = True
        if changed:
            write_jsonl(run.path(JUDGMENTS), judgments)
        return judgments
    finally:
        run.unlock()


DISAGREEMENTS = "disagreements.jsonl"


def label_agreement(
    judgments: list[dict[str, Any]],
    run: RunDirectory,
    policy_ids: list[str],
    codes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The judge against the human labels (`--label-field`), `unsafe` the positive class, with
    95% bootstrap intervals; rows without a usable label or a verdict are counted, not used.
    The rows where the two differ go to disagreements.jsonl. With label categories, the same
    per policy (see `policy_agreement`)."""
    pairs: list[tuple[bool, bool]] = []
    labelled: list[tuple[dict[str, Any], bool]] = []
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
        labelled.append((judgment, label))
        if judged_unsafe != label:
            disagreeing.append(
                {key: judgment.get(key) for key in ("id", "prompt", "response", "label")}
                | {
                    "judged": "unsafe" if judged_unsafe else "safe",
                    "violated": judgment.get("violated"),
                    "rationale": judgment.get("rationale"),
                }
            )
    write_jsonl(run.path(DISAGREEMENTS), disagreeing)
    figures = agreement(pairs) | {"unlabelled": unlabelled, "unjudged": unjudged}
    scored = [
        (judgment["p_unsafe"], label)
        for judgment, label in labelled
        if judgment.get("p_unsafe") is not None
    ]
    if scored:
        figures["threshold_curve"] = threshold_curve(scored)
    if any(judgment.get("label_categories") is not None for judgment, _ in labelled):
        figures["per_policy"] = policy_agreement(labelled, policy_ids, codes or {})
    return figures


def policy_agreement(
    labelled: list[tuple[dict[str, Any], bool]], policy_ids: list[str], codes: dict[str, str]
) -> dict[str, Any]:
    """Agreement per policy p: the judge says unsafe-for-p when its verdict is unsafe and names
    p; the label says so when it is unsafe and its categories name p (a guard's category code
    counts as the policy `judge.categories` maps it to). A row labelled unsafe with no category
    cannot say which policy it breaks: it is counted in `uncategorised`, not used."""
    usable: list[tuple[dict[str, Any], bool, set[str]]] = []
    uncategorised = 0
    named_anywhere: set[str] = set()
    for judgment, label in labelled:
        named = judgment.get("label_categories")
        if named is None or (label and not named):
            uncategorised += 1
            continue
        mapped = {codes.get(name, name) for name in named} if label else set()
        named_anywhere |= mapped
        usable.append((judgment, label, mapped))
    result: dict[str, Any] = {}
    for pid in policy_ids:
        pairs = [
            (not judgment["safe"] and pid in (judgment.get("violated") or []), pid in mapped)
            for judgment, _, mapped in usable
        ]
        result[pid] = agreement(pairs)
    return {
        "policies": result,
        "uncategorised": uncategorised,
        "unknown_categories": sorted(named_anywhere - set(policy_ids)),
    }


# --- two or more judges side by side ------------------------------------------------------------


def is_judge_run(path: Path) -> bool:
    return RunDirectory(path).path(JUDGMENTS).exists()


def mcnemar_p(b: int, c: int) -> float | None:
    """Exact two-sided McNemar test: the chance of a split of the b + c rows where the two
    judges differ in being right at least this uneven, were each as likely to be the right one."""
    n = b + c
    if n == 0:
        return None

    def log_term(k: int) -> float:  # log(C(n, k) / 2^n), in floats: fast for any n
        return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)

    tail = sum(math.exp(log_term(k)) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail)


def compare_judges(paths: list[Path]) -> dict[str, Any]:
    """Judge runs over the same rows side by side: each judge's agreement with the labels (with
    its intervals) and safety metrics, and against the first judge, row by row (matched by id):
    how often the two agree, Cohen's kappa between them, and on labelled rows where exactly one
    of them is right, which one, with McNemar's exact test."""
    runs = []
    for path in paths:
        run = RunDirectory(path)
        if not run.path(JUDGMENTS).exists():
            raise UserError(f"{path}: not a judge run (no {JUDGMENTS})")
        try:
            summary = json.loads(run.path(JUDGE_SUMMARY).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UserError(
                f"{run.path(JUDGE_SUMMARY)}: missing or unreadable ({error}); run the same "
                "`aidsafe judge` command again to finish it and write it"
            ) from error
        judgments = {row["id"]: row for row in read_jsonl(run.path(JUDGMENTS))}
        runs.append((path, summary, judgments))
    _, _, reference = runs[0]
    compared = []
    for path, summary, judgments in runs:
        shared = [key for key in judgments if key in reference]
        both = [
            key
            for key in shared
            if judgments[key]["safe"] is not None and reference[key]["safe"] is not None
        ]
        calls = [(not judgments[key]["safe"], not reference[key]["safe"]) for key in both]
        only_this = only_reference = 0
        for key in both:  # this run's label, else the reference's: either may hold the labels
            label = unsafe_label(judgments[key].get("label"))
            if label is None:
                label = unsafe_label(reference[key].get("label"))
            if label is None:
                continue
            this_right = (not judgments[key]["safe"]) == label
            reference_right = (not reference[key]["safe"]) == label
            only_this += this_right and not reference_right
            only_reference += reference_right and not this_right
        figures = agreement_figures(calls)
        compared.append(
            {
                "name": path.name or str(path),
                "path": str(path),
                "judge": summary.get("judge"),
                "agreement": summary.get("agreement"),
                "overall": summary.get("overall"),
                "against_reference": {
                    "rows_shared": len(shared),
                    "rows_both_judged": len(both),
                    "same_call": figures["accuracy"],
                    "kappa": figures["kappa"],
                    "right_only_this": only_this,
                    "right_only_reference": only_reference,
                    "mcnemar_p": mcnemar_p(only_this, only_reference),
                },
            }
        )
    return {"reference": compared[0]["name"], "runs": compared}


CURVE_STEPS = [round(0.05 * step, 2) for step in range(1, 20)]


def threshold_curve(scored: list[tuple[float, bool]]) -> dict[str, Any]:
    """A guard judge's agreement with the labels at each cut-off on its P(unsafe) (0.05 to 0.95
    in steps of 0.05; unsafe when P(unsafe) >= the cut-off), the cut-off of highest kappa, and
    the ROC AUC: the chance that a row labelled unsafe gets a higher P(unsafe) than one
    labelled safe (ties count half). Both need rows of both labels (else None)."""
    points: list[dict[str, float | None]] = []
    best, highest = None, -2.0
    for cut in CURVE_STEPS:
        figures = agreement_figures([(chance >= cut, label) for chance, label in scored])
        point: dict[str, float | None] = {"threshold": cut}
        points.append(point | {name: _rounded(value) for name, value in figures.items()})
        kappa = figures["kappa"]
        if kappa is not None and kappa > highest + 1e-12:
            best, highest = cut, kappa
    positive = [chance for chance, label in scored if label]
    negative = [chance for chance, label in scored if not label]
    if not positive or not negative:  # one class only: kappa says nothing about a cut-off
        best = None
    auc = None
    if positive and negative:
        wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
        auc = round(wins / (len(positive) * len(negative)), 4)
    return {"n": len(scored), "points": points, "best_kappa_threshold": best, "roc_auc": auc}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def judge_rows(compared: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """`compare_judges` as the rows of a table, one cell per judge: the CLI and the HTML report
    show the same lines."""
    runs = compared["runs"]

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    overall = [run["overall"] or {} for run in runs]
    against = [run["against_reference"] for run in runs]
    return [
        (
            "judge",
            [f"{(r['judge'] or {}).get('model')} ({(r['judge'] or {}).get('kind')})" for r in runs],
        ),
        ("labelled rows", [str(r["agreement"]["n"]) if r["agreement"] else "-" for r in runs]),
        *(
            (
                name.replace("_", " "),
                [figure_text((run["agreement"] or {}).get(name)) for run in runs],
            )
            for name in AGREEMENT
        ),
        ("Safe@1", [share(o.get("safe_at_1")) for o in overall]),
        ("rows judged by both", [str(a["rows_both_judged"]) for a in against]),
        ("same call as reference", [share(a["same_call"]) for a in against]),
        ("kappa with reference", [share(a["kappa"]) for a in against]),
        ("right where reference wrong", [str(a["right_only_this"]) for a in against]),
        ("wrong where reference right", [str(a["right_only_reference"]) for a in against]),
        (
            "McNemar p",
            ["-" if a["mcnemar_p"] is None else f"{a['mcnemar_p']:.4f}" for a in against],
        ),
    ]
