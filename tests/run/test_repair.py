"""Damaged ledgers are named, never a traceback: a bad line anywhere gives exit 2 with the file
and line; `aidsafe repair` moves such lines into a quarantine file and rebuilds the derived
rows; the rows they held are done again. A missing traces.jsonl is refused, not redone."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aidsafe.cli import main
from aidsafe.testing import StubOpenAIServer
from tests.conftest import read_jsonl, write_prompts


def cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["aidsafe", *args])
    try:
        main()
    except SystemExit as exit:
        return int(exit.code or 0)
    return 0


@pytest.fixture
def finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], Path]:
    """A finished 3-row run against the stub, and the command that makes it."""
    stub = StubOpenAIServer().__enter__()
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b", "c"])
    out = tmp_path / "run"
    command = ["generate", str(prompts), "--out", str(out), "-q"]
    command += ["--base-url", stub.base_url, "--model", "stub"]
    assert cli(monkeypatch, *command) == 0
    yield command, out
    stub.__exit__()


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("traces.jsonl", "{not json"),
        ("sft.jsonl", '{"messages": []}'),  # a JSON object without its id
        ("failures.jsonl", "garbage"),
    ],
)
def test_a_damaged_line_is_named_then_repaired(
    finished: tuple[list[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    damage: str,
) -> None:
    command, out = finished
    ledger = out / name
    lines = ledger.read_text().splitlines(keepends=True) if ledger.exists() else []
    at = 1 if lines else 0  # the second line, or the first of an empty ledger
    if name == "traces.jsonl":
        lines[at] = damage + "\n"  # row p1's record is lost
    else:
        lines.insert(at, damage + "\n")
    ledger.write_text("".join(lines))
    capsys.readouterr()
    assert cli(monkeypatch, *command) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{ledger}:{at + 1}: damaged line" in err and "aidsafe repair" in err
    assert "Traceback" not in err
    assert cli(monkeypatch, "repair", str(out)) == 0
    quarantine = read_jsonl(out / name.replace(".jsonl", ".quarantine.jsonl"))
    assert [(q["line"], q["text"]) for q in quarantine] == [(at + 1, damage)]
    assert cli(monkeypatch, *command) == 0  # goes on: a lost row is done again
    traces = read_jsonl(out / "traces.jsonl")
    assert sorted(t["id"] for t in traces) == ["p0", "p1", "p2"]
    assert [r["id"] for r in read_jsonl(out / "sft.jsonl")] == [t["id"] for t in traces]


def test_a_missing_traces_file_with_sft_rows_is_refused(
    finished: tuple[list[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    command, out = finished
    (out / "traces.jsonl").unlink()
    capsys.readouterr()
    assert cli(monkeypatch, *command) == 2
    assert "traces.jsonl is missing but sft.jsonl holds rows" in capsys.readouterr().err
    assert len(read_jsonl(out / "sft.jsonl")) == 3  # not emptied
