"""The quality filter: keep the SFT rows whose grades reach a minimum, with a count of the rows
dropped per reason."""

from pathlib import Path

import pytest

from aidsafe.agents.grader import METRICS
from aidsafe.config import RunConfig
from aidsafe.errors import UserError
from aidsafe.tasks.filtering import filter_run
from aidsafe.tasks.grading import grade_items, run_items
from tests.conftest import make_config, read_jsonl
from tests.tasks.graded import grader, make_run


async def test_filter_keeps_rows_that_reach_the_minimum(tmp_path: Path) -> None:
    run = await make_run(tmp_path, "baseline", "baseline", ["a", "b", "c"])
    with pytest.raises(UserError, match="not graded yet"):
        filter_run(run, 3, list(METRICS))

    def config() -> RunConfig:
        by_metric = {
            "completeness": {"score": 2, "rationale": "x"},
            "coherence": "not a grade",  # left unscored
        }
        return make_config(scripted={"grader": grader(by_metric)}, repair_attempts=0)

    await grade_items(run_items(run), run, config(), limit=2, show_progress=False)
    target, kept, dropped = filter_run(run, 3, ["relevance"])
    assert (kept, dropped) == (2, {"ungraded": 1})  # the third row has no grades yet

    await grade_items(run_items(run), run, config(), show_progress=False)  # the rest
    # a row is dropped for the first metric it fails, in the order they are given
    target, kept, dropped = filter_run(run, 3, list(METRICS))
    assert (kept, dropped) == (0, {"unscored:coherence": 3})
    target, kept, dropped = filter_run(run, 3, ["relevance", "completeness"])
    assert (kept, dropped) == (0, {"below_min:completeness": 3})
    target, kept, dropped = filter_run(run, 2, ["relevance", "completeness"])
    assert (kept, dropped) == (3, {})  # the minimum itself is kept
    target, kept, dropped = filter_run(run, 3, ["relevance"])
    assert target == tmp_path / "baseline" / "sft_filtered.jsonl"
    assert kept == 3 and read_jsonl(target) == read_jsonl(tmp_path / "baseline" / "sft.jsonl")
    elsewhere = tmp_path / "kept.jsonl"
    target, kept, _ = filter_run(run, 5, ["relevance"], out=elsewhere)
    assert (target, kept, read_jsonl(elsewhere)) == (elsewhere, 0, [])
    with pytest.raises(UserError, match="unknown"):
        filter_run(run, 3, ["fluency"])
