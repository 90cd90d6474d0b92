import pickle

import httpx
import openai
import pytest
from langchain_core.messages import HumanMessage
from pydantic import BaseModel

from aidsafe.config import ModelConfig
from aidsafe.errors import StageFailed
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.models.structured import (
    TransientModelError,
    call_structured,
    is_transient,
    strip_code_fence,
)
from aidsafe.records import Reason

CONFIG = ModelConfig(retry_wait=0, max_retries=2)


class Answer(BaseModel):
    value: int


class Text(BaseModel):
    text: str


async def ask(model: ScriptedChatModel, repairs: int = 2, check=None):  # type: ignore[no-untyped-def]
    return await call_structured(
        model,
        CONFIG,
        [HumanMessage("q")],
        Answer,
        role="r",
        stage="s",
        repair_attempts=repairs,
        check=check,
    )


async def test_valid_answer_is_parsed_with_provenance() -> None:
    answer, calls = await ask(ScriptedChatModel([{"value": 3}]))
    assert answer.value == 3
    assert len(calls) == 1 and calls[0].ok and calls[0].output_tokens > 0


async def test_malformed_answer_is_fed_back_and_repaired() -> None:
    model = ScriptedChatModel(['{"value": "three"}', '```json\n{"value": 3}\n```'])
    answer, calls = await ask(model)
    assert answer.value == 3
    assert [(c.attempt, c.ok) for c in calls] == [(0, False), (1, True)]
    repair = model.received[1]
    assert repair[-2].text == '{"value": "three"}'  # the bad answer, quoted back
    assert "value" in repair[-1].text and "could not be used" in repair[-1].text


async def test_repairs_exhausted_fail_the_stage_with_the_raw_output() -> None:
    model = ScriptedChatModel(["nope", "still nope", "never"])
    with pytest.raises(StageFailed) as caught:
        await ask(model, repairs=2)
    assert caught.value.reason is Reason.MALFORMED_OUTPUT
    assert caught.value.stage == "s"
    assert caught.value.raw == "never"
    assert model.calls == 3
    # every attempt travels with the failure, as plain dicts, for the failures ledger
    calls = caught.value.calls
    assert [(c["attempt"], c["ok"], c["role"], c["stage"]) for c in calls] == [
        (0, False, "r", "s"),
        (1, False, "r", "s"),
        (2, False, "r", "s"),
    ]
    assert all(c["input_tokens"] > 0 and c["output_tokens"] > 0 for c in calls)
    # and they cross process boundaries (Ray) intact
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.stage, copy.reason, copy.detail, copy.raw) == (
        "s",
        Reason.MALFORMED_OUTPUT,
        caught.value.detail,
        "never",
    )
    assert copy.calls == calls


async def test_check_objections_are_repaired_like_parse_errors() -> None:
    model = ScriptedChatModel([{"value": -1}, {"value": 1}])
    answer, _ = await ask(model, check=lambda a: ["must be positive"] if a.value < 0 else [])
    assert answer.value == 1
    assert "must be positive" in model.received[1][-1].text


async def test_transient_errors_are_retried_then_succeed() -> None:
    model = ScriptedChatModel(
        [TransientModelError("503"), httpx.ConnectError("reset"), {"value": 1}]
    )
    answer, calls = await ask(model)
    assert answer.value == 1 and model.calls == 3 and len(calls) == 1


async def test_transient_errors_beyond_the_budget_fail_the_row_not_the_run() -> None:
    model = ScriptedChatModel([TransientModelError("timeout")], repeat_last=True)
    with pytest.raises(StageFailed) as caught:
        await ask(model)
    assert caught.value.reason is Reason.ENDPOINT_ERROR
    assert "retries exhausted" in caught.value.detail
    assert model.calls == CONFIG.max_retries + 1


async def test_permanent_errors_are_not_retried() -> None:
    model = ScriptedChatModel([ValueError("bad request")], repeat_last=True)
    with pytest.raises(StageFailed, match="not retryable") as caught:
        await ask(model)
    assert caught.value.reason is Reason.ENDPOINT_ERROR
    assert model.calls == 1


def test_transient_classification() -> None:
    request = httpx.Request("POST", "http://x")
    assert is_transient(
        openai.RateLimitError("slow", response=httpx.Response(429, request=request), body=None)
    )
    assert is_transient(
        openai.InternalServerError("boom", response=httpx.Response(503, request=request), body=None)
    )
    assert is_transient(openai.APITimeoutError(request=request))
    assert not is_transient(
        openai.AuthenticationError("no", response=httpx.Response(401, request=request), body=None)
    )


async def test_raw_newlines_inside_strings_are_accepted() -> None:
    answer, _ = await call_structured(
        ScriptedChatModel(['{"text": "line one\nline two"}']),
        CONFIG,
        [HumanMessage("q")],
        Text,
        role="r",
        stage="s",
        repair_attempts=0,
    )
    assert answer.text == "line one\nline two"


def test_code_fences_are_stripped() -> None:
    assert strip_code_fence('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_code_fence(' {"a": 1} ') == '{"a": 1}'
