"""Rendering: the only place that prints. Summaries are drawn from what the pipeline returns,
the same way for every recipe."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aidsafe.metrics import AGREEMENT as AGREEMENT_NAMES
from aidsafe.metrics import CURVE_FIGURES, figure_text

out = Console()
err = Console(stderr=True)

# What each ledger file holds, for the closing line of a summary.
FILE_NOTES = {
    "sft.jsonl": "training rows",
    "traces.jsonl": "full records",
    "dpo.jsonl": "TRL preference rows",
    "dpo_failures.jsonl": "prompts without a pair, with the reason",
    "judgments.jsonl": "one verdict per row",
    "grades.jsonl": "scores per row",
}


def rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return rate(value)
    return str(value)


def statistics_rows(statistics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A recipe's statistics as table rows, nested mappings flattened (`target: safe_at_1`)."""
    rows: list[tuple[str, str]] = []
    for key, value in statistics.items():
        name = f"{prefix}{key.replace('_', ' ')}"
        if isinstance(value, dict):
            rows += statistics_rows(value, f"{name}: ")
        else:
            rows.append((name, _value(value)))
    return rows


def print_stage(summary: Any) -> None:
    """One stage's table: this run, the whole directory, tokens per role, its statistics."""
    totals = summary.totals
    table = Table(title=f"recipe: {summary.recipe}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    if summary.total is not None:
        table.add_row("rows in input (after --limit)", str(summary.total))
    table.add_row("done / failed this run", f"{summary.done_now} / {summary.failed_now}")
    table.add_row("already finished earlier", str(summary.skipped))
    table.add_row("done / failed in directory", f"{totals['done']} / {totals['failed']}")
    for reason, count in totals["failed_by_reason"].items():
        table.add_row(f"  failed: {reason}", str(count))
    for role, tokens in totals["tokens_by_role"].items():
        cost = f", ${tokens['cost_usd']:,.4f}" if "cost_usd" in tokens else ""
        table.add_row(
            f"  tokens: {role}",
            f"{tokens['input']:,} in / {tokens['output']:,} out ({tokens['calls']} calls{cost})",
        )
    if "cost_usd" in totals:
        table.add_row(
            "cost this run / in directory", f"${summary.cost_now:,.4f} / ${totals['cost_usd']:,.4f}"
        )
    for name, value in statistics_rows(summary.statistics):
        table.add_row(name, value)
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    out.print(table)
    files = ", ".join(
        f"{name} ({FILE_NOTES[name]})" if name in FILE_NOTES else name for name in summary.ledger
    )
    out.print(f"Outputs in [bold]{escape(summary.out)}[/]: {files}, manifest.json")
    print_budget(summary)
    if totals["failed_by_reason"].get("endpoint_error"):
        out.print("Some rows hit endpoint errors; re-run with --retry-failed to try them again.")


def print_judge_summary(summary: Any) -> None:
    metrics = summary.metrics
    overall = metrics["overall"]
    table = Table(
        title=f"safety judged by {metrics['judge']['kind']} judge ({metrics['judge']['view']})"
    )
    for column in ("", "Safe@1", "ConsSafe@K", "Safe@K", "prompts"):
        table.add_column(column, justify="right" if column else "left")
    rows = [("overall", overall), *metrics["per_policy"].items()]
    for name, values in rows:
        table.add_row(
            name,
            rate(values["safe_at_1"]),
            rate(values["cons_safe_at_k"]),
            rate(values["safe_at_k"]),
            str(values["prompts"]),
        )
    out.print(table)
    out.print(
        f"{overall['samples_judged']} samples judged (K from {overall['k_min']} to "
        f"{overall['k_max']} per prompt); {overall['samples_unjudged']} unjudged, left out of "
        f"the metrics {metrics['unjudged_by_reason'] or ''}"
    )
    stage = summary.stage
    out.print(
        f"This run: {stage.done_now} judged, {stage.failed_now} unjudged, "
        f"{stage.skipped} judged earlier. Outputs in [bold]{escape(stage.out)}[/]: "
        "judgments.jsonl, summary.json"
    )
    if "agreement" in metrics:
        print_agreement(metrics["agreement"])


def print_agreement(figures: dict[str, Any]) -> None:
    """`judge --label-field`: the judge against human labels, `unsafe` the positive class."""
    table = Table(title=f"agreement with the labels ({figures['n']} rows; unsafe = positive)")
    for column in ("", "value", "95% CI"):
        table.add_column(column, justify="left" if not column else "right")
    for name in AGREEMENT_NAMES:
        value, ci = figures[name]["value"], figures[name]["ci95"]
        table.add_row(
            name.replace("_", " "),
            "-" if value is None else f"{value:.3f}",
            "-" if ci is None else f"{ci[0]:.3f} to {ci[1]:.3f}",
        )
    out.print(table)
    out.print(
        f"Rows without a usable label: {figures['unlabelled']}; unjudged: {figures['unjudged']}. "
        "The rows where the judge and the label differ are in disagreements.jsonl."
    )
    if "per_policy" in figures:
        print_policy_agreement(figures["per_policy"])
    if "threshold_curve" in figures:
        print_threshold_curve(figures["threshold_curve"])


def print_threshold_curve(curve: dict[str, Any]) -> None:
    """A guard judge's agreement at each cut-off on P(unsafe)."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table(title=f"agreement against the P(unsafe) cut-off ({curve['n']} rows)")
    for column in ("cut-off", *CURVE_FIGURES):
        table.add_column(column.replace("_", " "), justify="right")
    for point in curve["points"]:
        table.add_row(f"{point['threshold']:.2f}", *(cell(point[name]) for name in CURVE_FIGURES))
    out.print(table)
    out.print(
        f"Highest kappa at cut-off {curve['best_kappa_threshold']}; ROC AUC {curve['roc_auc']}."
    )


def print_policy_agreement(per_policy: dict[str, Any]) -> None:
    """`--label-categories-field`: agreement per policy, each with its 95% CI."""

    table = Table(title="agreement per policy (value, 95% CI)")
    for column in ("policy", "rows", "labelled unsafe", "kappa", "precision", "recall"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for pid, figures in per_policy["policies"].items():
        table.add_row(
            pid,
            str(figures["n"]),
            str(figures["positives"]),
            figure_text(figures["kappa"]),
            figure_text(figures["precision"]),
            figure_text(figures["recall"]),
        )
    out.print(table)
    notes = [f"Rows labelled unsafe with no category: {per_policy['uncategorised']}."]
    if per_policy["unknown_categories"]:
        unknown = ", ".join(per_policy["unknown_categories"])
        notes.append(f"Label categories that are no policy id (not counted): {escape(unknown)}.")
    out.print(" ".join(notes))


def print_grades(summary: Any) -> None:
    table = Table(title=f"grades ({summary.summary['grader']})")
    for column in ("metric", "mean", "95% CI", "graded", "unparseable"):
        table.add_column(column)
    for metric, stats in summary.summary["metrics"].items():
        ci = stats["ci95"]
        table.add_row(
            metric,
            rate(stats["mean"]),
            f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a",
            str(stats["n_graded"]),
            str(stats["n_unparseable"]),
        )
    out.print(table)
    stage = summary.stage
    out.print(
        f"This run: {stage.done_now} rows graded, {stage.failed_now} failed, "
        f"{stage.skipped} graded earlier. "
        f"Grades in {escape(stage.out)}: grades.jsonl, grades_summary.json"
    )


def print_recipes(recipes: dict[str, Any], chains: dict[str, tuple[str, ...]]) -> None:
    table = Table(title="recipes", show_lines=True)
    for column in ("recipe", "what it makes", "roles (default temperature)", "reads"):
        table.add_column(column)
    for name, recipe in recipes.items():
        roles = "\n".join(
            f"{role.name}{'_N' if role.numbered else ''} ({role.temperature:g}): {role.description}"
            for role in recipe.declared_roles
        )
        source = (
            "prompts" if recipe.consumes == "prompts" else f"rows of {' or '.join(recipe.accepts)}"
        )
        table.add_row(name, recipe.description, roles, source)
    for name, steps in chains.items():
        table.add_row(name, "chain: " + " then ".join(steps), "", "prompts")
    out.print(table)


def print_prepare(summary: Any) -> None:
    """`aidsafe prepare`: rows read and kept per source, then the drops per reason."""
    table = Table(title="prompt pool")
    for column in ("source", "read", "kept"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for name, numbers in summary.per_source.items():
        table.add_row(escape(name), str(numbers["read"]), str(numbers["kept"]))
    table.add_row("[bold]all[/]", str(summary.read), str(summary.kept))
    out.print(table)
    for reason, count in summary.dropped.items():
        out.print(f"  dropped {reason.replace('_', ' ')}: {count}")
    if summary.buckets:
        buckets = Table(title="selection (source / category)")
        for column in ("bucket", "before", "after"):
            buckets.add_column(column, justify="left" if column == "bucket" else "right")
        for name, sizes in summary.buckets.items():
            buckets.add_row(escape(name), str(sizes["before"]), str(sizes["after"]))
        out.print(buckets)
    if summary.classified is not None:
        tags = ", ".join(f"{tag} {count}" for tag, count in summary.classified["by_policy"].items())
        out.print(f"  policy tags (before selection): {escape(tags) or 'none'}")
        if summary.classified["failed"]:
            out.print(
                f"  [yellow]{summary.classified['failed']} prompts could not be tagged[/] "
                "(kept untagged; the reasons are in classifications.jsonl)"
            )
    if summary.contrast is not None:
        figures = summary.contrast
        out.print(
            f"  benign contrast prompts: {figures['written']} written for {figures['prompts']} "
            f"policy-touching prompts, {figures['kept']} kept after dedup and decontamination"
            + (f", {figures['failed']} prompts failed" if figures["failed"] else "")
        )
    for described in summary.evals:
        out.print(
            f"  eval set {escape(described['eval'])} ({described['items']} items): "
            f"{described['matched']} pool prompts matched"
        )
    out.print(
        f"Outputs in [bold]{escape(str(summary.out))}[/]: prompts.jsonl (the kept prompts), "
        "report.json and report.html (every dropped prompt, with why)"
    )


def print_preview(report: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """`generate --preview`: each sampled row readably, then its figures and the projection."""
    for record in records:
        print_record(record)
    sample = report["sample"]
    table = Table(title=f"preview: {sample['rows']} of {sample['of']} rows (seed {sample['seed']})")
    for column in ("row", "outcome", "calls", "tokens", "latency s", "cost USD"):
        table.add_column(column, justify="left" if column in ("row", "outcome") else "right")
    for row in report["rows"]:
        cost = f"{row['cost_usd']:.6f}" if "cost_usd" in row else "-"
        outcome = "done" if row["ok"] else f"failed: {row.get('reason')}"
        table.add_row(
            escape(row["id"]),
            outcome,
            str(row["calls"]),
            f"{row['tokens']:,}",
            f"{row['latency_s']:.2f}",
            cost,
        )
    out.print(table)
    level = round(100 * report["level"])
    for measure, label in (
        ("tokens", "tokens"),
        ("cost_usd", "cost USD"),
        ("latency_s", "model time s"),
    ):
        figures = report["projection"].get(measure)
        if figures is None:
            continue
        low, high = figures["input_interval"]
        out.print(
            f"projected {label} for all {sample['of']:,} rows: {figures['input']:,.2f} "
            f"({level}% interval {low:,.2f} to {high:,.2f}; {figures['per_row']:,.4f} per row)"
        )
    out.print(
        "These rows are part of the run: the same command without --preview continues it "
        "(a changed config needs --force, which moves them aside)."
    )


def print_record(record: dict[str, Any]) -> None:
    """One row as a person reads it: prompt, intents, deliberation, refined CoT with what the
    refiner removed, response; or why it failed."""
    out.rule(f"[bold]{escape(str(record.get('id')))}")
    out.print(f"[bold]prompt:[/] {escape(str(record.get('prompt')))}")
    if "reason" in record and "response" not in record:
        out.print(f"[red]failed: {record['reason']}[/] {escape(str(record.get('detail', '')))}")
        return
    intents = record.get("intents") or {}
    for kind in ("explicit", "implicit"):
        if intents.get(kind):
            out.print(f"[bold]{kind} intents:[/] {escape('; '.join(intents[kind]))}")
    for turn in (record.get("deliberation") or {}).get("turns", []):
        added = "".join(f"\n    + {escape(t['text'])}" for t in turn.get("thoughts", []))
        out.print(f"  turn {turn['turn']} {turn['agent']}: {turn['action']}{added}")
    removed = {r["text"]: r for r in record.get("removed", [])}
    if record.get("thoughts"):
        out.print("[bold]chain of thought[/] (struck: removed by the refiner):")
        for thought in record["thoughts"]:
            cut = removed.get(thought["text"])
            policies = (
                f" [dim]({', '.join(thought['policies'])})[/]" if thought.get("policies") else ""
            )
            if cut is not None:
                out.print(f"  [strike]{escape(thought['text'])}[/] [yellow]{cut['reason']}[/]")
            else:
                out.print(f"  - {escape(thought['text'])}{policies}")
    if "response" in record:
        out.print(f"[bold]response:[/] {escape(str(record['response']))}")


def print_budget(summary: Any) -> None:
    """What a stage stopped by its budget spent, and how to go on."""
    if not summary.budget_reached:
        return
    budget = summary.budget
    spent = []
    if budget.max_cost is not None:
        spent.append(f"${budget.cost:,.4f} of the ${budget.max_cost:,.4f} budget")
    if budget.max_tokens is not None:
        spent.append(f"{budget.tokens:,} of the {budget.max_tokens:,} token budget")
    err.print(
        f"[yellow]Budget reached:[/] {' and '.join(spent)} spent in {escape(summary.out)}; "
        "rows in flight finished, no new row started. Raise --max-cost / --token-budget "
        "and run the same command again to continue.",
        soft_wrap=True,
    )


def print_upload(folder: Any, repo: str, dry_run: bool) -> None:
    """`aidsafe push`: what goes (or, with --dry-run, would go) to the Hub."""
    verb = "Would upload" if dry_run else "Uploading"
    out.print(
        f"{verb} to dataset repository [bold]{escape(repo)}[/] from {escape(str(folder.root))}:"
    )
    for path in folder.files:
        size = (folder.root / path).stat().st_size
        out.print(f"  {escape(str(path))} ({size:,} bytes)")


def print_split(report: dict[str, Any], run_dir: Any) -> None:
    """`aidsafe split`: how many prompts were held out, per stratum."""
    table = Table(title=f"held out for evaluation (seed {report['seed']})")
    for column in ("stratum (source / category)", "rows", "held out"):
        table.add_column(column, justify="left" if column.startswith("stratum") else "right")
    for name, sizes in report["strata"].items():
        table.add_row(escape(name), str(sizes["rows"]), str(sizes["held_out"]))
    table.add_row("[bold]all[/]", str(report["rows"]), str(report["held_out"]))
    out.print(table)
    out.print(
        f"Wrote {escape(str(run_dir))}/split.json; `aidsafe export` and `aidsafe push` now "
        "leave these prompts out."
    )


def print_judge_comparison(compared: dict[str, Any]) -> None:
    """`compare` of judge runs: agreement with the labels side by side, then each judge against
    the first, row by row."""
    from aidsafe.tasks.judging import judge_rows

    table = Table(title=f"judges compared (row by row against {escape(compared['reference'])})")
    table.add_column("")
    for run in compared["runs"]:
        table.add_column(escape(run["name"]))
    for label, cells in judge_rows(compared):
        table.add_row(label, *(escape(cell) for cell in cells))
    out.print(table)
