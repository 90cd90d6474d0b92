"""Side-by-side comparison of graded runs: metric means with CIs, paired differences and win
rates on common rows, cost and deliberation statistics; as data, and as a self-contained HTML
report with plots drawn by matplotlib as inline SVG (no network, no scripts)."""

from __future__ import annotations

import html
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidsafe.agents.grader import METRICS
from aidsafe.errors import UserError
from aidsafe.jsonl import read_jsonl
from aidsafe.run.directory import GRADES, GRADES_SUMMARY, RunDirectory
from aidsafe.schemas import REMOVAL_REASONS
from aidsafe.stats import bootstrap_ci, mean, win_rate
from aidsafe.tasks.charts import bar_chart, distributions
from aidsafe.tasks.grading import summarize_grades


@dataclass
class RunStats:
    name: str
    recipe: str
    scores: dict[str, dict[str, int | None]]  # row id -> metric -> score
    summary: dict[str, Any]
    rows: int
    wall_s: float
    tokens_per_row: dict[str, float]
    rounds: list[int] = field(default_factory=list)
    agreed_share: float | None = None
    removed_per_row: dict[str, float] = field(default_factory=dict)


def load_run(path: Path) -> RunStats:
    run = RunDirectory(path)
    manifest = run.manifest()
    if manifest is None:
        raise UserError(f"{path}: not a run directory (no manifest.json)")
    if not (run.path(GRADES).exists() or run.path(GRADES_SUMMARY).exists()):  # 0 rows graded
        raise UserError(f"{path}: not graded yet; run `aidsafe grade {path}` first")
    grades = list(read_jsonl(run.path(GRADES)))
    scores = {
        row["id"]: {m: (g["score"] if g else None) for m, g in row["scores"].items()}
        for row in grades
    }
    traces = list(read_jsonl(run.path("traces.jsonl")))
    tokens: Counter[str] = Counter()
    for trace in traces:
        for call in trace.get("calls", []):
            tokens[call["role"]] += call["input_tokens"] + call["output_tokens"]
    rows = len(traces)
    # deliberation statistics for runs whose recipe read the deliberation settings
    settings = manifest.get("config", {}).get("settings", {})
    deliberative = [t for t in traces if "deliberation" in settings and "removed" in t]
    removed: Counter[str] = Counter()
    for trace in deliberative:
        removed.update(r["reason"] for r in trace["removed"])
    return RunStats(
        name=path.name or str(path),
        recipe=str(manifest.get("recipe") or manifest.get("config", {}).get("recipe", "?")),
        scores=scores,
        summary=summarize_grades(iter(grades)),
        rows=rows,
        wall_s=sum(r.get("wall_s", 0.0) for r in manifest.get("runs", [])),
        tokens_per_row={role: n / rows for role, n in sorted(tokens.items())} if rows else {},
        rounds=[t["deliberation"]["rounds"] for t in deliberative],
        agreed_share=mean([float(t["deliberation"]["agreed"]) for t in deliberative]),
        removed_per_row={
            reason: removed[reason] / len(deliberative) if deliberative else 0.0
            for reason in REMOVAL_REASONS
        },
    )


def paired(a: RunStats, b: RunStats, metric: str) -> list[tuple[float, float]]:
    """Scores of rows graded in both runs, matched by id."""
    pairs = []
    for row_id, scores in a.scores.items():
        other = b.scores.get(row_id)
        if other is None:
            continue
        left, right = scores.get(metric), other.get(metric)
        if left is not None and right is not None:
            pairs.append((float(left), float(right)))
    return pairs


def comparison(runs: list[RunStats]) -> dict[str, Any]:
    """Every number of the report. Differences and win rates are each run against the first."""
    base = runs[0]
    versus: dict[str, dict[str, Any]] = {}
    for run in runs[1:]:
        versus[run.name] = {}
        for metric in METRICS:
            pairs = paired(run, base, metric)
            differences = [x - y for x, y in pairs]
            versus[run.name][metric] = {
                "common_rows": len(pairs),
                "difference": mean(differences),
                "difference_ci95": bootstrap_ci(differences),
                "win_rate": win_rate(pairs),
            }
    return {
        "baseline_run": base.name,
        "runs": [
            {
                "name": run.name,
                "recipe": run.recipe,
                "rows": run.rows,
                "metrics": run.summary["metrics"],
                "wall_s": run.wall_s,
                "tokens_per_row": run.tokens_per_row,
                "rounds_mean": mean([float(r) for r in run.rounds]),
                "agreed_share": run.agreed_share,
                "removed_per_row": run.removed_per_row,
            }
            for run in runs
        ],
        "versus_first": versus,
    }


def fmt(value: Any, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def metric_text(run: RunStats, data: dict[str, Any], metric: str) -> list[str]:
    """The lines of one table cell: mean [CI]; then, against the first run, the difference
    [CI] and the paired win rate."""
    stats = run.summary["metrics"][metric]
    ci = stats["ci95"]
    lines = [fmt(stats["mean"]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")]
    versus = data["versus_first"].get(run.name, {}).get(metric)
    if versus:
        d_ci = versus["difference_ci95"]
        lines.append(
            f"Δ {fmt(versus['difference'])}"
            + (f" [{fmt(d_ci[0])}, {fmt(d_ci[1])}]" if d_ci else "")
        )
        lines.append(f"win {fmt(versus['win_rate'])} (n={versus['common_rows']})")
    return lines


# --- HTML ----------------------------------------------------------------------------------


def _count(run: RunStats, metric: str, score: int) -> int:
    return sum(1 for scores in run.scores.values() if scores.get(metric) == score)


STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:900px}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:left;vertical-align:top}svg{display:block;margin:1.5em 0;max-width:100%}"
)


def html_report(runs: list[RunStats], data: dict[str, Any]) -> str:
    names = [run.name for run in runs]
    means = [(r.name, [r.summary["metrics"][m]["mean"] for m in METRICS]) for r in runs]
    cis: list[list[tuple[float, float] | None]] = [
        [(ci[0], ci[1]) if (ci := r.summary["metrics"][m]["ci95"]) else None for m in METRICS]
        for r in runs
    ]
    charts = [
        bar_chart(
            "Metric means with 95% CI (1-5)",
            list(METRICS),
            means,
            errors=cis,
            top=5.0,
            ylabel="mean score",
        ),
        distributions(
            "Score distributions per metric",
            {
                metric: [(r.name, [float(_count(r, metric, k)) for k in range(1, 6)]) for r in runs]
                for metric in METRICS
            },
            [str(k) for k in range(1, 6)],
            xlabel="score",
            ylabel="rows",
        ),
    ]
    most = max((max(r.rounds) for r in runs if r.rounds), default=0)
    if most:
        histogram = [(r.name, [float(r.rounds.count(k)) for k in range(most + 1)]) for r in runs]
        charts.append(
            bar_chart(
                "Deliberation rounds used",
                [str(k) for k in range(most + 1)],
                histogram,
                xlabel="rounds",
                ylabel="rows",
            )
        )
    roles = sorted({role for r in runs for role in r.tokens_per_row})
    tokens = [(r.name, [r.tokens_per_row.get(role, 0.0) for role in roles]) for r in runs]
    charts.append(
        bar_chart(
            "Tokens per row, by stage (role)", roles, tokens, horizontal=True, xlabel="tokens"
        )
    )

    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for metric in METRICS:
        cells = []
        for run in runs:
            first, *more = (html.escape(line) for line in metric_text(run, data, metric))
            text = first + "".join(f"<br><small>{line}</small>" for line in more)
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr><th>{metric}</th>{''.join(cells)}</tr>")
    for label, values in (
        ("rows", [str(r.rows) for r in runs]),
        ("wall time (s)", [fmt(r.wall_s, 1) for r in runs]),
        ("tokens per row", [fmt(sum(r.tokens_per_row.values()), 0) for r in runs]),
        ("mean rounds", [fmt(mean([float(x) for x in r.rounds])) for r in runs]),
        ("ended by agreement", [fmt(r.agreed_share) for r in runs]),
    ):
        rows.append(f"<tr><th>{label}</th>{''.join(f'<td>{v}</td>' for v in values)}</tr>")
    for reason in REMOVAL_REASONS:
        values = [fmt(r.removed_per_row.get(reason)) for r in runs]
        rows.append(
            f"<tr><th>removed per row: {reason}</th>{''.join(f'<td>{v}</td>' for v in values)}</tr>"
        )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>aidsafe comparison</title>"
        f"<style>{STYLE}</style></head><body><h1>aidsafe comparison</h1>"
        f"<p>Differences (Δ) and paired win rates are against <b>{html.escape(names[0])}</b>, "
        "on rows graded in both runs. Intervals are 95% bootstrap CIs.</p>"
        f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>{''.join(charts)}</body></html>"
    )


def judge_report_html(compared: dict[str, Any]) -> str:
    """`compare --html` of judge runs: the table `compare` prints, and each judge's agreement
    figures as bars with their 95% intervals."""
    from aidsafe.metrics import AGREEMENT
    from aidsafe.tasks.judging import judge_rows

    runs = [run for run in compared["runs"] if run["agreement"]]
    charts = []
    if runs:
        values = [
            (run["name"], [run["agreement"][name]["value"] for name in AGREEMENT]) for run in runs
        ]
        intervals: list[list[tuple[float, float] | None]] = [
            [
                (ci[0], ci[1]) if (ci := run["agreement"][name]["ci95"]) else None
                for name in AGREEMENT
            ]
            for run in runs
        ]
        charts.append(
            bar_chart(
                "Agreement with the labels, with 95% CI (unsafe = positive)",
                [name.replace("_", " ") for name in AGREEMENT],
                values,
                errors=intervals,
                top=1.0,
                ylabel="share, kappa",
            )
        )
    head = "".join(f"<th>{html.escape(run['name'])}</th>" for run in compared["runs"])
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>"
        + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
        + "</tr>"
        for label, cells in judge_rows(compared)
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>aidsafe judges compared</title>"
        f"<style>{STYLE}</style></head><body><h1>aidsafe judges compared</h1>"
        f"<p>Row by row against <b>{html.escape(compared['reference'])}</b> (rows matched by id; "
        "a row's label from either run). Intervals are 95% bootstrap CIs; McNemar's exact test "
        "on the rows where exactly one of the two judges is right.</p>"
        f"<table><tr><th></th>{head}</tr>{body}</table>{''.join(charts)}</body></html>"
    )
