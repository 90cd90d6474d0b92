"""The `openai` backend's own protocol code: the request body it sends, and an answer (text,
tool call, usage with cached tokens, an HTTP error) turned into what the rest of aidsafe reads."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from aidsafe.models.endpoint import ChatEndpoint, _message, _status_error
from aidsafe.models.structured import is_transient, raw_text, retry_after
from aidsafe.testing import StubOpenAIServer


def completion(message: dict[str, Any], usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage or {"prompt_tokens": 10, "completion_tokens": 3},
    }


def test_the_body_holds_the_messages_sampling_and_the_structured_binding() -> None:
    model = ChatEndpoint(model="m", api_key="k", temperature=0.0, max_tokens=64, seed=7)
    body = model.body(
        [SystemMessage(content="rules"), HumanMessage(content="q"), AIMessage(content="a")],
        {"response_format": {"type": "json_object"}},
    )
    assert body == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "rules"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
        ],
        "temperature": 0.0,
        "max_completion_tokens": 64,
        "seed": 7,
        "response_format": {"type": "json_object"},
    }


def test_an_answer_becomes_an_ai_message_with_tool_calls_and_usage() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "V", "arguments": '{"a": 1}'}}
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    message = _message(
        completion({"role": "assistant", "content": None, "tool_calls": [call]}, usage)
    )
    assert message.tool_calls[0]["args"] == {"a": 1} and raw_text(message) == '{"a": 1}'
    assert message.usage_metadata is not None
    assert message.usage_metadata["input_tokens"] == 10
    assert message.usage_metadata["output_tokens"] == 3
    assert message.usage_metadata.get("input_token_details") == {"cache_read": 8}


def test_tool_call_arguments_that_are_not_json_are_kept_as_text_for_the_repair() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "V", "arguments": "{broken"}}
    message = _message(completion({"role": "assistant", "content": None, "tool_calls": [call]}))
    assert message.tool_calls == [] and raw_text(message) == "{broken"


@pytest.mark.parametrize(("status", "transient"), [(429, True), (503, True), (400, False)])
def test_an_http_error_is_the_openai_packages_error_with_its_response(
    status: int, transient: bool
) -> None:
    body = json.dumps({"error": {"message": "nope"}}).encode()
    error = _status_error(status, {"Retry-After": "3"}, body, "http://x/v1/chat/completions")
    assert isinstance(error, openai.APIStatusError) and error.status_code == status
    assert "nope" in str(error) and is_transient(error) is transient
    assert retry_after(error) == 3.0


async def test_a_call_against_the_stub_endpoint() -> None:
    with StubOpenAIServer(plain_answer="hello there") as stub:
        model = ChatEndpoint(model="stub", base_url=stub.base_url, api_key="k")
        answer = await model.ainvoke([HumanMessage(content="hi")])
        assert answer.content == "hello there"
        assert stub.requests[0]["messages"] == [{"role": "user", "content": "hi"}]
        generated = await model.agenerate([[HumanMessage(content="hi")]])  # LangChain's API too
        assert generated.generations[0][0].text == "hello there"
        assert model.invoke([HumanMessage(content="hi")]).content == "hello there"  # sync API
        assert len(stub.requests) == 3
        await model.aclose()
