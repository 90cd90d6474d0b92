"""`aidsafe split`: held-out prompts chosen by id, stratified by source and category, the same
for the same seed; `export` and `push` never carry a held-out prompt."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import datasets
import pytest

from aidsafe.inputs import PromptSource
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from tests.cli.test_app import cli
from tests.conftest import make_config, read_jsonl, scripted


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """40 prompts from two sources, with categories 'a' (30 rows) and 'b' (10 rows)."""
    rows = [
        {
            "id": f"r{n}",
            "prompt": f"prompt number {n}",
            "metadata": {"source": "bt" if n % 2 else "wj", "categories": ["a" if n < 30 else "b"]},
        }
        for n in range(40)
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    asyncio.run(
        generate(
            PromptSource(str(path)),
            RunDirectory(tmp_path / "run"),
            make_config(scripted=scripted()),
            show_progress=False,
        )
    )
    return tmp_path / "run"


def test_split_is_stratified_reproducible_and_export_leaves_the_held_out_prompts_out(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    code, out, _ = cli(capsys, "split", str(run_dir), "--eval-fraction", "0.2", "--seed", "7")
    assert code == 0 and "held out for evaluation" in out
    split = json.loads((run_dir / "split.json").read_text())
    assert split["strata"] == {
        "bt / a": {"rows": 15, "held_out": 3},
        "bt / b": {"rows": 5, "held_out": 1},
        "wj / a": {"rows": 15, "held_out": 3},
        "wj / b": {"rows": 5, "held_out": 1},
    }
    held = set(split["eval_ids"])
    assert len(held) == 8
    cli(capsys, "split", str(run_dir), "--eval-fraction", "0.2", "--seed", "7")
    assert set(json.loads((run_dir / "split.json").read_text())["eval_ids"]) == held
    cli(capsys, "split", str(run_dir), "--eval-fraction", "0.2", "--seed", "8")
    assert set(json.loads((run_dir / "split.json").read_text())["eval_ids"]) != held
    cli(capsys, "split", str(run_dir), "--eval-fraction", "0.2", "--seed", "7")
    # every training export leaves them out
    for to, target in (("jsonl", tmp_path / "e.jsonl"), ("parquet", tmp_path / "e.parquet")):
        assert cli(capsys, "export", str(run_dir), "--to", to, "--out", str(target))[0] == 0
    exported = [row["id"] for row in read_jsonl(tmp_path / "e.jsonl")]
    assert len(exported) == 32 and not held & set(exported)
    parquet = datasets.Dataset.from_parquet(str(tmp_path / "e.parquet"))
    assert len(parquet) == 32 and not held & set(parquet["id"])
    # and so does the Hub upload
    code, _, _ = cli(capsys, "push", str(run_dir), "--repo", "o/n", "--dry-run")
    assert code == 0
    uploaded = datasets.load_dataset(str(run_dir / "hub"), "sft", split="train")
    assert len(uploaded) == 32 and not held & set(uploaded["id"])
    traces = [row["id"] for row in read_jsonl(run_dir / "hub" / "data" / "traces.jsonl")]
    assert len(traces) == 32 and not held & set(traces)


def test_a_bad_fraction_or_directory_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "split", str(tmp_path), "--eval-fraction", "0.1")
    assert code == 2 and "not a run directory" in err
    code, _, err = cli(capsys, "split", str(tmp_path), "--eval-fraction", "1.5")
    assert code == 2 and "--eval-fraction: expected a number between 0 and 1" in err
