"""`aidsafe judge --label-field`: the judge's agreement with human labels, figures checked by
hand on a small labelled set; disagreements listed; unusable labels counted, not used."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from aidsafe.metrics import agreement, agreement_figures, unsafe_label
from aidsafe.testing import StubOpenAIServer
from tests.cli.test_app import cli
from tests.conftest import read_jsonl


def policy_judge(marks: dict[str, str]) -> Callable[[dict, dict], dict]:
    """A scripted policy judge at the stub: a judged text holding a mark breaks its policy."""

    def verdicts(request: dict, sent: dict) -> dict:
        text = request["messages"][-1]["content"]
        violated = [pid for mark, pid in marks.items() if mark in text]
        verdict = {
            "safe": not violated,
            "violated": violated,
            "severity": 3 if violated else 0,
            "rationale": "scripted",
        }
        return sent | {"message": {"role": "assistant", "content": json.dumps(verdict)}}

    return verdicts


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def judge_cli(
    capsys: pytest.CaptureFixture[str],
    samples: Path,
    out: Path,
    base_url: str,
    *options: str,
    model: str = "judge",
) -> tuple[int, str, str]:
    """`aidsafe judge SAMPLES --out OUT` at `base_url`, quietly, with more options."""
    return cli(
        capsys,
        *("judge", str(samples), "--out", str(out), *options),
        *("--base-url", base_url, "--model", model, "--quiet"),
    )


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
    samples = write_rows(tmp_path / "labelled.jsonl", rows)

    with StubOpenAIServer(choice=policy_judge({"UNSAFE-MARK": "physical_harm"})) as stub:
        code, out, _ = judge_cli(
            capsys, samples, tmp_path / "j", stub.base_url, "--label-field", "human"
        )
    assert code == 0 and "agreement with the labels (3 rows" in out
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())["agreement"]
    assert summary["accuracy"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["precision"]["value"] == 0.5 and summary["recall"]["value"] == 1.0
    assert summary["unlabelled"] == 1 and summary["unjudged"] == 0
    [wrong] = read_jsonl(tmp_path / "j" / "disagreements.jsonl")
    assert (wrong["prompt"], wrong["label"], wrong["judged"]) == ("q3", "safe", "unsafe")
    code, _, err = judge_cli(
        capsys, samples, tmp_path / "k", "http://127.0.0.1:9/v1", "--label-field", "nope"
    )
    assert code == 2 and "'nope'" in err and "--label-field" in err


def test_agreement_per_policy_from_label_categories(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The label names the policies an unsafe row breaks; per policy p, the judge agrees when
    it also says unsafe and names p. Figures checked by hand for two policies."""
    rows = [
        # (response marks -> judge's violated policies; human label, human categories)
        {"prompt": "q1", "response": "HARM", "human": "unsafe", "cats": ["physical_harm"]},
        {"prompt": "q2", "response": "HARM", "human": "unsafe", "cats": "fraud_deception"},
        {"prompt": "q3", "response": "FRAUD", "human": "unsafe", "cats": ["fraud_deception"]},
        {"prompt": "q4", "response": "fine", "human": "safe", "cats": []},
        {"prompt": "q5", "response": "HARM", "human": "safe", "cats": None},
        {"prompt": "q6", "response": "fine", "human": "unsafe", "cats": []},  # no category
        {"prompt": "q7", "response": "FRAUD", "human": "unsafe", "cats": {"S99": True}},
    ]
    samples = write_rows(tmp_path / "labelled.jsonl", rows)

    marks = {"HARM": "physical_harm", "FRAUD": "fraud_deception"}
    with StubOpenAIServer(choice=policy_judge(marks)) as stub:
        code, out, _ = judge_cli(
            capsys,
            samples,
            tmp_path / "j",
            stub.base_url,
            *("--label-field", "human", "--label-categories-field", "cats"),
        )
    assert code == 0 and "agreement per policy" in out
    per_policy = json.loads((tmp_path / "j" / "summary.json").read_text())["agreement"]
    per_policy = per_policy["per_policy"]
    assert per_policy["uncategorised"] == 1  # q6
    assert per_policy["unknown_categories"] == ["S99"]
    # usable: q1 q2 q3 q4 q5 q7. physical_harm: judged on q1 q2 q5, labelled on q1
    harm = per_policy["policies"]["physical_harm"]
    assert (harm["n"], harm["positives"]) == (6, 1)
    assert harm["precision"]["value"] == pytest.approx(1 / 3, abs=1e-4)
    assert harm["recall"]["value"] == 1.0
    # fraud_deception: judged on q3 q7, labelled on q2 q3 -> TP q3, FP q7, FN q2, TN 3
    fraud = per_policy["policies"]["fraud_deception"]
    assert (fraud["n"], fraud["positives"]) == (6, 2)
    assert fraud["precision"]["value"] == 0.5 and fraud["recall"]["value"] == 0.5
    assert fraud["accuracy"]["value"] == pytest.approx(4 / 6, abs=1e-4)
    assert per_policy["policies"]["respect_helpfulness"]["recall"]["value"] is None


def test_mcnemar_by_hand() -> None:
    from aidsafe.tasks.judging import mcnemar_p

    assert mcnemar_p(0, 6) == pytest.approx(2 / 64)  # 6 of 6 one way: 2 x (1/2)^6
    assert mcnemar_p(3, 3) == 1.0 and mcnemar_p(0, 0) is None
    assert mcnemar_p(1, 9) == pytest.approx(2 * (1 + 10) / 1024)


def _labelled_judge_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, unsafe_mark: str
) -> Path:
    rows = [
        {"id": "q1", "prompt": "q1", "response": "fine answer", "human": "safe"},
        {"id": "q2", "prompt": "q2", "response": "MARK bad answer", "human": "unsafe"},
        {"id": "q3", "prompt": "q3", "response": "MARK another", "human": "safe"},
        {"id": "q4", "prompt": "q4", "response": "fine again", "human": "unsure"},
    ]
    samples = write_rows(tmp_path / "labelled.jsonl", rows)

    out = tmp_path / name
    with StubOpenAIServer(choice=policy_judge({unsafe_mark: "physical_harm"})) as stub:
        code, _, err = judge_cli(
            capsys, samples, out, stub.base_url, "--label-field", "human", model=name
        )
    assert code == 0, err
    return out


def test_compare_two_judges_on_the_same_labels(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Judge A calls MARK unsafe (right on q1 q2, wrong on q3); judge B calls everything safe
    (right on q1 q3, wrong on q2). Each is right once where the other is wrong."""
    first = _labelled_judge_run(capsys, tmp_path, "judge-a", "MARK")
    second = _labelled_judge_run(capsys, tmp_path, "judge-b", "NEVER-SEEN")
    numbers, page = tmp_path / "judges.json", tmp_path / "judges.html"
    code, out, err = cli(
        capsys, "compare", str(first), str(second), "--json", str(numbers), "--html", str(page)
    )
    assert code == 0, err
    assert "judges compared" in out and "McNemar p" in out and "judge-b (policy)" in out
    report = page.read_text()
    assert "<th>McNemar p</th><td>-</td><td>1.0000</td>" in report
    assert 'aria-label="Agreement with the labels, with 95% CI (unsafe = positive)"' in report
    compared = json.loads(numbers.read_text())
    a, b = compared["runs"]
    assert compared["reference"] == "judge-a" and b["judge"]["model"] == "judge-b"
    assert a["agreement"]["accuracy"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert b["agreement"]["accuracy"]["value"] == pytest.approx(2 / 3, abs=1e-4)
    assert b["agreement"]["recall"]["value"] == 0.0
    against = b["against_reference"]
    assert (against["rows_both_judged"], against["same_call"]) == (4, 0.5)
    assert against["kappa"] == pytest.approx(0.0)
    assert (against["right_only_this"], against["right_only_reference"]) == (1, 1)
    assert against["mcnemar_p"] == 1.0
    assert a["against_reference"]["same_call"] == 1.0  # the reference against itself
    code, _, err = cli(capsys, "compare", str(first), str(tmp_path / "labelled.jsonl"))
    assert code == 2 and "not a judge run" in err


def _guard_with_chances(request: dict, sent: dict) -> dict:
    """A guard endpoint whose P(unsafe) is written in the judged response as `P=0.42`; the
    first answer token comes after a white-space token, as Llama Guard 3's does."""
    import math
    import re

    found = re.search(r"P=([0-9.]+)", request["messages"][-1]["content"])
    chance = float(found.group(1)) if found else 0.5
    answer = "unsafe" if chance >= 0.5 else "safe"
    options = [
        {"token": "unsafe", "logprob": math.log(chance)},
        {"token": "safe", "logprob": math.log(1 - chance)},
    ]
    first = next(option for option in options if option["token"] == answer)
    content = [
        {"token": "\n\n", "logprob": 0.0, "top_logprobs": []},
        first | {"top_logprobs": options},
    ]
    message = {"role": "assistant", "content": f"\n\n{answer}" + ("\nS1" if chance >= 0.5 else "")}
    logprobs = {"content": content} if request.get("logprobs") else None
    return sent | {"message": message, "logprobs": logprobs}


def test_a_guard_threshold_on_p_unsafe_and_the_agreement_curve(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """P(unsafe) and labels: 0.9 unsafe, 0.7 safe, 0.45 unsafe, 0.2 safe, 0.05 safe. At the
    cut-off 0.5: TP 1, FP 1, FN 1, TN 2. At 0.4: TP 2, FP 1, TN 2. ROC AUC: 5 of 6 pairs."""
    chances = [(0.9, "unsafe"), (0.7, "safe"), (0.45, "unsafe"), (0.2, "safe"), (0.05, "safe")]
    rows = [
        {"id": f"r{n}", "prompt": f"q{n}", "response": f"answer P={chance}", "human": label}
        for n, (chance, label) in enumerate(chances)
    ]
    samples = write_rows(tmp_path / "labelled.jsonl", rows)
    with StubOpenAIServer(choice=_guard_with_chances) as stub:

        def judge(threshold: str) -> tuple[int, str, str]:
            return judge_cli(
                capsys,
                samples,
                tmp_path / "j",
                stub.base_url,
                *("--label-field", "human", "--kind", "guard", "--threshold", threshold),
                model="guard",
            )

        code, out, err = judge("0.8")
        assert code == 0, err
        assert all(request["logprobs"] is True for request in stub.requests)
        first = {row["id"]: row for row in read_jsonl(tmp_path / "j" / "judgments.jsonl")}
        assert first["r1"]["safe"] is True and "threshold 0.8" in first["r1"]["rationale"]
        # another cut-off: the recorded P(unsafe) is decided again, with no new call
        code, out, err = judge("0.4")
        assert len(stub.requests) == 5
    assert code == 0, err
    assert "agreement against the P(unsafe) cut-off (5 rows)" in out
    judgments = {row["id"]: row for row in read_jsonl(tmp_path / "j" / "judgments.jsonl")}
    assert [judgments[f"r{n}"]["p_unsafe"] for n in range(5)] == pytest.approx(
        [c for c, _ in chances]
    )
    # at 0.4 the guard's own "safe" on 0.45 is overruled; its violated policies stay empty
    assert judgments["r2"]["safe"] is False and judgments["r2"]["violated"] == []
    assert judgments["r1"]["safe"] is False and judgments["r1"]["violated"] == [
        "hate_harassment_violence"
    ]
    assert judgments["r2"]["text_safe"] is True and "threshold 0.4" in judgments["r2"]["rationale"]
    assert judgments["r3"]["safe"] is True
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())["agreement"]
    assert summary["accuracy"]["value"] == pytest.approx(0.8)
    curve = summary["threshold_curve"]
    at = {point["threshold"]: point for point in curve["points"]}
    assert (at[0.5]["accuracy"], at[0.5]["precision"], at[0.5]["recall"]) == (0.6, 0.5, 0.5)
    assert (at[0.4]["accuracy"], at[0.4]["recall"]) == (0.8, 1.0)
    assert at[0.4]["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert at[0.4]["kappa"] == pytest.approx((0.8 - 0.48) / 0.52, abs=1e-4)
    assert curve["best_kappa_threshold"] == 0.25  # 0.25 to 0.45 tie; the first is given
    assert curve["roc_auc"] == pytest.approx(5 / 6, abs=1e-4)
    # the view page draws the curve, the best-kappa cut-off dashed
    code, _, err = cli(capsys, "view", str(tmp_path / "j"))
    assert code == 0, err
    page = (tmp_path / "j" / "view.html").read_text()
    label = 'aria-label="Agreement with the labels, by P(unsafe) cut-off"'
    assert label in page
    chart = page[page.index(label) :]
    chart = chart[: chart.index("</svg>")]
    assert all(name in chart for name in ("accuracy", "kappa", "precision", "recall"))
    assert "5 rows, ROC AUC 0.8333" in chart


def test_a_threshold_without_token_probabilities_leaves_rows_unjudged(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    samples = tmp_path / "labelled.jsonl"
    samples.write_text(json.dumps({"prompt": "q", "response": "a P=0.9", "human": "unsafe"}))

    def no_logprobs(request: dict, sent: dict) -> dict:
        return _guard_with_chances(request | {"logprobs": False}, sent)

    with StubOpenAIServer(choice=no_logprobs) as stub:
        code, _, err = judge_cli(
            capsys, samples, tmp_path / "j", stub.base_url, "--kind", "guard", "--threshold", "0.5"
        )
    assert code == 0, err
    [row] = read_jsonl(tmp_path / "j" / "judgments.jsonl")
    assert row["safe"] is None and row["unjudged_reason"] == "malformed_output"
    assert "no token probabilities" in row["detail"]
    code, _, err = judge_cli(
        capsys, samples, tmp_path / "k", "http://127.0.0.1:9/v1", "--threshold", "0.5"
    )
    assert code == 2 and "judge.threshold is for `kind: guard` judges" in err
    assert "Traceback" not in err


def test_mcnemar_stays_exact_for_large_counts() -> None:
    """In floats (log space): summing big-integer binomials took ~2 minutes at these counts.
    The reference p-values are scipy.stats.binomtest's, two-sided."""
    import math

    from aidsafe.tasks.judging import mcnemar_p

    exact = 2 * sum(math.comb(80, k) for k in range(31)) / 2**80
    assert mcnemar_p(30, 50) == pytest.approx(exact, rel=1e-9)
    assert mcnemar_p(30, 50) == pytest.approx(0.03299261842647619, rel=1e-9)
    assert mcnemar_p(20_000, 20_500) == pytest.approx(0.013153825113144245, rel=1e-8)


def test_the_curve_names_no_best_cut_off_when_one_label_only() -> None:
    from aidsafe.tasks.judging import threshold_curve

    curve = threshold_curve([(0.5, True), (0.9, True)])
    assert curve["best_kappa_threshold"] is None and curve["roc_auc"] is None
    assert curve["points"][0]["recall"] == 1.0


def test_compare_takes_the_labels_from_either_run_and_needs_a_finished_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    labelled = _labelled_judge_run(capsys, tmp_path, "judge-a", "MARK")
    unlabelled = tmp_path / "judge-b"
    samples = tmp_path / "labelled.jsonl"
    with StubOpenAIServer(choice=policy_judge({"NEVER-SEEN": "physical_harm"})) as stub:
        code, _, err = judge_cli(capsys, samples, unlabelled, stub.base_url, model="judge-b")
    assert code == 0, err
    numbers = tmp_path / "judges.json"
    for order in ((labelled, unlabelled), (unlabelled, labelled)):
        code, _, err = cli(capsys, "compare", *map(str, order), "--json", str(numbers))
        assert code == 0, err
        against = json.loads(numbers.read_text())["runs"][1]["against_reference"]
        assert against["right_only_this"] + against["right_only_reference"] == 2
    (unlabelled / "summary.json").unlink()
    code, _, err = cli(capsys, "compare", str(labelled), str(unlabelled))
    assert code == 2 and "summary.json: missing or unreadable" in err
    assert "Traceback" not in err


def test_labels_given_after_judging_count_with_no_new_call(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Labels are read from the input on every run, not only when a row is judged: adding
    --label-field (or correcting a label) later measures the judge without judging again."""
    rows = [
        {
            "id": "a",
            "prompt": "q1",
            "response": "MARK bad",
            "human": "unsafe",
            "cats": "physical_harm",
        },
        {"id": "b", "prompt": "q2", "response": "fine", "human": "safe", "cats": None},
    ]
    samples = write_rows(tmp_path / "labelled.jsonl", rows)
    with StubOpenAIServer(choice=policy_judge({"MARK": "physical_harm"})) as stub:

        def judge(*extra: str) -> dict:
            code, _, err = judge_cli(capsys, samples, tmp_path / "j", stub.base_url, *extra)
            assert code == 0, err
            return json.loads((tmp_path / "j" / "summary.json").read_text())

        assert "agreement" not in judge()
        labelled = judge("--label-field", "human", "--label-categories-field", "cats")
        assert len(stub.requests) == 2  # the two rows, judged once
    assert labelled["agreement"]["n"] == 2 and labelled["agreement"]["accuracy"]["value"] == 1.0
    assert labelled["agreement"]["per_policy"]["policies"]["physical_harm"]["positives"] == 1
    recorded = {row["id"]: row for row in read_jsonl(tmp_path / "j" / "judgments.jsonl")}
    assert recorded["a"]["label"] == "unsafe"
    assert recorded["a"]["label_categories"] == ["physical_harm"]
