"""The `openai` backend: a chat model that speaks the OpenAI chat-completions protocol directly
over aiohttp.

Why not langchain-openai's ChatOpenAI over the openai client: measured on the loopback stub
(benchmarks/RESULTS.md, 2026-11-23), the openai client alone costs 2.3-2.9 ms of CPU per call,
most of it walking the request's typed parameters, and LangChain's callbacks around it more. And
why aiohttp: at 64 requests in flight a POST costs 0.2-0.3 ms of CPU with aiohttp against 1.0-1.2
ms with httpx2 (the openai client's), whose pool checks every idle connection on each request. A
run is CPU-bound on one core at 64 calls in flight, so what a call costs is what a run reaches.
The protocol part is small: a JSON body (messages, sampling, and the structured-output binding
passed as `extra_body`), and an answer turned into an AIMessage with its tool calls and token
usage. HTTP errors keep the openai package's types (APIStatusError with the response), so
retries, Retry-After and scrubbing treat every backend alike."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import httpx2
import openai
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, PrivateAttr

from aidsafe.models.limits import AdaptiveConcurrency, RateLimits

ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}
OVERLOADED = {429, 503, 529}  # statuses that say the endpoint is over its capacity


class ChatEndpoint(BaseChatModel):
    """One model at an OpenAI-compatible endpoint. `ainvoke` is the hot path: it goes straight
    to the endpoint (no callback managers); the LangChain generation API works too."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key: str = Field(repr=False)
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    timeout: float = 300.0
    pool: EndpointPool | None = Field(default=None, exclude=True, repr=False)
    limits: RateLimits | None = Field(default=None, exclude=True, repr=False)
    adaptive: bool = True  # share the endpoint's AIMD concurrency (models.limits)
    _owned: EndpointPool | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "openai-compatible"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "base_url": self.base_url, "temperature": self.temperature}

    def _pool(self) -> EndpointPool:
        if self.pool is not None:
            return self.pool
        if self._owned is None:
            self._owned = EndpointPool(self.timeout)
        return self._owned

    async def aclose(self) -> None:
        await self._pool().aclose()

    @property
    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/chat/completions"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def body(self, messages: list[BaseMessage], extra: dict[str, Any] | None) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": ROLES.get(m.type, "user"), "content": m.text} for m in messages],
        }
        for name, value in (
            ("temperature", self.temperature),
            ("max_completion_tokens", self.max_tokens),
            ("top_p", self.top_p),
            ("seed", self.seed),
        ):
            if value is not None:
                request[name] = value
        return request | (extra or {})

    async def ainvoke(  # type: ignore[override]
        self,
        input: list[BaseMessage],
        config: RunnableConfig | None = None,
        *,
        extra_body: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> AIMessage:
        """One chat completion; `extra_body` joins the request as it is (response_format,
        tools, tool_choice: see aidsafe.models.structured)."""
        pool = self._pool()
        session = pool.session()
        body = self.body(list(input), extra_body)
        if self.limits is not None:
            estimate = await self.limits.before(sum(len(m.text) for m in input))
        gate = pool.gate if self.adaptive else None
        if gate is not None:
            await gate.acquire()
        started, overloaded = time.monotonic(), None
        try:
            async with session.post(self.url, json=body, headers=self.headers) as r:
                data = await r.read()
                overloaded = r.status in OVERLOADED
                if r.status >= 400:
                    raise _status_error(r.status, dict(r.headers), data, self.url)
        except (TimeoutError, aiohttp.ServerTimeoutError):
            overloaded = True
            raise
        finally:
            if gate is not None:
                gate.release(overloaded, time.monotonic() - started)
        message = _message(json.loads(data))  # a body that is not JSON: retried as transient
        if self.limits is not None:
            await self.limits.after(estimate, dict(message.usage_metadata or {}))
        return message

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = await self.ainvoke(messages, extra_body=kwargs.get("extra_body"))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        """The synchronous LangChain API (`invoke`), outside any run's event loop."""
        body = self.body(messages, kwargs.get("extra_body"))
        with httpx2.Client(timeout=self.timeout) as client:
            response = client.post(self.url, json=body, headers=self.headers)
        if response.status_code >= 400:
            raise _status_error(
                response.status_code, dict(response.headers), response.content, self.url
            )
        return ChatResult(generations=[ChatGeneration(message=_message(response.json()))])


class EndpointPool:
    """One aiohttp session (a connection pool) per endpoint, shared by the models of a run,
    opened on first use inside the run's event loop and closed when the run ends."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self.gate = AdaptiveConcurrency()  # requests in flight to this endpoint (AIMD)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(limit=0),  # as many as rows in flight need
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _status_error(
    status: int, headers: dict[str, str], content: bytes, url: str
) -> openai.APIStatusError:
    """The openai package's error for an HTTP error status, with the response attached."""
    response = httpx2.Response(
        status, headers=headers, content=content, request=httpx2.Request("POST", url)
    )
    try:
        body: Any = response.json()
        detail = body.get("error", body) if isinstance(body, dict) else body
        message = detail.get("message", str(detail)) if isinstance(detail, dict) else str(detail)
    except ValueError:
        body, message = None, response.text[:500]
    return openai.APIStatusError(
        f"Error code: {response.status_code} - {message}", response=response, body=body
    )


def _message(data: dict[str, Any]) -> AIMessage:
    """A chat-completion response as an AIMessage: text, tool calls, token usage, and the
    token log-probabilities where they were asked for."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    tool_calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        try:
            args = json.loads(function.get("arguments") or "{}", strict=False)
        except json.JSONDecodeError:
            args = None
        if not isinstance(args, dict):  # kept as text: the repair step shows it to the model
            message = {**message, "content": function.get("arguments") or ""}
            continue
        tool_calls.append({"name": function.get("name", ""), "args": args, "id": call.get("id")})
    usage = data.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    completion_tokens = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    usage_metadata: dict[str, Any] = {
        "input_tokens": prompt_tokens,
        "output_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached is not None:
        usage_metadata["input_token_details"] = {"cache_read": int(cached)}
    return AIMessage(
        content=message.get("content") or "",
        tool_calls=tool_calls,
        usage_metadata=usage_metadata,
        response_metadata={
            "model_name": data.get("model"),
            "finish_reason": choice.get("finish_reason"),
            **({"refusal": message["refusal"]} if message.get("refusal") else {}),
            **({"logprobs": choice["logprobs"]} if choice.get("logprobs") else {}),
        },
    )
