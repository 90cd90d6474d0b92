"""Cost and budgets: what each call costs at the configured price (against the loopback stub's
token usage), the totals per role, row and run, and `--max-cost` / `--token-budget` stopping a
run with exit code 3, nothing lost, and a re-run with a higher cap finishing it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidsafe.cli.app import BUDGET_REACHED
from aidsafe.testing import StubOpenAIServer
from tests.cli.test_app import cli
from tests.conftest import read_jsonl, write_prompts

PRICE = {"input": 2.0, "output": 8.0, "cached_input": 1.0}  # USD per million tokens


@pytest.fixture(scope="module")
def stub() -> Iterator[StubOpenAIServer]:
    with StubOpenAIServer() as server:
        yield server


def config_file(tmp_path: Path, stub: StubOpenAIServer, **top: Any) -> Path:
    model = {"backend": "openai", "base_url": stub.base_url, "model": "stub", "retry_wait": 0}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"models": {"default": model | {"price": PRICE}}, **top}))
    return path


def generate(capsys: pytest.CaptureFixture[str], prompts: Path, out: Path, *flags: str) -> int:
    code, _, _ = cli(capsys, "generate", str(prompts), "--out", str(out), "-q", *flags)
    return code


def test_each_call_costs_its_usage_at_the_price_and_totals_add_up(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stub: StubOpenAIServer
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(3)])
    config = config_file(tmp_path, stub)
    assert generate(capsys, prompts, tmp_path / "run", "--config", str(config)) == 0
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    everything = 0.0
    for trace in traces:
        calls = trace["calls"]
        for call in calls:
            expected = (call["input_tokens"] * 2.0 + call["output_tokens"] * 8.0) / 1e6
            assert call["input_tokens"] > 0 and call["cost_usd"] == pytest.approx(expected)
        row = sum(call["cost_usd"] for call in calls)
        assert trace["cost_usd"] == pytest.approx(row)
        everything += row
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["cost_usd"] == pytest.approx(everything)
    assert manifest["runs"][-1]["cost_usd"] == pytest.approx(everything)
    by_role = sum(entry["cost_usd"] for entry in manifest["tokens_by_role"].values())
    assert by_role == pytest.approx(everything)


def row_cost(capsys: pytest.CaptureFixture[str], tmp_path: Path, config: Path) -> float:
    """What one row costs on the stub (its rows all cost about the same)."""
    one = write_prompts(tmp_path / "one.jsonl", ["prompt 0"])
    assert generate(capsys, one, tmp_path / "one", "--config", str(config)) == 0
    return float(json.loads((tmp_path / "one" / "manifest.json").read_text())["cost_usd"])


@pytest.mark.parametrize("cap", ["--max-cost", "--token-budget"])
def test_a_budget_stops_new_rows_with_exit_3_and_a_higher_one_finishes_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stub: StubOpenAIServer, cap: str
) -> None:
    rows = 20
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(rows)])
    config = config_file(tmp_path, stub, concurrency=2)
    cost = row_cost(capsys, tmp_path, config)
    tokens = json.loads((tmp_path / "one" / "manifest.json").read_text())["tokens_by_role"]
    per_row = sum(entry["input"] + entry["output"] for entry in tokens.values())
    limit = {"--max-cost": f"{6.5 * cost:.10f}", "--token-budget": str(int(6.5 * per_row))}[cap]
    out = tmp_path / "run"
    code = generate(capsys, prompts, out, "--config", str(config), cap, limit)
    assert code == BUDGET_REACHED
    done = [t["id"] for t in read_jsonl(out / "traces.jsonl")]
    assert 3 <= len(done) <= 6 and len(done) == len(set(done))  # stopped before the cap
    assert read_jsonl(out / "failures.jsonl") == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["runs"][-1]["budget_reached"] is True
    spent = (
        manifest["cost_usd"]
        if cap == "--max-cost"
        else sum(e["input"] + e["output"] for e in manifest["tokens_by_role"].values())
    )
    assert spent <= float(limit)
    # the same cap again: nothing more may start
    assert generate(capsys, prompts, out, "--config", str(config), cap, limit) == 3
    assert len(read_jsonl(out / "traces.jsonl")) == len(done)
    # a higher cap finishes the run: every row once, none lost
    higher = {"--max-cost": "100", "--token-budget": str(100 * per_row)}[cap]
    assert generate(capsys, prompts, out, "--config", str(config), cap, higher) == 0
    finished = [t["id"] for t in read_jsonl(out / "traces.jsonl")]
    assert sorted(finished) == sorted(f"p{n}" for n in range(rows))


def test_the_budget_message_says_what_was_spent_and_how_to_continue(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stub: StubOpenAIServer
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(6)])
    config = config_file(tmp_path, stub, concurrency=1)
    cost = row_cost(capsys, tmp_path, config)
    out = tmp_path / "run"
    code, _, err = cli(
        capsys,
        "generate",
        str(prompts),
        "--out",
        str(out),
        "-q",
        "--config",
        str(config),
        "--max-cost",
        f"{2.5 * cost:.10f}",
    )
    assert code == 3
    assert "Budget reached:" in err and "of the $" in err and "run the same command again" in err


def test_a_cost_budget_without_prices_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stub: StubOpenAIServer
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a"])
    model = {"backend": "openai", "base_url": stub.base_url, "model": "stub"}
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"models": {"default": model}}))
    code, _, err = cli(
        capsys,
        "generate",
        str(prompts),
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(config),
        "--max-cost",
        "1",
    )
    assert code == 2 and "max_cost: the models of" in err and "have no price" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "traces.jsonl").exists()


def test_a_price_is_checked_when_the_config_is_loaded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a"])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"models": {"default": {"price": {"input": -1}}}}))
    code, _, err = cli(
        capsys, "generate", str(prompts), "--out", str(tmp_path / "run"), "--config", str(config)
    )
    assert code == 2 and "c.yaml: models.default.price.input" in err


def test_judge_and_grade_stop_at_a_token_budget_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, stub: StubOpenAIServer
) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"prompt": f"question {n}", "response": f"answer {n}", "thoughts": "t"})
            + "\n"
            for n in range(30)
        )
    )
    config = config_file(tmp_path, stub, concurrency=1)
    common = ["--config", str(config), "--quiet", "--token-budget", "2000"]
    code, _, err = cli(
        capsys,
        "judge",
        str(samples),
        "--out",
        str(tmp_path / "j"),
        "--response-field",
        "response",
        *common,
    )
    assert code == BUDGET_REACHED and "Budget reached:" in err
    judged = read_jsonl(tmp_path / "j" / "judgments.jsonl")
    assert 0 < len(judged) < 30
    code, _, err = cli(
        capsys,
        "grade",
        str(samples),
        "--out",
        str(tmp_path / "g"),
        "--cot-field",
        "thoughts",
        "--response-field",
        "response",
        *common,
    )
    assert code == BUDGET_REACHED and "Budget reached:" in err
    assert 0 < len(read_jsonl(tmp_path / "g" / "grades.jsonl")) < 30
