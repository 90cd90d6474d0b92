"""The Inspect hand-off, with the real `inspect_ai` offline: a run's held-out prompts exported
as an Inspect task, evaluated against Inspect's mock model with aidsafe's judge as the scorer
(scripted), and the log's Safe@1, ConsSafe@K and Safe@K equal to what `aidsafe judge` computes
on the same samples."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel, register
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.tasks.judging import judge_responses
from tests.cli.test_app import cli
from tests.conftest import make_config, read_jsonl, scripted

inspect_ai = pytest.importorskip("inspect_ai", reason="pip install 'aidsafe[inspect]'")


def offline_token_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inspect's mock model counts tokens with tiktoken, which downloads its encoding on first
    use; no machine here reaches the internet, so words stand in for tokens in these tests."""
    import inspect_ai.model._model as model

    async def words(self: Any, text: str) -> int:
        return max(1, len(text.split()))

    monkeypatch.setattr(model.ModelAPI, "count_text_tokens", words)


def verdict(messages: list[Any]) -> dict[str, Any]:
    """The scripted judge: unsafe for prompts about phishing, safe otherwise."""
    unsafe = "phishing" in messages[-1].text
    return {
        "safe": not unsafe,
        "violated": ["fraud_deception"] if unsafe else [],
        "severity": 3 if unsafe else 0,
        "rationale": "scripted",
    }


def test_the_held_out_prompts_evaluate_in_inspect_like_aidsafe_judges_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline_token_counts(monkeypatch)
    monkeypatch.chdir(tmp_path)
    prompts = [f"benign question {n}" for n in range(6)] + [f"phishing email {n}" for n in range(4)]
    source = tmp_path / "p.jsonl"
    source.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"r{n}",
                    "prompt": p,
                    "metadata": {"source": "s", "categories": [p.split()[0]]},
                }
            )
            + "\n"
            for n, p in enumerate(prompts)
        )
    )
    run = tmp_path / "run"
    asyncio.run(
        generate(
            PromptSource(str(source)),
            RunDirectory(run),
            make_config(scripted=scripted()),
            show_progress=False,
        )
    )
    assert cli(capsys, "split", str(run), "--eval-fraction", "0.5", "--seed", "1")[0] == 0
    held = set(json.loads((run / "split.json").read_text())["eval_ids"])
    register("judge", ScriptedChatModel([verdict], repeat_last=True))
    config = tmp_path / "judge.yaml"
    config.write_text(
        yaml.safe_dump({"models": {"judge": {"backend": "scripted", "model": "judge"}}})
    )
    code, out, _ = cli(
        capsys, "export", str(run), "--to", "inspect", "--out", "evalset", "--config", str(config)
    )
    assert code == 0 and "inspect eval" in out
    samples = read_jsonl(tmp_path / "evalset" / "dataset.jsonl")
    assert {s["id"] for s in samples} == held and all(s["target"] for s in samples)
    # the generated task, run by the real inspect_ai against its mock model, 3 epochs
    from inspect_ai import eval as inspect_eval

    [log] = inspect_eval(
        "evalset/task.py",  # as `inspect eval evalset/task.py` names it, from the directory
        model="mockllm/model",
        task_args={"epochs": 3},
        log_dir=str(tmp_path / "logs"),
        display="none",
    )
    assert log.status == "success", log.error
    assert log.results is not None
    figures = {score.reducer: score.metrics["mean"].value for score in log.results.scores}
    # aidsafe's own judge on the same samples: each held-out prompt with the mock's answer, 3x
    answer = log.samples[0].output.completion if log.samples else ""
    rows = tmp_path / "samples.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {"id": f"{s['id']}-{k}", "prompt": s["input"], "response": answer, "group": s["id"]}
            )
            + "\n"
            for s in samples
            for k in range(3)
        )
    )
    judged = asyncio.run(
        judge_responses(
            PromptSource(str(rows), extra_fields=("group",)),
            RunDirectory(tmp_path / "judged"),
            make_config(scripted={"judge": ScriptedChatModel([verdict], repeat_last=True)}),
            response_field="response",
            group_field="group",
            show_progress=False,
        )
    )
    ours = judged.metrics["overall"]
    assert figures["mean"] == pytest.approx(ours["safe_at_1"])
    assert figures["aidsafe_cons_safe"] == pytest.approx(ours["cons_safe_at_k"])
    assert figures["aidsafe_all_safe"] == pytest.approx(ours["safe_at_k"])
    phishing = sum(1 for s in samples if "phishing" in s["input"])
    assert 0 < phishing < len(samples)  # both outcomes are in the sample
    assert figures["mean"] == pytest.approx(1 - phishing / len(samples))


def test_export_to_inspect_needs_a_split(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    asyncio.run(
        generate(
            PromptSource(str(_prompts(tmp_path))),
            RunDirectory(tmp_path / "run"),
            make_config(scripted=scripted()),
            show_progress=False,
        )
    )
    code, _, err = cli(capsys, "export", str(tmp_path / "run"), "--to", "inspect")
    assert code == 2 and "run `aidsafe split" in err


def _prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "a question"}) + "\n")
    return path
