"""The auto-grader over a run or a dataset, with scripted graders: resumable grading,
unparseable grades left unscored, one rubric per metric, and the grade summary."""

import json
from pathlib import Path
from typing import Any

import pytest

from aidsafe.agents.grader import METRICS, RUBRICS
from aidsafe.errors import UserError
from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.run.directory import RunDirectory
from aidsafe.tasks.grading import (
    dataset_items,
    grade_items,
    pick_cot_field,
    run_items,
    summarize_grades,
)
from tests.conftest import make_config, read_jsonl
from tests.tasks.graded import grader, make_run


def test_summary_counts_unparseable_grades_apart() -> None:
    rows: list[dict[str, Any]] = [
        {"scores": {m: {"score": 4, "rationale": ""} for m in METRICS}},
        {"scores": {**{m: {"score": 2, "rationale": ""} for m in METRICS}, "coherence": None}},
    ]
    summary = summarize_grades(iter(rows))
    assert summary["rows"] == 2
    assert summary["metrics"]["relevance"]["mean"] == 3.0
    assert summary["metrics"]["coherence"] == {
        "mean": 4.0,
        "ci95": (4.0, 4.0),
        "n_graded": 1,
        "n_unparseable": 1,
    }


async def test_each_metric_is_graded_against_its_own_rubric(tmp_path: Path) -> None:
    run = await make_run(tmp_path, "aidsafe", "aidsafe", ["a"])
    seen: list[list[str]] = []  # per grader call: the metrics whose rubric the prompt holds

    def answer(messages: list[Any]) -> Any:
        system = messages[0].text
        rubrics = [m for m in METRICS if RUBRICS[m] in system]
        seen.append(rubrics)
        metric = rubrics[0]
        return {"score": METRICS.index(metric) % 5 + 1, "rationale": f"rubric {metric}"}

    model = ScriptedChatModel([answer], repeat_last=True)
    await grade_items(
        run_items(run), run, make_config(scripted={"grader": model}), show_progress=False
    )
    assert len(METRICS) == 6 and model.calls == 6
    assert all(len(rubrics) == 1 for rubrics in seen)  # one rubric per call, none shared
    assert sorted(rubrics[0] for rubrics in seen) == sorted(METRICS)
    (row,) = read_jsonl(tmp_path / "aidsafe" / "grades.jsonl")
    assert row["scores"] == {
        metric: {"score": n % 5 + 1, "rationale": f"rubric {metric}"}
        for n, metric in enumerate(METRICS)
    }
    assert row["unscored"] == {}


async def test_grade_a_run_resumably_with_unparseable_grades_left_unscored(tmp_path: Path) -> None:
    run = await make_run(tmp_path, "aidsafe", "aidsafe", ["a", "b"])
    # coherence: not JSON at all; completeness: a score outside 1-5
    model = grader({"coherence": "not a grade", "completeness": {"score": 7, "rationale": "x"}})
    config = make_config(scripted={"grader": model}, repair_attempts=1)
    summary = await grade_items(run_items(run), run, config, show_progress=False)
    assert (summary.stage.done_now, summary.stage.failed_now) == (2, 0)
    grades = read_jsonl(tmp_path / "aidsafe" / "grades.jsonl")
    assert len(grades) == 2
    assert grades[0]["scores"]["coherence"] is None
    assert grades[0]["scores"]["completeness"] is None
    assert grades[0]["unscored"] == {
        "coherence": "malformed_output",
        "completeness": "malformed_output",
    }
    assert grades[0]["scores"]["relevance"] == {"score": 4, "rationale": "ok relevance"}
    assert model.calls == 2 * (4 + 2 * 2)  # four metrics once, two twice (one repair each)
    task = model.received[0][1].text
    assert task.startswith("Query:\na\n\nChain of thought:\n1. The user wants")
    saved = json.loads((tmp_path / "aidsafe" / "grades_summary.json").read_text())
    assert saved == json.loads(json.dumps(summary.summary))
    assert saved["grader"] == "grader" and saved["rows"] == 2
    assert saved["metrics"]["coherence"]["n_unparseable"] == 2
    assert saved["metrics"]["relevance"]["mean"] == 4.0
    manifest = json.loads((tmp_path / "aidsafe" / "manifest.json").read_text())
    assert manifest["grading"]["counts"]["done"] == 2
    fresh = grader()
    config = make_config(scripted={"grader": fresh}, repair_attempts=1)
    again = await grade_items(run_items(run), run, config, show_progress=False)
    assert (again.stage.done_now, again.stage.skipped) == (0, 2)  # never re-grades a row
    assert fresh.calls == 0
    with pytest.raises(UserError, match="grade output made with a different configuration"):
        await grade_items(
            run_items(run),
            run,
            make_config(scripted={"grader": grader()}, repair_attempts=0),
            show_progress=False,
        )


async def test_grade_a_dataset_in_the_released_layout(tmp_path: Path) -> None:
    data = tmp_path / "released.jsonl"
    data.write_text(
        json.dumps({"prompt": "hi", "refined_thoughts": "be kind", "response": "hello"})
        + "\n"
        + json.dumps({"prompt": "bye", "refined_thoughts": "be brief", "response": "bye"})
        + "\n"
    )
    cot = pick_cot_field(PromptSource(str(data)))
    assert cot == "refined_thoughts"
    source = PromptSource(
        str(data), text_fields={cot: "--cot-field", "response": "--response-field"}
    )
    model = grader()
    out = tmp_path / "out"
    summary = await grade_items(
        dataset_items(source, cot, "response"),
        RunDirectory(out),
        make_config(scripted={"grader": model}),
        show_progress=False,
    )
    assert summary.stage.done_now == 2
    assert "Chain of thought:\nbe kind\n\nResponse:\nhello" in model.received[0][1].text
    assert len(read_jsonl(out / "grades.jsonl")) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "cot": "c", "response": "r"}) + "\n")
    with pytest.raises(UserError, match="no thoughts column"):
        pick_cot_field(PromptSource(str(bad)))
