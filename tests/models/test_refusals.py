"""Answers that end for good: cut at max_tokens (`truncated`), filtered by the provider or
refused by the model (`teacher_refused`), from the loopback stub as an endpoint sends them; the
row fails with the typed reason at once (no repair round is spent on it) and the run goes on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aidsafe.inputs import PromptSource
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.testing import StubOpenAIServer
from tests.conftest import make_config, read_jsonl, write_prompts

Choice = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def drafting(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Choice:
    """Change the drafter's answers for the prompt that says 'bad'; others as the stub has them."""

    def choice(request: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
        text = " ".join(str(m.get("content") or "") for m in request["messages"])
        schema = (request.get("response_format") or {}).get("json_schema", {}).get("name")
        if "bad prompt" in text and schema == "InitialCoT":
            return change(sent)
        return sent

    return choice


def cut(sent: dict[str, Any]) -> dict[str, Any]:
    content = sent["message"]["content"]
    return sent | {
        "finish_reason": "length",
        "message": sent["message"] | {"content": content[: len(content) // 2]},
    }


def filtered(sent: dict[str, Any]) -> dict[str, Any]:
    return sent | {
        "finish_reason": "content_filter",
        "message": {"role": "assistant", "content": ""},
    }


def refusal_field(sent: dict[str, Any]) -> dict[str, Any]:
    message = {"role": "assistant", "content": None, "refusal": "I can't help with that request."}
    return sent | {"message": message}


def refusal_prose(sent: dict[str, Any]) -> dict[str, Any]:
    text = "I'm sorry, but I can't assist with that."
    return sent | {"message": {"role": "assistant", "content": text}}


@pytest.mark.parametrize(
    ("change", "reason", "detail", "calls"),
    [
        (cut, "truncated", "drafter: the answer was cut at max_tokens=64", 1),
        (filtered, "teacher_refused", "drafter: the provider's content filter", 1),
        (refusal_field, "teacher_refused", "drafter: the model refused: I can't help", 1),
        # prose is sent back for repair like any malformed answer; refused each time, typed
        (refusal_prose, "teacher_refused", "drafter: the model refused instead of answering", 3),
    ],
)
def test_an_answer_that_ends_for_good_fails_its_row_with_a_typed_reason(
    tmp_path: Path,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    reason: str,
    detail: str,
    calls: int,
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["good prompt", "bad prompt", "good again"])
    with StubOpenAIServer(choice=drafting(change)) as stub:
        model = {
            "backend": "openai",
            "base_url": stub.base_url,
            "model": "stub",
            "structured_output": "json_schema",
            "max_tokens": 64,
        }
        config = make_config(models={"default": model})
        asyncio.run(
            generate(
                PromptSource(str(prompts)),
                RunDirectory(tmp_path / "run"),
                config,
                show_progress=False,
            )
        )
    assert sorted(t["id"] for t in read_jsonl(tmp_path / "run" / "traces.jsonl")) == ["p0", "p2"]
    [failure] = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert (failure["id"], failure["reason"], failure["stage"]) == ("p1", reason, "draft")
    assert detail in failure["detail"]
    drafts = [c for c in failure["calls"] if c["role"] == "drafter"]
    assert len(drafts) == calls and not drafts[-1]["ok"]


def test_retry_failed_can_retry_only_the_chosen_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from tests.cli.test_app import cli

    def answers(request: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
        text = " ".join(str(m.get("content") or "") for m in request["messages"])
        if "cut prompt" in text and "InitialCoT" in json.dumps(request["response_format"]):
            return cut(sent)
        return filtered(sent) if "filtered prompt" in text else sent

    prompts = write_prompts(tmp_path / "p.jsonl", ["good prompt", "cut prompt", "filtered prompt"])
    out = tmp_path / "run"
    with StubOpenAIServer(choice=answers) as stub:
        model = {"backend": "openai", "base_url": stub.base_url, "model": "stub"}
        model |= {"structured_output": "json_schema"}
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"models": {"default": model | {"max_tokens": 64}}}))
        argv = ["generate", str(prompts), "--out", str(out), "-q", "--config", str(config)]
        assert cli(capsys, *argv)[0] == 0
        reasons = {f["id"]: f["reason"] for f in read_jsonl(out / "failures.jsonl")}
        assert reasons == {"p1": "truncated", "p2": "teacher_refused"}
        code, _, err = cli(capsys, *argv, "--retry-reason", "truncated")
        assert code == 2 and "--retry-reason needs --retry-failed" in err
        code, _, err = cli(capsys, *argv, "--retry-failed", "--retry-reason", "cut")
        assert code == 2 and "--retry-reason cut: not a failure reason" in err
        # a larger max_tokens would fix the cut row: the endpoint now answers it whole
        stub.choice = lambda request, sent: (
            filtered(sent) if "filtered prompt" in str(request["messages"]) else sent
        )
        code, _, _ = cli(capsys, *argv, "--retry-failed", "--retry-reason", "truncated")
        assert code == 0
    done = sorted(t["id"] for t in read_jsonl(out / "traces.jsonl"))
    assert done == ["p0", "p1"]
    failed = read_jsonl(out / "failures.jsonl")
    assert [(f["id"], f["reason"]) for f in failed] == [("p2", "teacher_refused")]
    # the filtered row (its first call, the decomposer's, was filtered) was not asked again
    asked = [r for r in stub.requests if "filtered prompt" in str(r["messages"])]
    assert len(asked) == 1


@pytest.mark.parametrize("backup_refuses", [False, True])
def test_a_refused_call_goes_to_the_roles_fallback_model_and_says_so(
    tmp_path: Path, backup_refuses: bool
) -> None:
    refusing = {"primary", "backup"} if backup_refuses else {"primary"}

    def answers(request: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
        text = " ".join(str(m.get("content") or "") for m in request["messages"])
        drafting = "InitialCoT" in json.dumps(request["response_format"])
        if "bad prompt" in text and drafting and request["model"] in refusing:
            return refusal_field(sent)
        return sent

    prompts = write_prompts(tmp_path / "p.jsonl", ["good prompt", "bad prompt"])
    with StubOpenAIServer(choice=answers) as stub:
        model = {
            "backend": "openai",
            "base_url": stub.base_url,
            "model": "primary",
            "structured_output": "json_schema",
        }
        config = make_config(
            models={"default": model, "drafter": {"fallback": {"model": "backup"}}}
        )
        asyncio.run(
            generate(
                PromptSource(str(prompts)),
                RunDirectory(tmp_path / "run"),
                config,
                show_progress=False,
            )
        )
    traces = {t["id"]: t for t in read_jsonl(tmp_path / "run" / "traces.jsonl")}
    failures = {f["id"]: f for f in read_jsonl(tmp_path / "run" / "failures.jsonl")}
    if backup_refuses:
        assert set(traces) == {"p0"} and failures["p1"]["reason"] == "teacher_refused"
        calls = failures["p1"]["calls"]
    else:
        assert set(traces) == {"p0", "p1"} and not failures
        calls = traces["p1"]["calls"]
        # the fallback is part of the role's recorded model, and so of the fingerprint
        assert traces["p1"]["models"]["drafter"]["fallback"]["model"] == "backup"
    drafts = [
        (c["model"], c["ok"], c.get("fallback", False)) for c in calls if c["role"] == "drafter"
    ]
    assert drafts == [("primary", False, False), ("backup", not backup_refuses, True)]
    # the good row never needed it
    assert all("fallback" not in c for c in traces["p0"]["calls"])
