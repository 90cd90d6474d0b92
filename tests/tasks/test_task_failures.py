"""Judge and grade on the shared pipeline: every row of a judged dataset is judged (repeated ids
included), a grade whose row broke counts as failed, and the rows of a run are the same run
whatever the spelling of its path."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.run.directory import RunDirectory
from aidsafe.tasks import grading
from aidsafe.tasks.grading import grade_items, run_items
from aidsafe.tasks.judging import judge_responses
from aidsafe.testing import StubOpenAIServer
from tests.conftest import SAFE, make_config, read_jsonl
from tests.tasks.graded import grader, make_run


async def test_samples_sharing_their_prompt_id_are_each_judged(tmp_path: Path) -> None:
    samples = tmp_path / "s.jsonl"
    rows = [{"id": "q1", "prompt": "p", "response": f"answer {n}"} for n in range(3)]
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
    judge = ScriptedChatModel([SAFE], repeat_last=True)
    summary = await judge_responses(
        PromptSource(str(samples)),
        RunDirectory(tmp_path / "j"),
        make_config(scripted={"judge": judge}),
        response_field="response",
        show_progress=False,
    )
    judged = read_jsonl(tmp_path / "j" / "judgments.jsonl")
    assert [row["id"] for row in judged] == ["q1", "q1#1", "q1#2"] and judge.calls == 3
    assert summary.metrics["overall"]["k_max"] == 3  # the three samples of one prompt


async def test_a_grade_whose_row_broke_is_counted_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await make_run(tmp_path, "run", "aidsafe", ["a", "b"])

    async def broken(ctx: Any, item: Any) -> Any:
        if item.prompt == "b":
            raise RuntimeError("a bug in grading")
        return await original(ctx, item)

    original = grading.grade_one
    monkeypatch.setattr(grading, "grade_one", broken)
    summary = await grade_items(
        run_items(run), run, make_config(scripted={"grader": grader()}), show_progress=False
    )
    assert (summary.stage.done_now, summary.stage.failed_now) == (1, 1)
    assert summary.stage.totals["failed_by_reason"] == {"internal_error": 1}
    (line,) = [row for row in read_jsonl(run.path("grades.jsonl")) if row.get("reason")]
    assert set(line["unscored"].values()) == {"internal_error"}


def test_grading_a_run_by_another_spelling_of_its_path_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with StubOpenAIServer() as stub:
        flags = ["--base-url", stub.base_url, "--model", "stub", "-q"]
        prompts = tmp_path / "p.jsonl"
        prompts.write_text('{"id": "a", "prompt": "hello"}\n')
        monkeypatch.chdir(tmp_path)
        for args in (
            ["generate", "p.jsonl", "--out", "run"],
            ["grade", "run"],
            ["grade", str(tmp_path / "run") + "/"],
        ):
            monkeypatch.setattr(sys, "argv", ["aidsafe", *args, *flags])
            try:
                main()
            except SystemExit as exit:
                assert exit.code in (0, None), capsys.readouterr().err
    out = " ".join(capsys.readouterr().out.split())
    assert "1 rows graded, 0 failed, 0 graded earlier" in out
    assert "0 rows graded, 0 failed, 1 graded earlier" in out
