"""`generate --preview N`: a seeded sample of rows run into the run directory, shown, and a
projection for the whole input that holds what the whole input then costs; the sample's rows
are part of the run (the full run does not ask for them again)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aidsafe.run.pipeline import preview_sample
from aidsafe.testing import StubOpenAIServer
from tests.cli.test_app import cli
from tests.conftest import read_jsonl, write_prompts


def test_the_sample_is_seeded_spread_and_bounded() -> None:
    assert preview_sample(100, 5) == preview_sample(100, 5)
    assert len(preview_sample(100, 5)) == 5 and max(preview_sample(100, 5)) > 5
    assert preview_sample(3, 5) == {0, 1, 2}


def test_a_preview_projects_the_whole_inputs_cost_and_its_rows_count_toward_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # prompts of different lengths: rows cost different amounts, as real ones do
    prompts = write_prompts(
        tmp_path / "p.jsonl", [f"prompt {n} " + "word " * (n % 7) * 40 for n in range(30)]
    )
    out = tmp_path / "run"
    with StubOpenAIServer() as stub:
        model = {
            "backend": "openai",
            "base_url": stub.base_url,
            "model": "stub",
            "price": {"input": 2.0, "output": 8.0},
        }
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"models": {"default": model}}))
        argv = ["generate", str(prompts), "--out", str(out), "-q", "--config", str(config)]
        code, shown, _ = cli(capsys, *argv, "--preview", "8")
        assert code == 0
        report = json.loads((out / "preview" / "preview.json").read_text())
        sampled = [row["id"] for row in report["rows"]]
        assert len(sampled) == 8 and report["sample"] == {"rows": 8, "of": 30, "seed": 0}
        assert sorted(t["id"] for t in read_jsonl(out / "traces.jsonl")) == sorted(sampled)
        # each row is shown readably, then the projection
        assert "explicit intents:" in shown and "response:" in shown
        assert "projected cost USD for all 30 rows" in shown and "90% interval" in shown
        asked = len(stub.requests)
        # the same command without --preview: the run goes on from the sample
        code, _, _ = cli(capsys, *argv)
        assert code == 0
        assert len(stub.requests) - asked == 22 * 4  # 4 calls per row, none of the sample's
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 30
    cost = report["projection"]["cost_usd"]
    low, high = cost["input_interval"]
    assert low <= manifest["cost_usd"] <= high
    tokens = report["projection"]["tokens"]
    total = sum(e["input"] + e["output"] for e in manifest["tokens_by_role"].values())
    assert tokens["input_interval"][0] <= total <= tokens["input_interval"][1]
