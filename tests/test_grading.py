"""The auto-grader, statistics, comparison report and quality filter, with scripted graders."""

import json
from pathlib import Path
from typing import Any

import pytest

from aidsafe.errors import UserError
from aidsafe.grading import METRICS, RUBRICS, filter_run, grade_items, run_items, summarize_grades
from aidsafe.inputs import PromptSource
from aidsafe.report import comparison, html_report, load_run
from aidsafe.rundir import RunDirectory
from aidsafe.runner import generate
from aidsafe.stats import bootstrap_ci, win_rate
from aidsafe.testing import ScriptedChatModel
from tests.conftest import DRAFT, make_config, read_jsonl, scripted, write_prompts


def test_bootstrap_ci_and_win_rate_by_hand() -> None:
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    assert bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    low, high = bootstrap_ci([1.0, 5.0] * 20) or (0, 0)
    assert low < 3.0 < high and low > 2.0 and high < 4.0
    assert bootstrap_ci([1.0, 2.0, 5.0]) == bootstrap_ci([1.0, 2.0, 5.0])  # seeded
    assert win_rate([(5, 4), (3, 3), (2, 4), (4, 1)]) == pytest.approx(2.5 / 4)
    assert win_rate([]) is None


def test_summary_counts_unparseable_grades_apart() -> None:
    rows = [
        {"scores": {m: {"score": 4, "rationale": ""} for m in METRICS}},
        {"scores": {**{m: {"score": 2, "rationale": ""} for m in METRICS}, "coherence": None}},
    ]
    summary = summarize_grades(iter(rows))
    assert summary["metrics"]["relevance"]["mean"] == 3.0
    assert summary["metrics"]["coherence"] == {
        "mean": 4.0,
        "ci95": (4.0, 4.0),
        "n_graded": 1,
        "n_unparseable": 1,
    }


def test_each_metric_has_its_own_rubric() -> None:
    assert len(set(RUBRICS.values())) == len(METRICS) == 6


def grader(by_metric: dict[str, Any] | None = None) -> ScriptedChatModel:
    """Answers by the rubric in the system prompt: a score per metric (default 4)."""
    by_metric = by_metric or {}

    def answer(messages: list[Any]) -> Any:
        system = messages[0].text
        metric = next(m for m in METRICS if RUBRICS[m] in system)
        return by_metric.get(metric, {"score": 4, "rationale": f"ok {metric}"})

    return ScriptedChatModel([answer], repeat_last=True)


async def make_run(tmp_path: Path, name: str, recipe: str, prompts: list[str]) -> RunDirectory:
    source = PromptSource(str(write_prompts(tmp_path / "p.jsonl", prompts)))
    run = RunDirectory(tmp_path / name)
    models: dict[str, Any] = (
        {"baseline": ScriptedChatModel([DRAFT], repeat_last=True)}
        if recipe == "baseline"
        else scripted()
    )
    await generate(source, run, make_config(recipe=recipe), models=models, show_progress=False)
    return run


async def test_grade_a_run_resumably_with_unparseable_grades_left_unscored(tmp_path: Path) -> None:
    run = await make_run(tmp_path, "aidsafe", "aidsafe", ["a", "b"])
    model = grader({"coherence": "not a grade"})
    config = make_config(repair_attempts=1)
    summary = await grade_items(run_items(run), run, config, models={"grader": model})
    assert summary.graded_now == 2
    grades = read_jsonl(tmp_path / "aidsafe" / "grades.jsonl")
    assert grades[0]["scores"]["coherence"] is None
    assert grades[0]["unscored"] == {"coherence": "malformed_output"}
    assert grades[0]["scores"]["relevance"] == {"score": 4, "rationale": "ok relevance"}
    assert model.calls == 2 * (5 + 2)  # five metrics once, coherence twice (one repair)
    task = model.received[0][1].text
    assert task.startswith("Query:\na\n\nChain of thought:\n1. The user wants")
    saved = json.loads((tmp_path / "aidsafe" / "grades_summary.json").read_text())
    assert saved["metrics"]["coherence"]["n_unparseable"] == 2
    assert saved["metrics"]["relevance"]["mean"] == 4.0
    again = await grade_items(run_items(run), run, config, models={"grader": grader()})
    assert (again.graded_now, again.skipped) == (0, 2)  # never re-grades a graded row
    with pytest.raises(UserError, match="different grader or rubric"):
        await grade_items(
            run_items(run), run, make_config(repair_attempts=0), models={"grader": grader()}
        )


async def test_compare_and_filter(tmp_path: Path) -> None:
    base = await make_run(tmp_path, "baseline", "baseline", ["a", "b", "c"])
    full = await make_run(tmp_path, "aidsafe", "aidsafe", ["a", "b", "c"])
    config = make_config()
    await grade_items(
        run_items(base),
        base,
        config,
        models={"grader": grader({"completeness": {"score": 2, "rationale": "x"}})},
    )
    await grade_items(run_items(full), full, config, models={"grader": grader()})
    runs = [load_run(base.root), load_run(full.root)]
    data = comparison(runs)
    versus = data["versus_first"]["aidsafe"]["completeness"]
    assert versus["difference"] == 2.0 and versus["win_rate"] == 1.0
    assert versus["common_rows"] == 3 and versus["difference_ci95"] == (2.0, 2.0)
    assert data["versus_first"]["aidsafe"]["relevance"]["win_rate"] == 0.5  # all ties
    assert data["runs"][1]["agreed_share"] == 1.0 and data["runs"][1]["rounds_mean"] == 1.0
    assert data["runs"][1]["removed_per_row"]["redundant"] == 1.0
    assert set(data["runs"][1]["tokens_per_row"]) >= {"decomposer", "refiner"}
    page = html_report(runs, data)
    assert page.startswith("<!DOCTYPE html>") and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    for expected in ("baseline", "aidsafe", *METRICS, "Deliberation rounds used", "Tokens per row"):
        assert expected in page

    target, kept, dropped = filter_run(base, 3, list(METRICS))
    assert (kept, dropped) == (0, {"below_min:completeness": 3})
    target, kept, dropped = filter_run(base, 3, ["relevance"])
    assert kept == 3 and len(read_jsonl(target)) == 3
    with pytest.raises(UserError, match="unknown"):
        filter_run(base, 3, ["fluency"])
