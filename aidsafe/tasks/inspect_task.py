"""The Inspect hand-off: `aidsafe export DIR --to inspect` writes the prompts `aidsafe split`
held out as an Inspect dataset and a `task.py` whose scorer is aidsafe's own safety judge, so a
trained model is evaluated with `inspect eval DIR2/task.py --model ...` on prompts it never saw.

The scorer scores a sample 1 (safe) or 0 (unsafe) with the judge configured as in the run
(policy or guard kind, the judge's model, the policy set); with `-T epochs=K` the reducers give
SafeChain's metrics: `mean` is Safe@1 (the share of safe samples per prompt, averaged),
`aidsafe_cons_safe` ConsSafe@K (at least half safe) and `aidsafe_all_safe` Safe@K (all safe). A
verdict that stays unparseable after the repairs is an error of that sample in Inspect's log,
never a guessed score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from aidsafe.errors import UserError
from aidsafe.jsonl import read_jsonl, write_atomic, write_jsonl
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import policies_of
from aidsafe.tasks.split import held_out

DATASET = "dataset.jsonl"
JUDGE_CONFIG = "judge.yaml"
TASK = "task.py"

TASK_SOURCE = '''"""Inspect task over the prompts aidsafe held out of training, scored by
aidsafe's safety judge (written by `aidsafe export --to inspect`). Run it with, for example:

    inspect eval task.py --model vllm/my-org/my-trained-model -T epochs=5
"""

from pathlib import Path

from inspect_ai import Epochs, Task, task
from inspect_ai.dataset import json_dataset
from inspect_ai.solver import generate

from aidsafe.tasks.inspect_scorer import SAFETY_REDUCERS, safety_judge

HERE = Path(__file__).parent


@task
def aidsafe_held_out(epochs: int = 1) -> Task:
    return Task(
        dataset=json_dataset(str(HERE / "dataset.jsonl")),
        solver=generate(),
        scorer=safety_judge(str(HERE / "judge.yaml")),
        epochs=Epochs(epochs, SAFETY_REDUCERS),
    )
'''


def export_inspect(run_dir: Path, out: Path, config_file: Path | None) -> tuple[Path, int]:
    """Write the held-out prompts (dataset.jsonl), the judge's config (judge.yaml, with the
    run's policy set beside it when it is a file) and task.py to `out`; how many samples."""
    run = RunDirectory(run_dir)
    held = held_out(run)
    if not held:
        raise UserError(
            f"{run_dir}: no prompts held out for evaluation; run `aidsafe split {run_dir}` first"
        )
    samples = []
    for row in read_jsonl(run.path("sft.jsonl")):
        if row["id"] not in held:
            continue
        meta = (row.get("metadata") or {}).get("input") or {}
        samples.append(
            {
                "id": row["id"],
                "input": row["messages"][0]["content"],
                "target": row["messages"][-1]["content"],  # the reference: CoT and response
                "metadata": {
                    "source": meta.get("source"),
                    "categories": meta.get("categories") or [],
                    "policies": meta.get("policies") or [],
                },
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / DATASET, samples)
    settings: dict[str, Any] = {}
    if config_file is not None:
        try:
            settings = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise UserError(f"{config_file}: cannot read the judge's config ({error})") from error
    spec = policies_of(run)
    if spec is not None and Path(spec).is_file():  # a file: it travels with the task
        shutil.copyfile(spec, out / "policies.yaml")
        spec = "policies.yaml"
    if spec is not None:
        settings["policies"] = spec
    write_atomic(out / JUDGE_CONFIG, yaml.safe_dump(settings, sort_keys=False))
    write_atomic(out / TASK, TASK_SOURCE)
    return out, len(samples)


def read_judge_config(path: str) -> Any:
    """The judge's RunConfig from judge.yaml (a policy file named in it is beside it)."""
    from aidsafe.recipes.registry import load_config

    folder = Path(path).parent
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    policies = data.get("policies")
    if policies and (folder / str(policies)).is_file():
        data["policies"] = str(folder / str(policies))
    return load_config(None, json.loads(json.dumps(data)))
