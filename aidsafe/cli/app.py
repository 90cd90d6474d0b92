"""The `aidsafe` commands: options and thin calls into tasks and the pipeline. Bad input ends with
one readable line and exit code 2; a run that had to stop, with one line and exit code 1."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from aidsafe.cli.render import (
    err,
    out,
    print_budget,
    print_grades,
    print_judge_comparison,
    print_judge_summary,
    print_prepare,
    print_preview,
    print_recipes,
    print_split,
    print_stage,
    print_upload,
)
from aidsafe.errors import RunFailed, UserError
from aidsafe.jsonl import DamagedLine

T = TypeVar("T")

app = typer.Typer(
    help="Generate policy-embedded chain-of-thought safety data with LLM agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
policies_app = typer.Typer(help="Check and display policy sets.", no_args_is_help=True)
app.add_typer(policies_app, name="policies")

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
MaxCostOption = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        min=0,
        help="Budget in USD for the run directory (needs model prices): no new row starts "
        "once it would be passed; exit code 3.",
    ),
]
TokenBudgetOption = Annotated[
    int | None,
    typer.Option("--token-budget", min=1, help="Budget in tokens (input + output), as --max-cost."),
]
RetryReasonOption = Annotated[
    list[str] | None,
    typer.Option(
        "--retry-reason",
        help="With --retry-failed: only the rows that failed with this reason (repeatable).",
    ),
]
LicenseOption = Annotated[
    str, typer.Option(help="The dataset card's license (a Hub license id, e.g. cc-by-4.0).")
]
BUDGET_REACHED = 3  # exit code: a budget stopped the run; raise it and run again to continue
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
    retry_reason: RetryReasonOption = None,
    select: Annotated[
        int | None,
        typer.Option(min=1, help="Also write sft_selected.jsonl: a balanced subset of N rows."),
    ] = None,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
    max_cost: MaxCostOption = None,
    token_budget: TokenBudgetOption = None,
    preview: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Run only a seeded sample of N rows (5 is a good start), show each, and project "
            "tokens, time and cost for the whole input; the rows stay part of the run.",
        ),
    ] = None,
) -> None:
    """Run a recipe over prompts and write traces, SFT rows, failures and a manifest."""
    from aidsafe.inputs import PromptSource
    from aidsafe.recipes.registry import load_config
    from aidsafe.run.directory import RunDirectory
    from aidsafe.run.pipeline import generate as run_generate

    overrides: dict[str, Any] = {
        "recipe": recipe,
        "policies": policies,
        "concurrency": concurrency,
        "input": {"prompt_field": prompt_field, "id_field": id_field, "split": split},
        "max_cost": max_cost,
        "token_budget": token_budget,
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
    ray_engine = _engine(engine, ray_address, workers)
    result = _run(
        run_generate(
            source,
            RunDirectory(out_dir),
            settings,
            limit=limit,
            force=force,
            retry_failed=_retry(retry_failed, retry_reason),
            console=err,
            show_progress=not quiet,
            select=select,
            engine=ray_engine,
            preview=preview,
        ),
        ray_engine,
        saved=f"finished rows are saved in {out_dir}",
    )
    if result.preview is not None:
        from aidsafe.recipes.registry import steps
        from aidsafe.tasks.preview import preview_report

        shown = steps(settings.recipe)[0]
        print_preview(*preview_report(RunDirectory(out_dir), shown, result.preview))
    for stage in result.stages:
        if stage.archived:
            err.print(f"Earlier outputs moved to {stage.archived}")
        print_stage(stage)
        if stage is result.stages[0] and result.selected is not None:
            out.print(f"Selected {result.selected[0]} rows into {escape(result.selected[1])}")
    if result.stages[-1].budget_reached:
        raise typer.Exit(BUDGET_REACHED)


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
    except RunFailed as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(1) from None
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
        if "aidsafe.models.local" in sys.modules:
            from aidsafe.models.local import close_engines

            close_engines()


def _retry(retry_failed: bool, reasons: list[str] | None) -> bool | frozenset[str]:
    """--retry-failed, or only the failure reasons of --retry-reason."""
    from aidsafe.records import Reason

    if not reasons:
        return retry_failed
    if not retry_failed:
        raise UserError("--retry-reason needs --retry-failed")
    known = {reason.value for reason in Reason} - {Reason.DUPLICATE_ID.value}
    unknown = sorted(set(reasons) - known)
    if unknown:
        raise UserError(
            f"--retry-reason {unknown[0]}: not a failure reason; expected one of "
            f"{', '.join(sorted(known))}"
        )
    return frozenset(reasons)


def _engine(engine: str, ray_address: str | None, workers: int | None) -> Any:
    from aidsafe.run.engine import Engine

    if engine == "ray":
        Engine.check(ray_address)
        return Engine(address=ray_address, workers=workers)
    if engine != "local":
        raise UserError(f"--engine: expected local or ray, got {engine!r}")
    if ray_address is not None or workers is not None:
        raise UserError("--ray-address and --workers need --engine ray")
    return None


@app.command()
def prepare(
    inputs: Annotated[
        list[str],
        typer.Argument(
            help="Prompt sources: JSONL, CSV or Parquet files, saved dataset folders or HF "
            "names; NAME=INPUT tags the rows with NAME (default: the file or dataset name)."
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    prompt_field: Annotated[
        str, typer.Option(help="Column with the prompt in every input.")
    ] = "prompt",
    id_field: Annotated[
        str, typer.Option(help="Column with the row id (default: id, else a content hash).")
    ] = "id",
    split: Annotated[str, typer.Option(help="Split of a HF dataset.")] = "train",
    near_threshold: Annotated[
        float,
        typer.Option(help="Near duplicates: Jaccard similarity at or above this."),
    ] = 0.7,
    shingle: Annotated[int, typer.Option(help="Near duplicates: compare word 1- to N-grams.")] = 2,
    against: Annotated[
        list[str] | None,
        typer.Option(
            help="Eval set to decontaminate against, as FILE:FIELD or DATASET:FIELD "
            "(field default: prompt); repeat for more."
        ),
    ] = None,
    against_split: Annotated[
        str, typer.Option(help="Split of an eval set given as a HF dataset.")
    ] = "test",
    ngram: Annotated[
        int, typer.Option(help="Decontamination: a shared run of N words is a match.")
    ] = 13,
    against_threshold: Annotated[
        float,
        typer.Option(
            help="Decontamination: Jaccard similarity with an eval item at or above this."
        ),
    ] = 0.7,
    tfidf: Annotated[
        bool, typer.Option("--tfidf", help="Decontamination: also TF-IDF cosine (scikit-learn).")
    ] = False,
    tfidf_threshold: Annotated[
        float, typer.Option(help="With --tfidf: cosine similarity at or above this.")
    ] = 0.7,
    embeddings_url: Annotated[
        str | None,
        typer.Option(
            help="Decontamination: also embedding cosine, from this OpenAI-compatible endpoint "
            "(e.g. http://localhost:8000/v1)."
        ),
    ] = None,
    embeddings_model: Annotated[
        str, typer.Option(help="With --embeddings-url: the embedding model's name.")
    ] = "text-embedding-3-small",
    embeddings_key_env: Annotated[
        str, typer.Option(help="With --embeddings-url: the variable holding its API key.")
    ] = "OPENAI_API_KEY",
    embeddings_local: Annotated[
        str | None,
        typer.Option(
            help="Embeddings from a local sentence-transformers model instead (a folder, or a "
            "name in the Hugging Face cache); needs aidsafe[embeddings]."
        ),
    ] = None,
    embedding_threshold: Annotated[
        float,
        typer.Option(help="With embeddings: an eval item this close (cosine) is a match."),
    ] = 0.8,
    embedding_dedup: Annotated[
        bool,
        typer.Option(
            "--embedding-dedup",
            help="With embeddings: also drop pool prompts close to a kept one (all pairs).",
        ),
    ] = False,
    embedding_dedup_threshold: Annotated[
        float,
        typer.Option(help="With --embedding-dedup: cosine similarity at or above this."),
    ] = 0.9,
    category_field: Annotated[
        list[str] | None,
        typer.Option(
            help="Column with each prompt's categories (text, a list, or a mapping): FIELD "
            "for every input, SOURCE=FIELD for one (repeat for more)."
        ),
    ] = None,
    select: Annotated[
        int | None,
        typer.Option(help="Keep N prompts, balanced over source x category (as generate)."),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="With --select: which prompts of a bucket are kept.")
    ] = None,
    classify: Annotated[
        bool,
        typer.Option(
            "--classify",
            help="Tag each prompt with the policies it touches (the classifier role; resumable).",
        ),
    ] = False,
    contrast: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Write K benign look-alikes of each prompt that touches a policy (the "
            "contrast role; needs --classify or --category-field).",
        ),
    ] = None,
    config: ConfigOption = None,
    policies: Annotated[
        str | None,
        typer.Option(help="With --classify/--contrast: policy YAML file or shipped set name."),
    ] = None,
    concurrency: ConcurrencyOption = None,
    quiet: QuietOption = False,
) -> None:
    """Clean a prompt pool before generation: drop exact and near duplicates and prompts found
    in eval sets; write prompts.jsonl for `generate` and a report of every dropped prompt."""
    from aidsafe.recipes.registry import load_config
    from aidsafe.tasks.prepare import EvalSpec, InputSpec, PrepareSettings
    from aidsafe.tasks.prepare import prepare as prepare_pool

    roles = None
    if classify or contrast is not None:
        roles = load_config(config, {"policies": policies, "concurrency": concurrency})
    elif config is not None or policies is not None:
        raise UserError("--config and --policies of prepare need --classify or --contrast")

    settings = PrepareSettings(
        near_threshold=near_threshold,
        shingle=shingle,
        prompt_field=prompt_field,
        id_field=id_field,
        split=split,
        against=tuple(EvalSpec.parse(text) for text in against or ()),
        against_split=against_split,
        ngram=ngram,
        against_threshold=against_threshold,
        tfidf=tfidf,
        tfidf_threshold=tfidf_threshold,
        embeddings_url=embeddings_url,
        embeddings_model=embeddings_model,
        embeddings_key_env=embeddings_key_env,
        embeddings_local=embeddings_local,
        embedding_threshold=embedding_threshold,
        embedding_dedup=embedding_dedup,
        embedding_dedup_threshold=embedding_dedup_threshold,
        category_field=tuple(category_field or ()),
        select=select,
        seed=seed,
        config=roles,
        classify=classify,
        contrast=contrast,
        show_progress=not quiet,
    )
    summary = prepare_pool([InputSpec.parse(text) for text in inputs], out_dir, settings)
    print_prepare(summary)


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
    retry_reason: RetryReasonOption = None,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
    max_cost: MaxCostOption = None,
    token_budget: TokenBudgetOption = None,
) -> None:
    """Make DPO pairs from an existing run's finished rows, without regenerating them."""
    from aidsafe.recipes.registry import load_config
    from aidsafe.run.directory import RunDirectory
    from aidsafe.run.pipeline import make_pairs, policies_of

    run = RunDirectory(run_dir)
    if run.manifest() is None:
        raise UserError(f"{run_dir}: not a run directory (no manifest.json)")
    overrides: dict[str, Any] = {
        "policies": policies or policies_of(run),
        "concurrency": concurrency,
        "max_cost": max_cost,
        "token_budget": token_budget,
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
            retry_failed=_retry(retry_failed, retry_reason),
            console=err,
            show_progress=not quiet,
            engine=ray_engine,
        ),
        ray_engine,
        saved=f"finished pairs are saved in {run_dir}",
    )
    if summary.archived:
        err.print(f"Earlier pairs moved to {summary.archived}")
    print_stage(summary)
    if summary.budget_reached:
        raise typer.Exit(BUDGET_REACHED)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    to: Annotated[
        str,
        typer.Option(
            help="parquet, hf (save_to_disk folder and card), jsonl, or inspect (the held-out "
            "prompts as an Inspect task)."
        ),
    ] = "parquet",
    kind: Annotated[str, typer.Option("--format", help="sft or dpo.")] = "sft",
    output: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write.")] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="The run's config: its API keys are never exported."),
    ] = None,
    license: LicenseOption = "other",
) -> None:
    """Export a run's SFT rows or DPO pairs as a Hugging Face dataset (refused if a row holds a
    local absolute path or an API key); `--to hf` also writes the dataset card."""
    from aidsafe.config import load_config
    from aidsafe.run.directory import RunDirectory
    from aidsafe.tasks.export import export_run, secrets_of
    from aidsafe.tasks.hub import dataset_card

    if to == "inspect":
        from aidsafe.tasks.inspect_task import export_inspect

        target, samples = export_inspect(run_dir, output or run_dir / "inspect", config)
        out.print(
            f"Wrote {samples} held-out prompts and task.py to {escape(str(target))}; evaluate "
            f"with: inspect eval {escape(str(target / 'task.py'))} --model PROVIDER/MODEL"
        )
        return
    if to not in ("parquet", "hf", "jsonl"):
        raise UserError(f"--to: expected parquet, hf, jsonl or inspect, got {to!r}")
    if kind not in ("sft", "dpo"):
        raise UserError(f"--format: expected sft or dpo, got {kind!r}")
    secrets = secrets_of(load_config(config))
    target, rows = export_run(run_dir, to, output, kind, secrets)  # type: ignore[arg-type]
    out.print(f"Wrote {rows} {kind.upper()} rows to {target}")
    if to == "hf":
        card = dataset_card(RunDirectory(run_dir), [kind], license)
        (target / "README.md").write_text(card, encoding="utf-8")
        out.print(f"Wrote the dataset card to {target / 'README.md'}")


@app.command()
def split(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    eval_fraction: Annotated[
        float, typer.Option(help="Share of the prompts held out for evaluation (0 to 1).")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Which prompts are held out.")] = 0,
) -> None:
    """Hold out prompts for evaluation (stratified by source and category); export and push
    then leave them out of every training file."""
    from aidsafe.tasks.split import split_run

    report = split_run(run_dir, eval_fraction, seed)
    print_split(report, run_dir)


@app.command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    repo: Annotated[str, typer.Option(help="The Hub dataset repository, ORG/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Make the repository private.")] = (
        False
    ),
    kind: Annotated[
        list[str] | None,
        typer.Option("--format", help="sft, dpo or traces (repeatable; default: every one)."),
    ] = None,
    license: LicenseOption = "other",
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="The run's config: its API keys are never uploaded."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build the upload and list it; send nothing.")
    ] = False,
) -> None:
    """Upload a run to the Hugging Face Hub as a dataset: data files and a generated card."""
    from aidsafe.config import load_config
    from aidsafe.run.directory import HUB, RunDirectory
    from aidsafe.tasks.export import secrets_of
    from aidsafe.tasks.hub import FILES, hub_folder
    from aidsafe.tasks.hub import push as push_folder

    chosen = kind or list(FILES)
    unknown = [name for name in chosen if name not in FILES]
    if unknown:
        raise UserError(f"--format {unknown[0]}: expected {', '.join(FILES)}")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"--repo {repo}: expected ORG/NAME")
    target = RunDirectory(run_dir).path(HUB)
    folder = hub_folder(run_dir, target, chosen, license, secrets_of(load_config(config)))
    print_upload(folder, repo, dry_run)
    if not dry_run:
        out.print(f"Uploaded to {push_folder(folder, repo, private)}")


@app.command()
def judge(
    input: Annotated[
        str, typer.Argument(help="JSONL, CSV or Parquet file, saved dataset folder, or HF name.")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    config: ConfigOption = None,
    policies: Annotated[str | None, typer.Option(help="Policy YAML file or set name.")] = None,
    prompt_field: Annotated[
        str | None, typer.Option(help="Column with the prompt (default: input.prompt_field).")
    ] = None,
    response_field: Annotated[
        str, typer.Option(help="Column with the completion to judge.")
    ] = "response",
    group_field: Annotated[
        str | None,
        typer.Option(help="Column naming the prompt a sample belongs to (default: the prompt)."),
    ] = None,
    label_field: Annotated[
        str | None,
        typer.Option(
            help="Column with a human label (safe/unsafe): also report the judge's agreement."
        ),
    ] = None,
    label_categories_field: Annotated[
        str | None,
        typer.Option(
            help="With --label-field: column naming the policies an unsafe label breaks (text, "
            "a list or a mapping): also report agreement per policy."
        ),
    ] = None,
    id_field: Annotated[
        str | None, typer.Option(help="Column with a row id (default: input.id_field).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split of a HF dataset.")] = None,
    kind: Annotated[str | None, typer.Option(help="Judge kind: policy or guard.")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Guard judges: unsafe when P(unsafe) from the token log-probabilities is at "
            "least this (judge.threshold)."
        ),
    ] = None,
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
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
    max_cost: MaxCostOption = None,
    token_budget: TokenBudgetOption = None,
) -> None:
    """Label prompt/response pairs with the safety judge; report Safe@1, ConsSafe@K, Safe@K."""
    from aidsafe.recipes.registry import load_config
    from aidsafe.run.directory import RunDirectory
    from aidsafe.tasks.judging import judge_responses

    overrides: dict[str, Any] = {
        "policies": policies,
        "concurrency": concurrency,
        "judge": {"kind": kind, "view": view, "threshold": threshold},
        "input": {"split": split, "prompt_field": prompt_field, "id_field": id_field},
        "max_cost": max_cost,
        "token_budget": token_budget,
        **_model_overrides(backend, model, base_url, api_key_env, None, None),
    }
    ray_engine = _engine(engine, ray_address, workers)
    settings = load_config(config, overrides)
    extra = {
        group_field or "": "--group-field",
        label_field or "": "--label-field",
        label_categories_field or "": "--label-categories-field",
    }
    source = _source(input, settings, {response_field: "--response-field"}, extra)
    summary = _run(
        judge_responses(
            source,
            RunDirectory(out_dir),
            settings,
            response_field=response_field,
            group_field=group_field,
            label_field=label_field,
            label_categories_field=label_categories_field,
            limit=limit,
            force=force,
            console=err,
            show_progress=not quiet,
            engine=ray_engine,
        ),
        ray_engine,
        saved=f"finished judgments are saved in {out_dir}",
    )
    print_judge_summary(summary)
    print_budget(summary.stage)
    if summary.stage.budget_reached:
        raise typer.Exit(BUDGET_REACHED)


def _source(
    spec: str, settings: Any, text_fields: dict[str, str], extra: dict[str, str] | None = None
) -> Any:
    """A dataset read with the config's input fields (flags override them); `extra`: more
    columns carried with each row (any value), each with the option that names it."""
    from aidsafe.inputs import PromptSource

    extra = {field: option for field, option in (extra or {}).items() if field}
    return PromptSource(
        spec,
        prompt_field=settings.input.prompt_field,
        id_field=settings.input.id_field,
        split=settings.input.split,
        id_field_required="id_field" in settings.input.model_fields_set,
        text_fields=text_fields,
        extra_fields=tuple(extra),
        extra_option=" or ".join(dict.fromkeys(extra.values())) or "its option",
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
    prompt_field: Annotated[
        str | None,
        typer.Option(help="Dataset column with the prompt (default: input.prompt_field)."),
    ] = None,
    cot_field: Annotated[
        str | None,
        typer.Option(help="Dataset column with the CoT (default: refined_thoughts or thoughts)."),
    ] = None,
    response_field: Annotated[
        str, typer.Option(help="Dataset column with the response.")
    ] = "response",
    id_field: Annotated[
        str | None, typer.Option(help="Dataset column with a row id (default: input.id_field).")
    ] = None,
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
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
    max_cost: MaxCostOption = None,
    token_budget: TokenBudgetOption = None,
) -> None:
    """Score rows 1-5 on the paper's six CoT metrics with the grader model."""
    from aidsafe.recipes.registry import load_config
    from aidsafe.run.directory import RunDirectory
    from aidsafe.run.pipeline import policies_of
    from aidsafe.tasks.grading import (
        dataset_items,
        grade_items,
        is_run_directory,
        pick_cot_field,
        run_items,
    )

    overrides: dict[str, Any] = {
        "policies": policies,
        "concurrency": concurrency,
        "input": {"split": split, "prompt_field": prompt_field, "id_field": id_field},
        "max_cost": max_cost,
        "token_budget": token_budget,
        **_model_overrides(backend, model, base_url, api_key_env, None, None),
    }
    ray_engine = _engine(engine, ray_address, workers)
    if is_run_directory(Path(input)):
        run = RunDirectory(input)
        overrides["policies"] = policies or policies_of(run)
        settings = load_config(config, overrides)
        items = run_items(run)
        target = RunDirectory(out_dir) if out_dir else run
        # the rows graded are the run's: its fingerprint, not the spelling of its path
        described: dict[str, Any] = {"rows_of": (run.manifest() or {}).get("fingerprint")}
        recorded = None
    else:
        if out_dir is None:
            raise UserError(f"{input}: not a run directory; give --out to grade a dataset")
        settings = load_config(config, overrides)
        cot = cot_field or pick_cot_field(_source(input, settings, {}))
        source = _source(input, settings, {cot: "--cot-field", response_field: "--response-field"})
        source.check()
        items = dataset_items(source, cot, response_field)
        target = RunDirectory(out_dir)
        described = source.describe() | {"fields": [cot, response_field]}
        recorded = source.provenance()
    summary = _run(
        grade_items(
            items,
            target,
            settings,
            source=described,
            input=recorded,
            force=force,
            limit=limit,
            console=err,
            show_progress=not quiet,
            engine=ray_engine,
        ),
        ray_engine,
        saved=f"finished grades are saved in {target.root}",
    )
    if summary.stage.archived:
        err.print(f"Earlier grades moved to {summary.stage.archived}")
    print_grades(summary)
    print_budget(summary.stage)
    if summary.stage.budget_reached:
        raise typer.Exit(BUDGET_REACHED)


@app.command()
def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Graded run directories, or `judge` output directories; the first is the "
            "reference."
        ),
    ],
    html_out: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained HTML report.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the numbers as JSON.")
    ] = None,
) -> None:
    """Compare graded runs (metrics with CIs, paired differences and win rates, cost), or judge
    runs over the same rows (agreement with the labels, and with the first judge)."""
    import json as jsonlib

    from aidsafe.agents.grader import METRICS
    from aidsafe.schemas import REMOVAL_REASONS
    from aidsafe.tasks.judging import compare_judges, is_judge_run
    from aidsafe.tasks.report import (
        comparison,
        fmt,
        html_report,
        judge_report_html,
        load_run,
        metric_text,
    )

    if len(runs) < 2:
        raise UserError("compare needs at least two run directories")
    judges = [is_judge_run(path) for path in runs]
    if any(judges):
        if not all(judges):
            other = runs[judges.index(False)]
            raise UserError(f"{other}: not a judge run; compare judge runs with judge runs")
        compared = compare_judges(runs)
        print_judge_comparison(compared)
        if html_out is not None:
            html_out.write_text(judge_report_html(compared), encoding="utf-8")
            out.print(f"HTML report: {escape(str(html_out))}")
        if json_out is not None:
            json_out.write_text(jsonlib.dumps(compared, indent=2), encoding="utf-8")
        return
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
    for reason in REMOVAL_REASONS:
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


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (any recipe, judge or grade).")],
    output: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write (default: DIR/view.html).")
    ] = None,
    open_page: Annotated[
        bool, typer.Option("--open", help="Open the page in the default web browser.")
    ] = False,
) -> None:
    """Write one self-contained HTML page to read a run: rows, filters, search, charts."""
    import webbrowser

    from aidsafe.tasks.view import build_view

    result = build_view(run_dir, output)
    out.print(
        f"Wrote {escape(str(result.path))}: {result.rows} rows, "
        f"{result.bytes / 1e6:.2f} MB ({result.bytes_per_row:,.0f} bytes per row)"
    )
    if open_page:
        webbrowser.open(result.path.resolve().as_uri())


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
    from aidsafe.agents.grader import METRICS
    from aidsafe.run.directory import RunDirectory
    from aidsafe.tasks.filtering import filter_run

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
    which: Annotated[
        str | None,
        typer.Option(
            "--which",
            help="The recipe whose graph to print (default: the default "
            "recipe; `aidsafe recipes` lists them).",
        ),
    ] = None,
) -> None:
    """Print a recipe's graph as Mermaid."""
    from aidsafe.recipes.registry import DEFAULT, mermaid_diagram

    sys.stdout.write(mermaid_diagram(which or DEFAULT))


@app.command()
def recipes() -> None:
    """List the recipes and chains, with the roles each calls."""
    from aidsafe.recipes.registry import CHAINS, RECIPES

    print_recipes(RECIPES, CHAINS)


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective configuration (file + AIDSAFE_* env + defaults) as YAML, with the
    model each role of the configured recipe resolves to."""
    from aidsafe.recipes.registry import load_config, steps

    settings = load_config(config)
    resolved = settings.model_dump(mode="json")
    resolved["resolved_models"] = {
        name: settings.model_for(name, role.temperature).model_dump(mode="json")
        for step in steps(settings.recipe)
        for name, role in step.roles(settings).items()
    }
    sys.stdout.write(yaml.safe_dump(resolved, sort_keys=False))


@app.command()
def repair(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with a damaged ledger line.")],
) -> None:
    """Move damaged ledger lines into quarantine files and rebuild the rows derived from them."""
    from aidsafe.run.directory import RunDirectory

    run = RunDirectory(run_dir)
    if run.manifest() is None:
        raise UserError(f"{run_dir}: not a run directory (no manifest.json)")
    run.lock()
    try:
        moved = run.repair()
    finally:
        run.close()
    for name, count in moved.items():
        quarantine = name.removesuffix(".jsonl") + ".quarantine.jsonl"
        out.print(f"{name}: moved {count} damaged line(s) to {quarantine}")
    if not moved:
        out.print("No damaged line found.")
    out.print("Run the same command again: rows whose lines were moved are done again.")


def main() -> None:
    try:
        app()
    except (UserError, DamagedLine) as error:
        err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        sys.exit(2)
