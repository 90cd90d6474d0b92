"""The comparison of graded runs: paired differences and win rates, deliberation and cost
statistics, and the self-contained HTML report."""

import re
from pathlib import Path

import pytest

from aidsafe.agents.grader import METRICS
from aidsafe.errors import UserError
from aidsafe.tasks.grading import grade_items, run_items
from aidsafe.tasks.report import comparison, html_report, load_run
from tests.conftest import make_config
from tests.tasks.graded import grader, make_run


async def test_compare_two_graded_runs(tmp_path: Path) -> None:
    base = await make_run(tmp_path, "baseline", "baseline", ["a", "b", "c"])
    full = await make_run(tmp_path, "aidsafe", "aidsafe", ["a", "b", "c"])
    with pytest.raises(UserError, match="not graded yet"):
        load_run(base.root)
    worse = grader({"completeness": {"score": 2, "rationale": "x"}})
    await grade_items(
        run_items(base), base, make_config(scripted={"grader": worse}), show_progress=False
    )
    await grade_items(
        run_items(full), full, make_config(scripted={"grader": grader()}), show_progress=False
    )
    runs = [load_run(base.root), load_run(full.root)]
    assert [(run.name, run.recipe, run.rows) for run in runs] == [
        ("baseline", "baseline", 3),
        ("aidsafe", "aidsafe", 3),
    ]
    data = comparison(runs)
    versus = data["versus_first"]["aidsafe"]["completeness"]
    assert versus["difference"] == 2.0 and versus["win_rate"] == 1.0
    assert versus["common_rows"] == 3 and versus["difference_ci95"] == (2.0, 2.0)
    assert data["versus_first"]["aidsafe"]["relevance"]["win_rate"] == 0.5  # all ties
    assert data["runs"][1]["agreed_share"] == 1.0 and data["runs"][1]["rounds_mean"] == 1.0
    assert data["runs"][1]["removed_per_row"]["redundant"] == 1.0
    assert set(data["runs"][1]["tokens_per_row"]) >= {"decomposer", "refiner"}
    assert runs[0].rounds == []  # the baseline has no deliberation to report
    page = html_report(runs, data)
    # offline: nothing to fetch (XML namespace names are identifiers, never loaded)
    unfetched = re.sub(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"', "", page)
    assert page.startswith("<!DOCTYPE html>") and "http" not in unfetched
    for expected in ("baseline", "aidsafe", *METRICS, "Deliberation rounds used", "Tokens per row"):
        assert expected in page
    # and in the real headless browser: it renders its charts, with no script error
    from tests.browser import CHROMIUM, Browser

    if CHROMIUM is None:
        pytest.skip("needs Debian's chromium (.ci/run installs it)")
    (tmp_path / "report.html").write_text(page)
    with Browser() as browser:
        browser.open((tmp_path / "report.html").resolve().as_uri())
        browser.wait("document.readyState === 'complete'")
        assert browser.evaluate("document.querySelectorAll('svg').length") >= 3
        shot = browser.screenshot(tmp_path / "report.png")
        assert shot.stat().st_size > 10_000 and browser.errors() == []
