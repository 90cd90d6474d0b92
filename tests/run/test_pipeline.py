"""Runs over a prompt file with scripted models: outputs, failures, resume, config guard."""

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import pytest

from aidsafe.errors import UserError
from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import StageSummary, generate
from aidsafe.tasks.grading import grade_items, run_items
from tests.conftest import (
    AGREE,
    INTENTS,
    REFINE,
    REVISE,
    belief_models,
    make_config,
    read_jsonl,
    scripted,
    write_prompts,
)


async def go(
    tmp_path: Path,
    models: dict[str, ScriptedChatModel],
    prompts: Path,
    *,
    settings: dict[str, Any] | None = None,
    **kwargs: Any,
) -> StageSummary:
    """One `generate` run of the aidsafe recipe with `models` (scripted, per role) and config
    keys `settings` (default: concurrency 1); its one stage's summary."""
    config = make_config(scripted=models, **(settings or {"concurrency": 1}))
    result = await generate(
        PromptSource(str(prompts)),
        RunDirectory(tmp_path / "run"),
        config,
        show_progress=False,
        **kwargs,
    )
    assert [stage.recipe for stage in result.stages] == ["aidsafe"]
    return result.stages[0]


async def test_run_writes_traces_sft_failures_and_manifest(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b", "c"])
    summary = await go(
        tmp_path,
        scripted(deliberators=[[REVISE], [AGREE]]),
        prompts,
        settings={"concurrency": 3},
    )
    run = tmp_path / "run"
    assert (summary.done_now, summary.failed_now) == (3, 0)
    traces = read_jsonl(run / "traces.jsonl")
    assert sorted(t["id"] for t in traces) == ["p0", "p1", "p2"]
    trace = traces[0]
    assert trace["intents"] == INTENTS
    assert len(trace["initial_cot"]) == 2 and trace["deliberation"]["agreed"] is True
    assert [t["agent"] for t in trace["deliberation"]["turns"]] == [
        "deliberator_1",
        "deliberator_2",
    ]
    assert trace["removed"][0]["reason"] == "redundant"
    assert (
        trace["policy_set"]["name"] == "aidsafe-default"
        and len(trace["policy_set"]["sha256"]) == 64
    )
    assert trace["models"]["refiner"]["temperature"] == 0.0
    assert {c["role"] for c in trace["calls"]} == {
        "decomposer",
        "drafter",
        "deliberator_1",
        "deliberator_2",
        "refiner",
    }
    sft = read_jsonl(run / "sft.jsonl")
    assert set(sft[0]) == {"id", "messages", "metadata"}
    user, assistant = sft[0]["messages"]
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert assistant["content"].startswith("<think>\n1. The user wants")
    assert assistant["content"].endswith("</think>\n\n" + REFINE["response"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["done"] == 3 and manifest["tokens_by_role"]["refiner"]["calls"] == 3
    assert manifest["packages"]["langgraph"]
    # TRL loads conversational SFT rows from exactly this layout
    loaded = datasets.Dataset.from_json(str(run / "sft.jsonl"))
    assert loaded.column_names == ["id", "messages", "metadata"]


async def test_bad_rows_and_failed_rows_go_to_failures_and_the_run_goes_on(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    rows = [
        {"id": "ok", "prompt": "fine"},
        {"id": "empty", "prompt": " "},
        {"id": "ok", "prompt": "same id"},
        {"id": "bad", "prompt": "refiner breaks"},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def refiner(messages: list[Any]) -> Any:
        return "garbage" if "refiner breaks" in messages[1].text else REFINE

    models = scripted(refiner=[refiner])
    summary = await go(tmp_path, models, prompts, settings={"repair_attempts": 1})
    failures = {f["id"] + f["reason"]: f for f in read_jsonl(tmp_path / "run" / "failures.jsonl")}
    assert set(failures) == {"emptyinvalid_prompt", "okduplicate_id", "badmalformed_output"}
    assert failures["badmalformed_output"]["stage"] == "refine"
    assert failures["badmalformed_output"]["raw_output"] == "garbage"
    assert len(failures["badmalformed_output"]["calls"]) == 5  # earlier stages' calls are kept
    assert [t["id"] for t in read_jsonl(tmp_path / "run" / "traces.jsonl")] == ["ok"]
    assert (summary.done_now, summary.failed_now) == (1, 3)
    # a re-run finds everything accounted for and records nothing twice
    again = await go(tmp_path, scripted(), prompts, settings={"repair_attempts": 1})
    assert (again.done_now, again.failed_now, again.skipped) == (0, 0, 4)
    assert len(read_jsonl(tmp_path / "run" / "failures.jsonl")) == 3


KILLED_RUN = """
import asyncio, os, signal, sys
from pathlib import Path
from aidsafe.inputs import PromptSource
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from tests.conftest import REFINE, make_config, scripted

def kill_now(messages):
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of p2's refiner call

tmp, checkpoint = Path(sys.argv[1]), sys.argv[2]
models = scripted(refiner=[REFINE, REFINE, kill_now])
config = make_config(scripted=models, concurrency=1, checkpoint=checkpoint)
asyncio.run(generate(PromptSource(str(tmp / "p.jsonl")), RunDirectory(tmp / "run"),
                     config, show_progress=False))
"""


@pytest.mark.parametrize("checkpoint", ["step", "row"])
async def test_run_killed_mid_row_resumes_without_repeating_finished_calls(
    tmp_path: Path, checkpoint: str
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(5)])
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(tmp_path), checkpoint],
        cwd=Path(__file__).parents[2],  # the repository root, where `tests` imports
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "run"
    assert [t["id"] for t in read_jsonl(run / "traces.jsonl")] == ["p0", "p1"]

    second = scripted()
    summary = await go(tmp_path, second, prompts, settings={"checkpoint": checkpoint})
    traces = read_jsonl(run / "traces.jsonl")
    assert sorted(t["id"] for t in traces) == [
        "p0",
        "p1",
        "p2",
        "p3",
        "p4",
    ]  # none lost, none twice
    assert [s["id"] for s in read_jsonl(run / "sft.jsonl")] == [t["id"] for t in traces]
    assert read_jsonl(run / "failures.jsonl") == []
    assert summary.skipped == 2 and summary.done_now == 3
    # p2 had finished decompose, draft and deliberation before the kill: with `step`
    # checkpoints only its refiner reruns; with `row` checkpoints the whole row does
    redone = 2 if checkpoint == "step" else 3
    assert second["decomposer"].calls == redone
    assert second["drafter"].calls == redone
    assert second["deliberator_1"].calls == redone
    assert second["refiner"].calls == 3
    p2 = next(t for t in traces if t["id"] == "p2")
    assert [c["role"] for c in p2["calls"]] == ["decomposer", "drafter", "deliberator_1", "refiner"]


async def test_half_written_ledger_line_is_cut_and_the_row_recovered(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b"])
    await go(tmp_path, scripted(), prompts)
    run = tmp_path / "run"
    lines = (run / "traces.jsonl").read_text().splitlines(keepends=True)
    (run / "traces.jsonl").write_text(lines[0] + lines[1][:40])  # killed mid-write
    again = await go(tmp_path, scripted(), prompts)
    assert again.done_now == 1
    assert [t["id"] for t in read_jsonl(run / "traces.jsonl")] == ["p0", "p1"]
    assert [s["id"] for s in read_jsonl(run / "sft.jsonl")] == ["p0", "p1"]


async def test_changed_config_is_refused_unless_forced(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a"])
    await go(tmp_path, scripted(), prompts)
    hotter = {"models": {"default": {"retry_wait": 0}, "refiner": {"temperature": 0.5}}}
    with pytest.raises(UserError, match=r"models.refiner.temperature: 0.0 -> 0.5"):
        await go(tmp_path, scripted(), prompts, settings={"concurrency": 1, **hotter})
    summary = await go(
        tmp_path, scripted(), prompts, settings={"concurrency": 1, **hotter}, force=True
    )
    assert summary.archived and (Path(summary.archived) / "traces.jsonl").exists()
    assert len(read_jsonl(tmp_path / "run" / "traces.jsonl")) == 1


async def test_a_changed_concurrency_resumes_without_refusal_or_redoing_rows(
    tmp_path: Path,
) -> None:
    """Concurrency is not part of the fingerprint: a resumed run may change it."""
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b", "c"])
    run = tmp_path / "run"
    first = await go(tmp_path, scripted(), prompts, settings={"concurrency": 1}, limit=2)
    assert first.done_now == 2
    fingerprint = json.loads((run / "manifest.json").read_text())["fingerprint"]
    again = scripted()
    summary = await go(tmp_path, again, prompts, settings={"concurrency": 8})  # no UserError
    assert summary.archived is None  # nothing was moved aside
    assert (summary.skipped, summary.done_now, summary.failed_now) == (2, 1, 0)
    assert again["decomposer"].calls == again["refiner"].calls == 1  # only the new row ran
    assert [t["id"] for t in read_jsonl(run / "traces.jsonl")] == ["p0", "p1", "p2"]
    assert [s["id"] for s in read_jsonl(run / "sft.jsonl")] == ["p0", "p1", "p2"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["fingerprint"] == fingerprint
    assert [r["concurrency"] for r in manifest["runs"]] == [1, 8]


async def test_retry_failed_runs_failed_rows_again(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b"])
    broken = scripted(refiner=[REFINE, "garbage"])
    await go(tmp_path, broken, prompts, settings={"repair_attempts": 0})
    assert [f["id"] for f in read_jsonl(tmp_path / "run" / "failures.jsonl")] == ["p1"]
    fixed = scripted()
    summary = await go(tmp_path, fixed, prompts, settings={"repair_attempts": 0}, retry_failed=True)
    assert summary.done_now == 1 and fixed["decomposer"].calls == 0  # resumed at the refiner
    assert read_jsonl(tmp_path / "run" / "failures.jsonl") == []
    assert sorted(t["id"] for t in read_jsonl(tmp_path / "run" / "traces.jsonl")) == ["p0", "p1"]


async def test_limit_takes_the_first_rows(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b", "c"])
    summary = await go(tmp_path, scripted(), prompts, limit=2)
    assert summary.total == 2
    assert [t["id"] for t in read_jsonl(tmp_path / "run" / "traces.jsonl")] == ["p0", "p1"]


def test_ctrl_c_stops_cleanly_and_the_same_command_continues(tmp_path: Path) -> None:
    import time

    from aidsafe.testing import StubOpenAIServer

    # 20 rows of ~0.6 s each: the interrupt lands long before the run could end
    prompts = write_prompts(tmp_path / "p.jsonl", [f"prompt {n}" for n in range(20)])
    run = tmp_path / "run"
    with StubOpenAIServer(latency=0.15) as stub:
        command = [
            sys.executable,
            "-m",
            "aidsafe",
            "generate",
            str(prompts),
            "--out",
            str(run),
            "--base-url",
            stub.base_url,
            "--model",
            "stub",
            "--concurrency",
            "1",
            "--quiet",
        ]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # a test run started in the background (`cmd &`) ignores SIGINT, and the child would
            # inherit that: give it the default, as a terminal's Ctrl-C finds it
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 60
        while len(read_jsonl(run / "traces.jsonl")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be interrupted"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 130, err
        assert f"finished rows are saved in {run}; run the same command again to continue" in (
            " ".join(err.split())
        )
        finished = len(read_jsonl(run / "traces.jsonl"))
        assert 2 <= finished < 20
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["runs"][-1]["interrupted"] is True

        again = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", *command[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, err = again.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            again.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            _, err = again.communicate()
            pytest.fail(f"the resumed run hung; its threads:\n{err[-8000:]}")
        assert again.returncode == 0, err
        requests = len(stub.requests)
    traces = read_jsonl(run / "traces.jsonl")
    assert sorted(t["id"] for t in traces) == sorted(f"p{n}" for n in range(20))
    calls_per_row = 4  # decompose, draft, one agreeing deliberator, refine
    assert requests <= 20 * calls_per_row + 1  # at most the one call in flight is repeated


async def test_a_chain_whose_first_stage_finished_no_row_runs_an_empty_second_stage(
    tmp_path: Path,
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b"])
    broken = scripted(decomposer=["not json"])  # every row fails: malformed_output
    grader = {"grader": ScriptedChatModel([{"score": 3, "rationale": "ok"}], True)}
    config = make_config(
        scripted=broken | belief_models() | grader, recipe="aidsafe-dpo", repair_attempts=0
    )
    run = RunDirectory(tmp_path / "run")
    result = await generate(PromptSource(str(prompts)), run, config, show_progress=False)
    assert [(s.recipe, s.done_now, s.failed_now) for s in result.stages] == [
        ("aidsafe", 0, 2),
        ("belief", 0, 0),
    ]
    assert run.path("sft.jsonl").exists() and read_jsonl(run.path("sft.jsonl")) == []
    graded = await grade_items(run_items(run), run, config, show_progress=False)
    assert (graded.stage.done_now, graded.summary["rows"]) == (0, 0)
