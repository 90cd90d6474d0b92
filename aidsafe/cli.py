"""The `aidsafe` command line. Bad input ends with one readable line and exit code 2."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aidsafe.errors import UserError

T = TypeVar("T")

app = typer.Typer(
    help="Generate policy-embedded chain-of-thought safety data with LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
policies_app = typer.Typer(help="Check and display policy sets.", no_args_is_help=True)
app.add_typer(policies_app, name="policies")

out = Console()
err = Console(stderr=True)

LimitOption = Annotated[int | None, typer.Option(min=1, help="Use only the first N rows.")]
ConcurrencyOption = Annotated[
    int | None, typer.Option(min=1, help="Rows in flight at once (default: 4).")
]
BackendOption = Annotated[
    str | None, typer.Option(help="Backend of every role's model: local, openai or vllm.")
]
ModelOption = Annotated[str | None, typer.Option(help="Every role's model name (or GGUF path).")]
BaseUrlOption = Annotated[
    str | None, typer.Option(help="OpenAI-compatible endpoint for every role.")
]
ApiKeyEnvOption = Annotated[
    str | None, typer.Option(help="Env var holding the API key (default: OPENAI_API_KEY).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]
EngineOption = Annotated[
    str,
    typer.Option(help="local: rows run in this process. ray: rows spread over Ray workers."),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        help="With --engine ray: the cluster to join (auto, ray://host:10001); "
        "unset: start a local Ray instance."
    ),
]
WorkersOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="With --engine ray: worker processes (default: one per CPU, or "
        "per GPU with the vllm backend); --concurrency rows run in each.",
    ),
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (see examples/).")
]


@app.command()
def generate(
    input: Annotated[
        str, typer.Argument(help="JSONL, CSV or Parquet file, saved dataset folder, or HF name.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")],
    config: ConfigOption = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="aidsafe (SFT), aidsafe-dpo (SFT, then DPO pairs), baseline, unsafechain."
        ),
    ] = None,
    policies: Annotated[
        str | None, typer.Option(help="Policy YAML file or shipped set name (default: default).")
    ] = None,
    prompt_field: Annotated[
        str | None, typer.Option(help="Column with the prompt (default: prompt).")
    ] = None,
    id_field: Annotated[
        str | None, typer.Option(help="Column with the row id (default: id, else a content hash).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split of a HF dataset (default: train).")
    ] = None,
    limit: LimitOption = None,
    concurrency: ConcurrencyOption = None,
    backend: BackendOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    temperature: Annotated[
        float | None, typer.Option(help="Temperature for every role without its own setting.")
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Max tokens per answer.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Config changed: move old outputs aside, start again.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Try the rows in failures.jsonl again.")
    ] = False,
    select: Annotated[
        int | None,
        typer.Option(min=1, help="Also write sft_selected.jsonl: a balanced subset of N rows."),
    ] = None,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run a recipe over prompts and write traces, SFT rows, failures and a manifest."""
    from aidsafe.config import load_config
    from aidsafe.inputs import PromptSource
    from aidsafe.rundir import RunDirectory
    from aidsafe.runner import generate as run_generate

    overrides: dict[str, Any] = {
        "recipe": recipe,
        "policies": policies,
        "concurrency": concurrency,
        "input": {"prompt_field": prompt_field, "id_field": id_field, "split": split},
        **_model_overrides(backend, model, base_url, api_key_env, temperature, max_tokens),
    }
    settings = load_config(config, overrides)
    source = PromptSource(
        input,
        prompt_field=settings.input.prompt_field,
        id_field=settings.input.id_field,
        split=settings.input.split,
        id_field_required="id_field" in settings.input.model_fields_set,
    )
    run = RunDirectory(out_dir)
    ray_engine = _engine(engine, ray_address, workers)
    summary = _run(
        run_generate(
            source,
            run,
            settings,
            limit=limit,
            force=force,
            retry_failed=retry_failed,
            console=err,
            show_progress=not quiet,
            select=select,
            engine=ray_engine,
        ),
        ray_engine,
        saved=f"finished rows are saved in {out_dir}",
    )
    if summary.archived:
        err.print(f"Earlier outputs moved to {summary.archived}")
    print_summary(summary)
    if summary.recipe_stats is not None:
        print_unsafechain_stats(summary.recipe_stats)
    if summary.selected is not None:
        out.print(f"Selected {summary.selected[0]} rows into {escape(summary.selected[1])}")
    if summary.pairs is not None:
        print_pair_summary(summary.pairs)


def print_unsafechain_stats(stats: dict[str, Any]) -> None:
    target = stats["target"]
    table = Table(title="UnsafeChain: the target model, judged", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row(
        "Safe@1 / ConsSafe@K / Safe@K",
        " / ".join(_rate(target[key]) for key in ("safe_at_1", "cons_safe_at_k", "safe_at_k")),
    )
    table.add_row("prompts (hard)", f"{stats.get('prompts', 0)} ({stats.get('hard_prompts', 0)})")
    for key in (
        "original_kept",
        "corrected_kept",
        "corrected_dropped",
        "unsafe_on_easy_prompts_dropped",
        "samples_unjudged",
    ):
        table.add_row(key.replace("_", " "), str(stats.get(key, 0)))
    out.print(table)


def _model_overrides(
    backend: str | None,
    model: str | None,
    base_url: str | None,
    api_key_env: str | None,
    temperature: float | None,
    max_tokens: int | None,
) -> dict[str, Any]:
    """The model flags, as a `models.default` override."""
    if base_url is not None and backend is None:
        backend = "openai"
    default_model = {
        "backend": backend,
        "model": model,
        "base_url": base_url,
        "api_key_env": api_key_env,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    if all(value is None for value in default_model.values()):
        return {}
    return {"models": {"default": default_model}}


def _run(work: Coroutine[Any, Any, T], engine: Any = None, saved: str = "") -> T:
    """Run a command's coroutine (inside one Ray session with --engine ray); then stop any
    in-process vLLM engine it started (its worker processes and GPU memory). Ctrl-C ends the
    command with exit code 130 and says where the finished work is (`saved`)."""
    try:
        with engine.session() if engine is not None else contextlib.nullcontext():
            return asyncio.run(work)
    except KeyboardInterrupt:
        where = f" {saved};" if saved else ""
        err.print(
            f"[yellow]Interrupted.[/]{where} run the same command again to continue.",
            soft_wrap=True,
        )
        raise typer.Exit(130) from None
    finally:
        if "aidsafe.models.vllm" in sys.modules:
            from aidsafe.models.vllm import shutdown_engines

            shutdown_engines()


def _engine(engine: str, ray_address: str | None, workers: int | None) -> Any:
    from aidsafe.runner import Engine

    if engine == "ray":
        from aidsafe.distributed import check_address, check_ray_available

        check_ray_available()
        check_address(ray_address)
        return Engine(address=ray_address, workers=workers)
    if engine != "local":
        raise UserError(f"--engine: expected local or ray, got {engine!r}")
    if ray_address is not None or workers is not None:
        raise UserError("--ray-address and --workers need --engine ray")
    return None


@app.command()
def dpo(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with finished AIDSAFE rows.")],
    config: ConfigOption = None,
    policies: Annotated[
        str | None, typer.Option(help="Policy set (default: the one the run was made with).")
    ] = None,
    limit: LimitOption = None,
    concurrency: ConcurrencyOption = None,
    backend: BackendOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    temperature: Annotated[float | None, typer.Option(help="Temperature for every role.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Max tokens per answer.")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Belief config changed: move old pairs aside.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Try the rows in dpo_failures.jsonl again.")
    ] = False,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
) -> None:
    """Make DPO pairs from an existing run's finished rows, without regenerating them."""
    from aidsafe.config import load_config
    from aidsafe.rundir import RunDirectory
    from aidsafe.runner import make_pairs

    run = RunDirectory(run_dir)
    manifest = run.manifest()
    if manifest is None:
        raise UserError(f"{run_dir}: not a run directory (no manifest.json)")
    overrides: dict[str, Any] = {
        "policies": policies or manifest.get("policy_set", {}).get("path"),
        "concurrency": concurrency,
        **_model_overrides(backend, model, base_url, api_key_env, temperature, max_tokens),
    }
    settings = load_config(config, overrides)
    ray_engine = _engine(engine, ray_address, workers)
    summary = _run(
        make_pairs(
            run,
            settings,
            limit=limit,
            force=force,
            retry_failed=retry_failed,
            console=err,
            show_progress=not quiet,
            engine=ray_engine,
        ),
        ray_engine,
        saved=f"finished pairs are saved in {run_dir}",
    )
    if summary.archived:
        err.print(f"Earlier pairs moved to {summary.archived}")
    print_pair_summary(summary)


def print_pair_summary(summary: Any) -> None:
    totals = summary.totals
    table = Table(title="DPO pairs (belief augmentation)", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("pairs / rejected this run", f"{summary.pairs_now} / {summary.rejected_now}")
    table.add_row("already finished earlier", str(summary.skipped))
    table.add_row("pairs / rejected in directory", f"{totals['done']} / {totals['failed']}")
    for reason, count in totals["failed_by_reason"].items():
        table.add_row(f"  rejected: {reason}", str(count))
    table.add_row("mean belief tries", f"{summary.mean_tries:.2f}")
    for role, tokens in totals["tokens_by_role"].items():
        table.add_row(
            f"  tokens: {role}",
            f"{tokens['input']:,} in / {tokens['output']:,} out ({tokens['calls']} calls)",
        )
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    out.print(table)
    out.print(
        f"Pairs in [bold]{escape(summary.out)}[/]: dpo.jsonl (TRL preference rows), "
        "dpo_failures.jsonl (prompts without a pair, with the reason)"
    )


def print_summary(summary: Any) -> None:
    totals = summary.totals
    table = Table(title="aidsafe run", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("rows in input (after --limit)", str(summary.total_rows))
    table.add_row("done / failed this run", f"{summary.done_now} / {summary.failed_now}")
    table.add_row("already finished earlier", str(summary.skipped))
    table.add_row("done / failed in directory", f"{totals['done']} / {totals['failed']}")
    for reason, count in totals["failed_by_reason"].items():
        table.add_row(f"  failed: {reason}", str(count))
    for role, tokens in totals["tokens_by_role"].items():
        table.add_row(
            f"  tokens: {role}",
            f"{tokens['input']:,} in / {tokens['output']:,} out ({tokens['calls']} calls)",
        )
    table.add_row("wall time", f"{summary.wall_s:.1f} s")
    out.print(table)
    out.print(
        f"Outputs in [bold]{escape(summary.out)}[/]: sft.jsonl (training rows), traces.jsonl "
        "(full records), failures.jsonl, manifest.json"
    )
    if totals["failed_by_reason"].get("endpoint_error"):
        out.print("Some rows hit endpoint errors; re-run with --retry-failed to try them again.")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    to: Annotated[
        str, typer.Option(help="parquet, hf (save_to_disk folder) or jsonl.")
    ] = "parquet",
    kind: Annotated[str, typer.Option("--format", help="sft or dpo.")] = "sft",
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write.")] = None,
) -> None:
    """Export a run's SFT rows or DPO pairs as a Hugging Face dataset."""
    from aidsafe.export import export_run

    if to not in ("parquet", "hf", "jsonl"):
        raise UserError(f"--to: expected parquet, hf or jsonl, got {to!r}")
    if kind not in ("sft", "dpo"):
        raise UserError(f"--format: expected sft or dpo, got {kind!r}")
    target, rows = export_run(run_dir, to, output, kind)  # type: ignore[arg-type]
    out.print(f"Wrote {rows} {kind.upper()} rows to {target}")


@app.command()
def judge(
    input: Annotated[
        str, typer.Argument(help="JSONL, CSV or Parquet file, saved dataset folder, or HF name.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    config: ConfigOption = None,
    policies: Annotated[str | None, typer.Option(help="Policy YAML file or set name.")] = None,
    prompt_field: Annotated[str, typer.Option(help="Column with the prompt.")] = "prompt",
    response_field: Annotated[
        str, typer.Option(help="Column with the completion to judge.")
    ] = "response",
    group_field: Annotated[
        str | None,
        typer.Option(help="Column naming the prompt a sample belongs to (default: the prompt)."),
    ] = None,
    id_field: Annotated[str | None, typer.Option(help="Column with a row id.")] = None,
    split: Annotated[str | None, typer.Option(help="Split of a HF dataset.")] = None,
    kind: Annotated[str | None, typer.Option(help="Judge kind: policy or guard.")] = None,
    view: Annotated[str | None, typer.Option(help="What is judged: full, cot or answer.")] = None,
    limit: LimitOption = None,
    concurrency: ConcurrencyOption = None,
    backend: BackendOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Judge config changed: move old judgments aside.")
    ] = False,
    quiet: QuietOption = False,
) -> None:
    """Label prompt/response pairs with the safety judge; report Safe@1, ConsSafe@K, Safe@K."""
    from aidsafe.config import load_config
    from aidsafe.inputs import PromptSource
    from aidsafe.rundir import RunDirectory
    from aidsafe.runner import judge_responses

    overrides: dict[str, Any] = {
        "policies": policies,
        "concurrency": concurrency,
        "judge": {"kind": kind, "view": view},
        "input": {"split": split},
        **_model_overrides(backend, model, base_url, api_key_env, None, None),
    }
    settings = load_config(config, overrides)
    source = PromptSource(
        input,
        prompt_field=prompt_field,
        id_field=id_field or "id",
        split=settings.input.split,
        id_field_required=id_field is not None,
        text_fields={response_field: "--response-field"},
        extra_fields=(group_field,) if group_field else (),
    )
    summary = _run(
        judge_responses(
            source,
            RunDirectory(out_dir),
            settings,
            group_field=group_field,
            limit=limit,
            force=force,
            console=err,
            show_progress=not quiet,
        ),
        saved=f"finished judgments are saved in {out_dir}",
    )
    print_judge_summary(summary)


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


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
            _rate(values["safe_at_1"]),
            _rate(values["cons_safe_at_k"]),
            _rate(values["safe_at_k"]),
            str(values["prompts"]),
        )
    out.print(table)
    out.print(
        f"{overall['samples_judged']} samples judged (K from {overall['k_min']} to "
        f"{overall['k_max']} per prompt); {overall['samples_unjudged']} unjudged, left out of "
        f"the metrics {metrics['unjudged_by_reason'] or ''}"
    )
    out.print(
        f"This run: {summary.judged_now} judged, {summary.unjudged_now} unjudged, "
        f"{summary.skipped} judged earlier. Outputs in [bold]{escape(summary.out)}[/]: "
        "judgments.jsonl, summary.json"
    )


@app.command()
def grade(
    input: Annotated[
        str,
        typer.Argument(help="A run directory, or a dataset in AIDSAFE's released layout."),
    ],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output directory (datasets only).")
    ] = None,
    config: ConfigOption = None,
    policies: Annotated[str | None, typer.Option(help="Policy YAML file or set name.")] = None,
    prompt_field: Annotated[str, typer.Option(help="Dataset column with the prompt.")] = "prompt",
    cot_field: Annotated[
        str | None,
        typer.Option(help="Dataset column with the CoT (default: refined_thoughts or thoughts)."),
    ] = None,
    response_field: Annotated[
        str, typer.Option(help="Dataset column with the response.")
    ] = "response",
    id_field: Annotated[str | None, typer.Option(help="Dataset column with a row id.")] = None,
    split: Annotated[str | None, typer.Option(help="Split of a HF dataset.")] = None,
    limit: LimitOption = None,
    concurrency: ConcurrencyOption = None,
    backend: BackendOption = None,
    model: ModelOption = None,
    base_url: BaseUrlOption = None,
    api_key_env: ApiKeyEnvOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="Grader changed: move old grades aside.")
    ] = False,
) -> None:
    """Score rows 1-5 on the paper's six CoT metrics with the grader model."""
    from aidsafe.config import load_config
    from aidsafe.grading import (
        dataset_items,
        grade_items,
        is_run_directory,
        pick_cot_field,
        run_items,
    )
    from aidsafe.inputs import PromptSource
    from aidsafe.rundir import RunDirectory

    overrides: dict[str, Any] = {
        "policies": policies,
        "concurrency": concurrency,
        "input": {"split": split},
        **_model_overrides(backend, model, base_url, api_key_env, None, None),
    }
    if is_run_directory(Path(input)):
        run = RunDirectory(input)
        made_with = (run.manifest() or {}).get("policy_set", {}).get("path")
        overrides["policies"] = policies or made_with
        settings = load_config(config, overrides)
        items = run_items(run)
        target = RunDirectory(out_dir) if out_dir else run
    else:
        if out_dir is None:
            raise UserError(f"{input}: not a run directory; give --out to grade a dataset")
        settings = load_config(config, overrides)
        probe = PromptSource(input, prompt_field=prompt_field, split=settings.input.split)
        cot = cot_field or pick_cot_field(probe)
        source = PromptSource(
            input,
            prompt_field=prompt_field,
            id_field=id_field or "id",
            split=settings.input.split,
            id_field_required=id_field is not None,
            text_fields={cot: "--cot-field", response_field: "--response-field"},
        )
        source.check()
        items = dataset_items(source, cot, response_field)
        target = RunDirectory(out_dir)
    summary = _run(
        grade_items(items, target, settings, force=force, limit=limit),
        saved=f"finished grades are saved in {target.root}",
    )
    table = Table(title=f"grades ({summary.summary['grader']})")
    for column in ("metric", "mean", "95% CI", "graded", "unparseable"):
        table.add_column(column)
    for metric, stats in summary.summary["metrics"].items():
        ci = stats["ci95"]
        table.add_row(
            metric,
            _rate(stats["mean"]),
            f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "n/a",
            str(stats["n_graded"]),
            str(stats["n_unparseable"]),
        )
    out.print(table)
    out.print(
        f"This run: {summary.graded_now} rows graded, {summary.skipped} graded earlier. "
        f"Grades in {escape(summary.out)}: grades.jsonl, grades_summary.json"
    )


@app.command()
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Graded run directories; the first is the reference.")
    ],
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the numbers as JSON.")
    ] = None,
) -> None:
    """Compare graded runs: metrics with CIs, paired differences and win rates, cost."""
    import json as jsonlib

    from aidsafe.grading import METRICS
    from aidsafe.report import comparison, fmt, html_report, load_run, metric_text

    if len(runs) < 2:
        raise UserError("compare needs at least two run directories")
    stats = [load_run(path) for path in runs]
    data = comparison(stats)
    table = Table(title=f"comparison (differences and win rates against {stats[0].name})")
    table.add_column("")
    for run in stats:
        table.add_column(f"{run.name}\n({run.recipe})")

    for metric in METRICS:
        table.add_row(metric, *("\n".join(metric_text(run, data, metric)) for run in stats))
    table.add_row("rows", *(str(run.rows) for run in stats))
    table.add_row("wall time (s)", *(fmt(run.wall_s, 1) for run in stats))
    for role in sorted({role for run in stats for role in run.tokens_per_row}):
        table.add_row(
            f"tokens/row: {role}",
            *(
                fmt(run.tokens_per_row.get(role), 0) if role in run.tokens_per_row else "-"
                for run in stats
            ),
        )
    table.add_row(
        "mean rounds", *(fmt(sum(r.rounds) / len(r.rounds)) if r.rounds else "-" for r in stats)
    )
    table.add_row("ended by agreement", *(fmt(r.agreed_share) for r in stats))
    for reason in ("repetitive", "redundant", "deceptive", "policy_inconsistent"):
        table.add_row(
            f"removed/row: {reason}",
            *(fmt(r.removed_per_row.get(reason)) if r.rounds else "-" for r in stats),
        )
    out.print(table)
    if html_out is not None:
        html_out.write_text(html_report(stats, data), encoding="utf-8")
        out.print(f"HTML report: {escape(str(html_out))}")
    if json_out is not None:
        json_out.write_text(jsonlib.dumps(data, indent=2), encoding="utf-8")


@app.command("filter")
def filter_rows(
    run_dir: Annotated[Path, typer.Argument(help="A graded run directory.")],
    minimum: Annotated[float, typer.Option("--min", help="Lowest score a kept row may have.")],
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="Metric to check (repeat; default: all).")
    ] = None,
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write.")] = None,
) -> None:
    """Keep the SFT rows whose grades reach --min (on every chosen metric)."""
    from aidsafe.grading import METRICS, filter_run
    from aidsafe.rundir import RunDirectory

    target, kept, dropped = filter_run(
        RunDirectory(run_dir), minimum, metric or list(METRICS), output
    )
    out.print(f"Kept {kept} rows in {escape(str(target))}; dropped {sum(dropped.values())}")
    for reason, count in dropped.items():
        out.print(f"  dropped {reason}: {count}")


@policies_app.command("validate")
def policies_validate(
    path: Annotated[str, typer.Argument(help="Policy YAML file or shipped set name.")],
) -> None:
    """Check a policy file against the schema; print its name, size and hash."""
    from aidsafe.policies import load_policies

    policy_set = load_policies(path)
    out.print(
        f"[green]valid[/]: {escape(policy_set.name)} version {escape(policy_set.version)}, "
        f"{len(policy_set.policies)} policies ({', '.join(policy_set.ids)}), "
        f"sha256 {policy_set.sha256}"
    )


@policies_app.command("show")
def policies_show(
    path: Annotated[str, typer.Argument(help="Policy YAML file or shipped set name.")],
    as_prompt: Annotated[
        bool, typer.Option("--as-prompt", help="Print the exact text every agent receives.")
    ] = False,
) -> None:
    """Display a policy set as a table, or as the text agents see."""
    from aidsafe.policies import load_policies

    policy_set = load_policies(path)
    if as_prompt:
        sys.stdout.write(policy_set.render())
        return
    table = Table(title=f"{policy_set.name} v{policy_set.version}", show_lines=True)
    for column in ("id", "title", "not allowed", "allowed"):
        table.add_column(column)
    for policy in policy_set.policies:
        table.add_row(
            policy.id,
            f"{policy.title}\n[dim]{escape(policy.description)}[/]",
            "\n".join(f"- {item}" for item in policy.disallowed),
            "\n".join(f"- {item}" for item in policy.allowed),
        )
    out.print(table)
    out.print(f"sha256 {policy_set.sha256}")


@app.command()
def graph(
    config: ConfigOption = None,
    which: Annotated[
        str, typer.Option("--which", help="aidsafe, belief (DPO pairs), baseline, unsafechain.")
    ] = "aidsafe",
) -> None:
    """Print a recipe graph as Mermaid."""
    from aidsafe.config import load_config
    from aidsafe.graph import mermaid_diagram

    if which not in ("aidsafe", "belief", "baseline", "unsafechain"):
        raise UserError(
            f"--which: expected aidsafe, belief, baseline or unsafechain, got {which!r}"
        )
    sys.stdout.write(mermaid_diagram(load_config(config), which))


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective configuration (file + AIDSAFE_* env + defaults) as YAML."""
    from aidsafe.config import load_config

    settings = load_config(config)
    resolved = settings.model_dump(mode="json")
    resolved["resolved_models"] = {
        role: settings.model_for(role).model_dump(mode="json") for role in settings.roles()
    }
    sys.stdout.write(yaml.safe_dump(resolved, sort_keys=False))


def main() -> None:
    try:
        app()
    except UserError as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        sys.exit(2)
