"""Sharing a run on the Hugging Face Hub: a dataset card generated from the run (what made the
data, with what models and policies, what came of it, how to load and train on it, whom to
cite), a folder in the Hub's dataset layout, and `aidsafe push`, which uploads it with
huggingface_hub. Every file is checked like an export first: no local absolute path, no
configured secret leaves this machine."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aidsafe.errors import RunFailed, UserError
from aidsafe.jsonl import read_jsonl, write_atomic
from aidsafe.policies import load_policies
from aidsafe.recipes import registry
from aidsafe.run.directory import GRADES_SUMMARY, JUDGE_SUMMARY, RunDirectory
from aidsafe.run.pipeline import policies_of
from aidsafe.tasks.export import check_shareable, training_rows
from aidsafe.tasks.split import held_out

# What a Hub repository of a run holds: config name -> (ledger in the run, file in the repo).
FILES = {
    "sft": ("sft.jsonl", "data/sft.parquet"),
    "dpo": ("dpo.jsonl", "data/dpo.parquet"),
    "traces": ("traces.jsonl", "data/traces.jsonl"),
}
TRAINERS = {"sft": "SFTTrainer", "dpo": "DPOTrainer"}


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return name
    return "100K<n<1M" if rows < 1_000_000 else "n>1M"


def _deliberation(run: RunDirectory) -> dict[str, Any]:
    """Deliberation and refiner figures of a policy-CoT run, from its SFT rows' metadata."""
    turns: list[int] = []
    agreed = 0
    removed: Counter[str] = Counter()
    for row in read_jsonl(run.path("sft.jsonl")):
        meta = row.get("metadata", {})
        if "deliberation_turns" not in meta:
            return {}
        turns.append(meta["deliberation_turns"])
        agreed += bool(meta.get("agreed"))
        removed.update({k: v for k, v in meta.get("removed_by_reason", {}).items() if v})
    if not turns:
        return {}
    return {
        "rows": len(turns),
        "mean_turns": round(sum(turns) / len(turns), 2),
        "agreed_share": round(agreed / len(turns), 3),
        "thoughts_removed_by_reason": dict(sorted(removed.items())),
    }


def dataset_card(run: RunDirectory, configs: list[str], license: str) -> str:
    """The README.md of the run's dataset on the Hub: YAML front matter the Hub reads (license,
    task categories, a config per data file, tags), then the run described from its manifest."""
    manifest = run.manifest()
    if manifest is None:
        raise UserError(f"{run.root}: not a run directory (no manifest.json)")
    recipe = registry.RECIPES.get(str(manifest.get("recipe")))
    held = held_out(run)  # not shared: the rows counted are those uploaded
    rows = {
        name: sum(1 for row in read_jsonl(run.path(FILES[name][0])) if row.get("id") not in held)
        for name in configs
    }
    front = {
        "license": license,
        "task_categories": ["text-generation"],
        "language": ["en"],
        "size_categories": [_size_category(max(rows.values(), default=0))],
        "tags": ["safety", "alignment", "chain-of-thought", "synthetic", "aidsafe"]
        + [name for name in configs if name in TRAINERS],
        "configs": [
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": FILES[name][1]}],
                **({"default": True} if name == configs[0] else {}),
            }
            for name in configs
        ],
    }
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", ""]
    name = recipe.name if recipe else manifest.get("recipe")
    lines += [f"# Safety training data made with aidsafe (`{name}` recipe)", ""]
    if recipe is not None:
        lines += [f"Recipe `{recipe.name}`: {recipe.description}.", ""]
    lines += ["## Files", "", "| config | file | rows |", "|---|---|---|"]
    lines += [f"| `{n}` | `{FILES[n][1]}` | {rows[n]:,} |" for n in configs]
    lines += ["", "## Models", "", "| role | model | sampling |", "|---|---|---|"]
    models = dict(manifest.get("config", {}).get("models") or {})
    if "dpo" in configs:  # the pairing stage's roles too (whisperer, generator, judge...)
        models |= manifest.get("dpo", {}).get("config", {}).get("models") or {}
    for role, model in models.items():
        sampling = ", ".join(
            f"{key} {model[key]}"
            for key in ("temperature", "top_p", "max_tokens", "seed")
            if model.get(key) is not None
        )
        lines.append(f"| {role} | {model.get('model')} ({model.get('backend')}) | {sampling} |")
    lines += _policy_section(run, manifest)
    counts = manifest.get("counts", {})
    lines += ["", "## What came of it", ""]
    lines.append(f"- Rows done: {counts.get('done', 0):,}; failed: {counts.get('failed', 0):,}")
    for reason, count in (counts.get("failed_by_reason") or {}).items():
        lines.append(f"  - {reason}: {count:,}")
    deliberation = _deliberation(run)
    if deliberation:
        lines.append(
            f"- Deliberation: {deliberation['mean_turns']} agent turns per row on average; "
            f"{100 * deliberation['agreed_share']:.0f}% of rows ended by agreement"
        )
        removed = deliberation["thoughts_removed_by_reason"]
        shown = ", ".join(f"{k} {v:,}" for k, v in removed.items()) or "none"
        lines.append(f"- Thoughts the refiner removed, by reason: {shown}")
    for section in ("dpo",):
        if section in manifest and "dpo" in configs:
            pairs = manifest[section].get("counts", {})
            lines.append(
                f"- DPO pairs: {pairs.get('done', 0):,}; rows rejected: {pairs.get('failed', 0):,}"
            )
    if "cost_usd" in manifest:
        lines.append(f"- Cost of the model calls: ${manifest['cost_usd']:,.2f}")
    lines += _quality_section(run)
    lines += _usage_section(configs)
    if recipe is not None and recipe.paper:
        lines += ["", "## Citation", "", "The recipe implements:", "", "```bibtex", recipe.paper]
        lines += ["```"]
    lines += ["", f"Made with aidsafe {manifest.get('aidsafe_version', '')}.".rstrip(), ""]
    return "\n".join(lines)


def _policy_section(run: RunDirectory, manifest: Mapping[str, Any]) -> list[str]:
    made_with = manifest.get("policy_set") or {}
    lines = ["", "## Safety policies", ""]
    lines.append(
        f"Policy set `{made_with.get('name')}` version {made_with.get('version')}, "
        f"sha256 `{made_with.get('sha256')}`. The text every agent read:"
    )
    try:
        spec = policies_of(run)
        text = load_policies(spec).render() if spec else None
    except UserError:
        text = None
    if text is None:
        return [*lines, "", "(the policy file could not be found from here)"]
    return [*lines, "", "```text", text.strip(), "```"]


def _quality_section(run: RunDirectory) -> list[str]:
    lines: list[str] = []
    grades = run.path(GRADES_SUMMARY)
    if grades.exists():
        summary = json.loads(grades.read_text(encoding="utf-8"))
        lines += ["", "## Grades (1-5, by the grader model)", "", "| metric | mean | 95% CI |"]
        lines.append("|---|---|---|")
        for metric, figures in summary.get("metrics", {}).items():
            ci = figures.get("ci95") or [None, None]
            mean = figures.get("mean")
            shown = f"{mean:.2f}" if mean is not None else "-"
            interval = f"{ci[0]:.2f} to {ci[1]:.2f}" if ci[0] is not None else "-"
            lines.append(f"| {metric} | {shown} | {interval} |")
    judged = run.path(JUDGE_SUMMARY)
    if judged.exists():
        overall = json.loads(judged.read_text(encoding="utf-8")).get("overall", {})
        shown = ", ".join(f"{k} {v}" for k, v in overall.items() if not isinstance(v, dict))
        lines += ["", "## Safety judge", "", f"Overall: {shown}"]
    return lines


def _usage_section(configs: list[str]) -> list[str]:
    lines = ["", "## Use", "", "```python", "from datasets import load_dataset", ""]
    for name in configs:
        lines.append(f'{name} = load_dataset("ORG/NAME", "{name}", split="train")')
    trainers = [name for name in configs if name in TRAINERS]
    if trainers:
        lines += ["", "from trl import " + ", ".join(TRAINERS[n] for n in trainers)]
        lines.append("# SFT rows are conversational (`messages`, the CoT in <think> tags);")
        lines.append(
            "# DPO rows are conversational preference pairs (`prompt`, `chosen`, `rejected`)."
        )
        for name in trainers:
            lines.append(f"trainer = {TRAINERS[name]}(model=..., train_dataset={name}, args=...)")
    lines += ["```"]
    return lines


@dataclass
class HubFolder:
    root: Path
    files: list[Path]  # relative to root
    configs: list[str]


def hub_folder(
    run_dir: Path, target: Path, configs: list[str], license: str, secrets: Mapping[str, str]
) -> HubFolder:
    """Write the run's dataset in the Hub's layout to `target` (data files and README.md),
    each ledger checked first; the configs that had rows."""
    run = RunDirectory(run_dir)
    present = [n for n in configs if run.path(FILES[n][0]).exists()]
    present = [n for n in present if run.path(FILES[n][0]).stat().st_size > 0]
    if not present:
        raise UserError(f"{run_dir}: no finished rows of {', '.join(configs)} to share")
    for name in present:
        check_shareable(run.path(FILES[name][0]), secrets)
    if target.exists():
        shutil.rmtree(target)
    (target / "data").mkdir(parents=True)
    for name in present:
        source, path = FILES[name]
        rows = training_rows(run, run.path(source))  # held-out prompts stay home
        if path.endswith(".parquet"):
            rows.to_parquet(str(target / path))
        else:
            rows.to_json(str(target / path), lines=True, force_ascii=False)
    write_atomic(target / "README.md", dataset_card(run, present, license))
    files = sorted(p.relative_to(target) for p in target.rglob("*") if p.is_file())
    return HubFolder(target, files, present)


def push(folder: HubFolder, repo: str, private: bool) -> str:
    """Upload the folder to the dataset repository `repo` (made if missing); its URL. The token
    is huggingface_hub's own: HF_TOKEN, or `hf auth login`."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            repo_type="dataset",
            folder_path=str(folder.root),
            commit_message=f"aidsafe: {', '.join(folder.configs)}",
        )
    except LocalTokenNotFoundError as error:
        raise UserError(
            f"--repo {repo}: no Hugging Face token; set HF_TOKEN or run `hf auth login`"
        ) from error
    except HfHubHTTPError as error:
        raise RunFailed(f"--repo {repo}: the Hub refused the upload ({error})") from error
    except (OSError, httpx.HTTPError) as error:  # no network, DNS, a proxy
        raise RunFailed(f"--repo {repo}: the Hub could not be reached ({error})") from error
    return str(url)
