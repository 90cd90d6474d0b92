"""Kill -9 at a chosen point: right after a node's answer is logged, for every node of every
recipe and task, the next run finishes every row with the output of an uninterrupted run, and
sends exactly the requests that were not logged (no finished call is sent twice). Then a small
randomized kill soak with the same promises."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aidsafe.testing import StubOpenAIServer
from tests.conftest import read_jsonl, write_prompts

ROOT = Path(__file__).parents[2]
UNSAFE = {"safe": False, "violated": [], "severity": 3, "rationale": "It helps with harm."}
TIMES = {"latency_s", "failed_at", "judged_at", "graded_at"}

# Runs the CLI; with a stage, SIGKILLs itself right after the nth answer of that stage is logged.
KILLER = """
import os, signal, sys
stage, nth = sys.argv[1], int(sys.argv[2])
if stage:
    from aidsafe.models import replay
    append, seen = replay.ResponseLog.append, [0]
    def killing_append(self, entry):
        append(self, entry)
        if entry["stage"] == stage:
            seen[0] += 1
            if seen[0] == nth:
                os.kill(os.getpid(), signal.SIGKILL)
    replay.ResponseLog.append = killing_append
sys.argv = ["aidsafe", *sys.argv[3:]]
from aidsafe.cli import main
main()
"""

# (what runs, the stage killed, at its nth logged answer: always inside the second of 3 rows)
CASES = [
    ("aidsafe", "decompose_intents", 2),
    ("aidsafe", "draft", 2),
    ("aidsafe", "deliberate", 2),
    ("aidsafe", "refine", 2),
    ("baseline", "answer_zero_shot", 2),
    ("unsafechain", "sample", 3),
    ("unsafechain", "judge_samples", 3),
    ("unsafechain", "correct", 3),
    ("unsafechain", "judge_corrections", 4),
    ("belief", "judge_chosen", 2),
    ("belief", "whisper", 4),
    ("belief", "generate_rejected", 5),
    ("belief", "judge_rejected", 6),
    ("belief", "grade:faithfulness_policy_cot", 3),
    ("judge", "judge", 2),
    ("grade", "grade:coherence", 2),
]
LEDGERS = {
    "aidsafe": ("traces.jsonl", "sft.jsonl", "failures.jsonl"),
    "baseline": ("traces.jsonl", "sft.jsonl", "failures.jsonl"),
    "unsafechain": ("traces.jsonl", "sft.jsonl", "failures.jsonl"),
    "belief": ("dpo.jsonl", "dpo_failures.jsonl"),
    "judge": ("judgments.jsonl",),
    "grade": ("grades.jsonl",),
}


@pytest.fixture(scope="module")
def stub() -> Iterator[StubOpenAIServer]:
    with StubOpenAIServer() as server:
        yield server


@pytest.fixture(scope="module")
def unsafe_stub() -> Iterator[StubOpenAIServer]:
    """Every verdict unsafe: UnsafeChain's prompts are hard and every answer gets corrected."""
    with StubOpenAIServer(answers={"Verdict": UNSAFE}) as server:
        yield server


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crash")


def aidsafe(stage: str, nth: int, *args: str, timeout: float = 120) -> int:
    command = [sys.executable, "-c", KILLER, stage, str(nth), *args, "--quiet"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


def config_file(workspace: Path, stub: StubOpenAIServer) -> Path:
    path = workspace / f"config-{stub.base_url.rsplit(':', 1)[1].split('/')[0]}.yaml"
    path.write_text(
        "concurrency: 1\nunsafechain: {samples: 2}\nmodels:\n  default:\n    backend: openai\n"
        f"    base_url: {stub.base_url}\n    model: stub\n    retry_wait: 0\n"
    )
    return path


def command(what: str, workspace: Path, out: Path, config: Path) -> list[str]:
    """The command of one recipe or task, into `out` (prepared with its input run if needed)."""
    prompts = write_prompts(workspace / "prompts.jsonl", ["first", "second", "third"])
    if what in ("aidsafe", "baseline", "unsafechain"):
        return ["generate", str(prompts), "--out", str(out), "--recipe", what, "-c", str(config)]
    if what == "judge":
        samples = workspace / "samples.jsonl"
        rows = [{"id": f"s{n}", "prompt": f"q{n}", "response": "Sure."} for n in range(3)]
        samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return ["judge", str(samples), "--out", str(out), "-c", str(config)]
    source = workspace / f"source-{config.name}"
    if not source.exists():  # a finished aidsafe run of the same prompts, made once
        assert aidsafe("", 0, *command("aidsafe", workspace, source, config)) == 0
    shutil.copytree(source, out)
    return ["dpo" if what == "belief" else "grade", str(out), "-c", str(config)]


def ledgers(what: str, out: Path) -> dict[str, list[dict[str, Any]]]:
    def timeless(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if k not in TIMES}
        if isinstance(value, list):
            return [timeless(item) for item in value]
        return value

    return {
        name: sorted((timeless(row) for row in read_jsonl(out / name)), key=lambda r: r["id"])
        for name in LEDGERS[what]
    }


def logged(out: Path, what: str) -> int:
    prefix = "belief" if what == "belief" else what
    return sum(
        1
        for path in (out / "responses").glob(f"{prefix}-*.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    )


def settled(server: StubOpenAIServer) -> int:
    """The stub's request count once requests the killed process had already sent have all
    arrived (the server reads them on its own threads)."""
    count = len(server.requests)
    while True:
        time.sleep(0.3)
        if len(server.requests) == count:
            return count
        count = len(server.requests)


REFERENCE: dict[str, tuple[dict[str, list[dict[str, Any]]], int]] = {}


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("what", "stage", "nth"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_kill_right_after_an_answer_is_logged_loses_and_repeats_nothing(
    stub: StubOpenAIServer,
    unsafe_stub: StubOpenAIServer,
    workspace: Path,
    what: str,
    stage: str,
    nth: int,
) -> None:
    server = unsafe_stub if what == "unsafechain" else stub
    config = config_file(workspace, server)
    if what not in REFERENCE:  # an uninterrupted run: what the output and the requests must be
        out = workspace / f"reference-{what}"
        args = command(what, workspace, out, config)
        before = len(server.requests)
        assert aidsafe("", 0, *args) == 0
        REFERENCE[what] = (ledgers(what, out), len(server.requests) - before)
    expected, requests = REFERENCE[what]

    out = workspace / f"killed-{what}-{stage}"
    args = command(what, workspace, out, config)
    assert aidsafe(stage, nth, *args) == -signal.SIGKILL, "the kill point was never reached"
    answered = logged(out, what)
    assert answered > 0
    before = settled(server)
    assert aidsafe("", 0, *args) == 0
    assert len(server.requests) - before == requests - answered, "a logged answer was asked again"
    assert ledgers(what, out) == expected


@pytest.mark.timeout(600)
def test_random_kills_lose_nothing_and_repeat_only_calls_in_flight(workspace: Path) -> None:
    rows, concurrency, kills = 24, 4, 10
    prompts = write_prompts(workspace / "soak.jsonl", [f"soak prompt {n}" for n in range(rows)])
    with StubOpenAIServer(latency=0.15) as server:  # a run takes ~4 s: kills land mid-run
        config = workspace / "soak.yaml"
        config.write_text(
            f"concurrency: {concurrency}\nmodels:\n  default:\n    backend: openai\n"
            f"    base_url: {server.base_url}\n    model: stub\n    retry_wait: 0\n"
        )
        reference = workspace / "soak-reference"
        base = ["generate", str(prompts), "-c", str(config), "--quiet", "--out"]
        aidsafe("", 0, *base, str(reference))
        requests = len(server.requests)
        out = workspace / "soak-killed"
        command_line = [sys.executable, "-m", "aidsafe", *base, str(out)]
        rng = random.Random(7)
        killed = 0
        while killed < kills:
            process = subprocess.Popen(command_line, cwd=ROOT, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(1.0, 2.5))  # imports take about a second
            if process.poll() is not None:
                break  # finished before this kill
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed += 1
        assert killed >= kills // 2, f"only {killed} kills landed before the run finished"
        assert subprocess.run(command_line, cwd=ROOT, timeout=300).returncode == 0
        extra = len(server.requests) - 2 * requests
    assert ledgers("aidsafe", out) == ledgers("aidsafe", reference)
    # only the requests in flight when a kill landed (at most `concurrency` each) went twice
    assert 0 <= extra <= killed * concurrency, (extra, killed)
