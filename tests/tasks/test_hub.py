"""The Hub: a dataset card generated from a run, a folder in the Hub's layout that `datasets`
loads by config, and `aidsafe push`, tested up to huggingface_hub's upload call (the Hub itself
cannot be reached from here); --dry-run sends nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import datasets
import pytest
import yaml

from aidsafe.inputs import PromptSource
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from tests.cli.test_app import cli
from tests.conftest import belief_models, make_config, read_jsonl, scripted, write_prompts


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A finished aidsafe-dpo run on scripted models: SFT rows, DPO pairs and traces."""
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(4)])
    config = make_config(scripted={**scripted(), **belief_models()}, recipe="aidsafe-dpo")
    asyncio.run(
        generate(
            PromptSource(str(prompts)), RunDirectory(tmp_path / "run"), config, show_progress=False
        )
    )
    return tmp_path / "run"


class Hub:
    """huggingface_hub's HfApi at its boundary: what aidsafe asked of it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: Exception | None = None) -> None:
        import huggingface_hub

        self.calls: list[tuple[str, dict[str, Any]]] = []
        hub = self

        def create_repo(self: Any, repo_id: str, **kwargs: Any) -> str:
            if fail is not None:
                raise fail
            hub.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            return f"https://huggingface.co/datasets/{repo_id}"

        def upload_folder(self: Any, **kwargs: Any) -> None:
            hub.calls.append(
                (
                    "upload_folder",
                    kwargs
                    | {
                        "files": sorted(
                            str(p.relative_to(kwargs["folder_path"]))
                            for p in Path(kwargs["folder_path"]).rglob("*")
                            if p.is_file()
                        )
                    },
                )
            )

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


def front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_push_uploads_the_data_and_a_card_that_datasets_loads_by_config(
    capsys: pytest.CaptureFixture[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = Hub(monkeypatch)
    code, out, _ = cli(
        capsys,
        "push",
        str(run_dir),
        "--repo",
        "safety-team/aidsafe-v1",
        "--private",
        "--license",
        "cc-by-4.0",
    )
    assert code == 0 and "Uploaded to https://huggingface.co/datasets/safety-team/aidsafe-v1" in out
    [(_, created), (_, uploaded)] = hub.calls
    assert created == {
        "repo_id": "safety-team/aidsafe-v1",
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    assert uploaded["repo_type"] == "dataset" and uploaded["repo_id"] == "safety-team/aidsafe-v1"
    assert uploaded["files"] == [
        "README.md",
        "data/dpo.parquet",
        "data/sft.parquet",
        "data/traces.jsonl",
    ]
    folder = Path(uploaded["folder_path"])
    card = (folder / "README.md").read_text()
    meta = front_matter(card)
    from huggingface_hub import DatasetCard

    parsed = DatasetCard.load(folder / "README.md")  # as the Hub reads it
    assert parsed.data.license == "cc-by-4.0" and "Citation" in parsed.text
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["text-generation"]
    assert [c["config_name"] for c in meta["configs"]] == ["sft", "dpo", "traces"]
    # the Hub's layout works: each config loads by name from the folder as it was uploaded
    sft = datasets.load_dataset(str(folder), "sft", split="train")
    dpo = datasets.load_dataset(str(folder), "dpo", split="train")
    assert len(sft) == len(read_jsonl(run_dir / "sft.jsonl")) == 4
    assert len(dpo) == len(read_jsonl(run_dir / "dpo.jsonl"))
    assert set(sft.column_names) >= {"messages", "metadata"}
    # the card says what made the data and how to use and cite it
    for text in (
        "`aidsafe` recipe",
        "| decomposer |",
        "Policy set `aidsafe-default`",
        "# Safety policies: aidsafe-default",
        "Rows done: 4",
        "Deliberation:",
        "SFTTrainer",
        "DPOTrainer",
        "kumarage2025aidsafe",
        "arXiv",
    ):
        assert text in card, text


def test_dry_run_lists_the_upload_and_sends_nothing(
    capsys: pytest.CaptureFixture[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = Hub(monkeypatch)
    code, out, _ = cli(
        capsys, "push", str(run_dir), "--repo", "org/name", "--format", "sft", "--dry-run"
    )
    assert code == 0 and "Would upload to dataset repository org/name" in out
    assert "data/sft.parquet" in out and "README.md" in out and "dpo" not in out
    assert hub.calls == []


def test_push_without_a_token_or_with_a_bad_repo_exits_2(
    capsys: pytest.CaptureFixture[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub.errors import LocalTokenNotFoundError

    Hub(monkeypatch, fail=LocalTokenNotFoundError("no token"))
    code, _, err = cli(capsys, "push", str(run_dir), "--repo", "org/name")
    assert code == 2 and "no Hugging Face token; set HF_TOKEN" in err and "Traceback" not in err
    code, _, err = cli(capsys, "push", str(run_dir), "--repo", "just-a-name", "--dry-run")
    assert code == 2 and "--repo just-a-name: expected ORG/NAME" in err
    code, _, err = cli(capsys, "push", str(run_dir), "--repo", "o/n", "--format", "csv")
    assert code == 2 and "--format csv: expected sft, dpo, traces" in err


def test_export_to_hf_writes_the_card_beside_the_data(
    capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "exported"
    code, _, _ = cli(
        capsys, "export", str(run_dir), "--to", "hf", "--out", str(target), "--license", "mit"
    )
    assert code == 0
    card = (target / "README.md").read_text()
    assert front_matter(card)["license"] == "mit" and "## Citation" in card
    assert len(datasets.load_from_disk(str(target))) == 4


@pytest.mark.parametrize(
    ("make", "cited"),
    [("baseline_run", "kumarage2025aidsafe"), ("unsafechain_run", "tomar2025unsafechain")],
)
def test_the_card_of_every_recipe_names_its_models_policies_outcomes_and_paper(
    tmp_path: Path, make: str, cited: str
) -> None:
    from huggingface_hub import DatasetCard

    from aidsafe.tasks.hub import dataset_card
    from tests.tasks import runs

    run = asyncio.run(getattr(runs, make)(tmp_path))
    card = dataset_card(run, ["sft", "traces"], "apache-2.0")
    (tmp_path / "README.md").write_text(card)
    parsed = DatasetCard.load(tmp_path / "README.md")
    assert parsed.data.license == "apache-2.0"
    recipe = json.loads((run.root / "manifest.json").read_text())["recipe"]
    for text in (
        f"`{recipe}` recipe",
        "## Models",
        "## Safety policies",
        "Rows done:",
        cited,
        "SFTTrainer",
    ):
        assert text in card, text
