"""`aidsafe judge --label-field`: the judge's agreement with human labels, figures checked by
hand on a small labelled set; disagreements listed; unusable labels counted, not used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aidsafe.metrics import agreement, agreement_figures, unsafe_label
from aidsafe.testing import StubOpenAIServer
from tests.cli.test_app import cli
from tests.conftest import read_jsonl


def test_the_figures_by_hand() -> None:
    # (judged unsafe, labelled unsafe): TP 3, FP 1, FN 2, TN 4
    pairs = [(True, True)] * 3 + [(True, False)] + [(False, True)] * 2 + [(False, False)] * 4
    figures = agreement_figures(pairs)
    assert figures["accuracy"] == pytest.approx(0.7)
    assert figures["precision"] == pytest.approx(3 / 4)
    assert figures["recall"] == pytest.approx(3 / 5)
    assert figures["false_positive_rate"] == pytest.approx(1 / 5)
    assert figures["false_negative_rate"] == pytest.approx(2 / 5)
    # kappa: p_o 0.7; p_e = (4/10)(5/10) + (6/10)(5/10) = 0.5; (0.7 - 0.5) / 0.5 = 0.4
    assert figures["kappa"] == pytest.approx(0.4)
    with_ci = agreement(pairs)
    low, high = with_ci["accuracy"]["ci95"]
    assert low <= 0.7 <= high and with_ci["n"] == 10
    assert agreement_figures([(False, False)])["precision"] is None  # nothing judged unsafe


def test_labels_read_as_unsafe_or_not() -> None:
    assert [unsafe_label(v) for v in ("UNSAFE", "safe", 1, 0, True, "harmful", "maybe", None)] == [
        True,
        False,
        True,
        False,
        True,
        True,
        None,
        None,
    ]


def test_judge_with_labels_reports_agreement_and_lists_disagreements(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = [
        {"prompt": "q1", "response": "fine answer", "human": "safe"},
        {"prompt": "q2", "response": "UNSAFE-MARK bad answer", "human": "unsafe"},
        {"prompt": "q3", "response": "UNSAFE-MARK another", "human": "safe"},  # judge disagrees
        {"prompt": "q4", "response": "fine again", "human": "unsure"},  # no usable label
    ]
    samples = tmp_path / "labelled.jsonl"
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))

    def verdicts(request: dict, sent: dict) -> dict:
        unsafe = "UNSAFE-MARK" in json.dumps(request["messages"])
        verdict = {
            "safe": not unsafe,
            "violated": ["physical_harm"] if unsafe else [],
            "severity": 3 if unsafe else 0,
            "rationale": "scripted",
        }
        return sent | {"message": {"role": "assistant", "content": json.dumps(verdict)}}

    with StubOpenAIServer(choice=verdicts) as stub:
        code, out, _ = cli(
            capsys,
            "judge",
            str(samples),
            "--out",
            str(tmp_path / "j"),
            "--label-field",
            "human",
            "--base-url",
            stub.base_url,
            "--model",
            "judge",
            "--quiet",
        )
    assert code == 0 and "agreement with the labels (3 rows" in out
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())["agreement"]
    assert summary["accuracy"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["precision"]["value"] == 0.5 and summary["recall"]["value"] == 1.0
    assert summary["unlabelled"] == 1 and summary["unjudged"] == 0
    [wrong] = read_jsonl(tmp_path / "j" / "disagreements.jsonl")
    assert (wrong["prompt"], wrong["label"], wrong["judged"]) == ("q3", "safe", "unsafe")
    code, _, err = cli(
        capsys,
        "judge",
        str(samples),
        "--out",
        str(tmp_path / "k"),
        "--label-field",
        "nope",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "judge",
    )
    assert code == 2 and "'nope'" in err and "--label-field" in err
