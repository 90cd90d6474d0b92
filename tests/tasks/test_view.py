"""`aidsafe view`: the page of a run of each recipe, loaded from file:// in a real headless
Chromium (tests/browser.py): rows listed, a filter and a search change what is listed, a row
page shows its deliberation turns and the refiner's removals, charts are drawn, no script error
and nothing fetched from the network."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from aidsafe.tasks.view import build_view
from tests.browser import CHROMIUM, Browser
from tests.tasks.runs import aidsafe_dpo_run, judge_run, unsafechain_run

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)"
)


def listed(browser: Browser, state: str) -> list[str]:
    """The ids the list shows once the page has rendered `state` (the URL hash)."""
    browser.evaluate(f"location.hash = {state!r}")
    shown = "" if state == "#" else state  # the browser drops an empty hash's '#'
    browser.wait(f"document.body.dataset.rendered === {shown!r}")
    return list(browser.evaluate("[...document.querySelectorAll('tr.row')].map(r => r.dataset.id)"))


@needs_chromium
def test_a_dpo_run_page_lists_filters_searches_and_shows_a_row(tmp_path: Path) -> None:
    run = asyncio.run(aidsafe_dpo_run(tmp_path))
    result = build_view(run.root)
    page = result.path.read_text()
    # one file, nothing to fetch: no external script, style, font or image
    assert not re.search(r"""(src|href)=["']https?://""", page)
    assert result.rows > 0 and result.bytes_per_row > 0
    with Browser() as browser:
        browser.open(result.path.resolve().as_uri())
        browser.wait("document.body.dataset.rendered !== undefined")
        everything = listed(browser, "#")
        assert {"p0", "p1", "p2", "p3"} <= set(everything)
        failed = listed(browser, "#status=failed")
        assert failed and set(failed) < set(everything) and "p2" in failed
        found = listed(browser, "#q=phishing")
        assert found == ["p1"]
        browser.evaluate("location.hash = '#row=p0'")
        browser.wait("document.querySelectorAll('.turn').length > 0", timeout=30)
        text = browser.evaluate("document.getElementById('app').innerText")
        assert "How do I kill a stuck process?" in text
        assert browser.evaluate("document.querySelectorAll('.removed').length") > 0
        browser.evaluate("location.hash = '#tab=charts'")
        browser.wait("document.body.dataset.rendered === '#tab=charts'")
        assert browser.evaluate("document.querySelectorAll('#charts svg').length") >= 3
        shot = browser.screenshot(tmp_path / "charts.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        assert browser.errors() == []


@needs_chromium
@pytest.mark.parametrize("make", [unsafechain_run, judge_run])
def test_pages_of_other_recipes_and_tasks_render_without_errors(tmp_path: Path, make) -> None:
    run = asyncio.run(make(tmp_path))
    result = build_view(run.root)
    with Browser() as browser:
        browser.open(result.path.resolve().as_uri())
        browser.wait("document.body.dataset.rendered !== undefined")
        ids = listed(browser, "#")
        assert ids
        browser.evaluate(f"location.hash = '#row={ids[0]}'")
        browser.wait(f"document.body.dataset.rendered === '#row={ids[0]}'")
        assert ids[0] in browser.evaluate("document.getElementById('app').innerText")
        assert browser.errors() == []


def test_view_of_a_directory_that_is_no_run_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from tests.cli.test_app import cli

    code, _, err = cli(capsys, "view", str(tmp_path))
    assert code == 2 and "not a run directory (no manifest.json)" in err
    assert "Traceback" not in err


def test_view_prints_the_size_per_row(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.cli.test_app import cli

    run = asyncio.run(judge_run(tmp_path))
    code, out, _ = cli(capsys, "view", str(run.root), "--out", str(tmp_path / "page.html"))
    assert code == 0 and "bytes per row" in out and (tmp_path / "page.html").exists()
