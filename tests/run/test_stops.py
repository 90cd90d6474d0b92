"""Errors no row can absorb end the run at once with one message (never a hang); errors inside
a row become a typed failure row and the run goes on; --force starts clean."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aidsafe.cli import main
from aidsafe.errors import RunFailed
from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.recipes import registry
from aidsafe.run.directory import GRADES, GRADES_SUMMARY, SFT_FILTERED, RunDirectory
from aidsafe.run.pipeline import Stage, generate, make_pairs, run_stage
from aidsafe.tasks.filtering import filter_run
from aidsafe.tasks.grading import grade_items, run_items
from aidsafe.testing import StubOpenAIServer
from tests.conftest import (
    SAFE,
    UNSAFE,
    belief_models,
    make_config,
    read_jsonl,
    scripted,
    write_prompts,
)
from tests.recipes import toy

pytestmark = pytest.mark.timeout(60)  # the bugs below used to hang forever


@pytest.fixture
def toy_recipe() -> Iterator[None]:
    registry.register(toy.RECIPE)
    yield
    registry.unregister(toy.RECIPE.name)


def disk_full_after(monkeypatch: pytest.MonkeyPatch, lines: int) -> None:
    """Ledger appends fail with ENOSPC after `lines` lines, as on a full disk."""
    append = RunDirectory.append
    written = {"lines": 0}

    def failing(self: RunDirectory, name: str, row: dict[str, Any]) -> None:
        written["lines"] += 1
        if written["lines"] > lines:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, name, row)

    monkeypatch.setattr(RunDirectory, "append", failing)


async def test_a_failing_ledger_write_ends_the_run_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20 rows, 2 workers, a queue of 4: the old driver waited forever on the full queue
    prompts = write_prompts(tmp_path / "p.jsonl", [f"q{n}" for n in range(20)])
    disk_full_after(monkeypatch, 5)  # traces and sft lines of two rows, then one more
    run = RunDirectory(tmp_path / "run")
    with pytest.raises(RunFailed, match="No space left on device"):
        await generate(
            PromptSource(str(prompts)),
            run,
            make_config(scripted=scripted(), concurrency=2),
            show_progress=False,
        )
    assert len(read_jsonl(run.path("traces.jsonl"))) >= 2  # what finished is kept
    manifest = run.manifest() or {}
    assert manifest["runs"][-1]["finished"]  # the manifest still closed the run
    monkeypatch.undo()  # space is freed: the same command goes on and finishes every row
    result = await generate(
        PromptSource(str(prompts)), run, make_config(scripted=scripted()), show_progress=False
    )
    assert result.stages[0].failed_now == 0
    traces = read_jsonl(run.path("traces.jsonl"))
    assert sorted(t["id"] for t in traces) == sorted(f"p{n}" for n in range(20))
    assert [r["id"] for r in read_jsonl(run.path("sft.jsonl"))] == [t["id"] for t in traces]


def test_the_cli_reports_a_full_disk_in_one_line_with_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"q{n}" for n in range(12)])
    disk_full_after(monkeypatch, 0)
    with StubOpenAIServer() as stub:
        endpoint = ["--base-url", stub.base_url, "--model", "stub", "--concurrency", "3"]
        argv = ["aidsafe", "generate", str(prompts), "--out", str(tmp_path / "run"), "-q"]
        monkeypatch.setattr(sys, "argv", [*argv, *endpoint])
        with pytest.raises(SystemExit) as exit:
            main()
    err = capsys.readouterr().err
    assert exit.value.code == 1
    assert "error:" in err and "No space left on device" in err and "Traceback" not in err
    assert "run the same command again" in " ".join(err.split())


class Brittle(toy.Toy):
    """The toy recipe with a bug in turning one final state into a record."""

    def finish(self, state: dict[str, Any], ctx: Any) -> Any:
        if state["prompt"] == "boom":
            raise KeyError("echo")
        return super().finish(state, ctx)


async def test_an_exception_outside_a_node_becomes_an_internal_error_row(
    toy_recipe: None, tmp_path: Path
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "boom", "c"])
    config = make_config(scripted={"echoer": ScriptedChatModel([{"text": "A"}], True)})
    run = RunDirectory(tmp_path / "run")
    source = PromptSource(str(prompts))
    summary = await run_stage(
        Stage(Brittle(), run, config, iter(source), 3, {}, show_progress=False)
    )
    assert (summary.done_now, summary.failed_now) == (2, 1)
    (failure,) = read_jsonl(run.path("toy_failures.jsonl"))
    assert failure["id"] == "p1" and failure["reason"] == "internal_error"
    assert "KeyError" in failure["detail"] and failure["calls"]


async def test_force_after_a_config_change_moves_grades_and_filtered_rows_aside(
    tmp_path: Path,
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b"])
    run = RunDirectory(tmp_path / "run")
    grader = {"grader": ScriptedChatModel([{"score": 4, "rationale": "ok"}], True)}
    config = make_config(scripted=scripted() | grader)
    await generate(PromptSource(str(prompts)), run, config, show_progress=False)
    await grade_items(run_items(run), run, config, show_progress=False)
    filter_run(run, 3, ["relevance"])
    assert all(run.path(name).exists() for name in (GRADES, GRADES_SUMMARY, SFT_FILTERED))

    changed = make_config(scripted=scripted() | grader, deliberation={"budget": 1})
    result = await generate(
        PromptSource(str(prompts)), run, changed, force=True, show_progress=False
    )
    archived = Path(result.stages[0].archived or "")
    for name in (GRADES, GRADES_SUMMARY, SFT_FILTERED, "traces.jsonl", "sft.jsonl"):
        assert (archived / name).exists(), f"{name} was not moved aside"
    assert not any(run.path(name).exists() for name in (GRADES, GRADES_SUMMARY, SFT_FILTERED))
    again = await grade_items(run_items(run), run, changed, show_progress=False)
    assert (again.stage.done_now, again.stage.skipped) == (2, 0)  # every new row is graded


async def test_dpo_force_never_resumes_threads_saved_under_the_old_belief_config(
    tmp_path: Path,
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a"])
    run = RunDirectory(tmp_path / "run")
    await generate(
        PromptSource(str(prompts)), run, make_config(scripted=scripted()), show_progress=False
    )
    # config A: the chosen side is judged safe, then the whisperer's endpoint fails: the row
    # fails with its checkpoint kept (after judge_chosen) for --retry-failed
    broken = belief_models(judge=[SAFE], whisperer=[ValueError("endpoint down")])
    first = await make_pairs(run, make_config(scripted=broken), show_progress=False)
    assert first.totals["failed_by_reason"] == {"endpoint_error": 1}
    # config B (more tries): its judge finds the chosen side unsafe. Resuming A's thread would
    # skip judge_chosen and ask the whisperer; B must start over and ask its judge.
    judge = ScriptedChatModel([UNSAFE], repeat_last=True)
    fresh = belief_models(judge=[UNSAFE]) | {"judge": judge}
    second = await make_pairs(
        run,
        make_config(scripted=fresh, belief={"tries": 5}),
        force=True,
        retry_failed=True,
        show_progress=False,
    )
    assert judge.calls == 1 and fresh["whisperer"].calls == 0
    assert second.totals["failed_by_reason"] == {"chosen_unsafe": 1}


def test_a_second_process_on_a_run_directory_is_refused_with_the_holders_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"q{n}" for n in range(6)])
    out = tmp_path / "run"
    with StubOpenAIServer(latency=0.3) as stub:
        flags = ["--base-url", stub.base_url, "--model", "stub", "--concurrency", "1", "-q"]
        args = ["generate", str(prompts), "--out", str(out), *flags]
        first = subprocess.Popen([sys.executable, "-m", "aidsafe", *args])
        try:
            deadline = time.monotonic() + 30
            while not (out / "traces.jsonl").exists():  # the first one is working
                assert time.monotonic() < deadline and first.poll() is None
                time.sleep(0.1)
            monkeypatch.setattr(sys, "argv", ["aidsafe", *args])
            with pytest.raises(SystemExit) as exit:
                main()
            err = " ".join(capsys.readouterr().err.split())
            assert exit.value.code == 2 and f"in use by aidsafe pid {first.pid}" in err
        finally:
            first.send_signal(signal.SIGKILL)  # the kernel gives its lock back
            first.wait()
        with pytest.raises(SystemExit) as exit:
            main()  # now it may go on
        assert exit.value.code in (0, None)
    traces = read_jsonl(out / "traces.jsonl")
    assert sorted(t["id"] for t in traces) == [f"p{n}" for n in range(6)]  # none twice
