"""Every structured LLM call goes through `call_structured`: schema-constrained output where the
backend supports it, pydantic validation, bounded repair of malformed answers, and backoff on
transient endpoint errors. The result carries what provenance needs (tokens, latency, raw)."""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import httpx
import httpx2
import openai
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableLambda
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import wait_base

from aidsafe.config import ModelConfig
from aidsafe.errors import StageFailed
from aidsafe.models.replay import LATENCY, current, request_hash
from aidsafe.records import Reason

T = TypeVar("T", bound=BaseModel)

REPAIR_PROMPT = (
    "Your previous answer could not be used: {problem}\n"
    "Answer again, completely, in the required format."
)


class TransientModelError(Exception):
    """A failure worth retrying (raised by test doubles and adapters without typed errors)."""


# HTTP statuses worth retrying: request timeout, conflict, too early, rate limited, and 5xx.
TRANSIENT_STATUS = frozenset({408, 409, 425, 429})
# The longest wait a server's Retry-After may ask for before we try again anyway.
MAX_RETRY_AFTER_S = 120.0


def is_transient(error: BaseException) -> bool:
    """Timeouts, dropped connections, rate limits, server errors, and a 200 whose body is not
    the JSON an endpoint answers (a proxy's HTML page): retry with backoff."""
    if isinstance(error, TransientModelError | asyncio.TimeoutError):
        return True
    if isinstance(error, httpx.TransportError | httpx2.TransportError):
        return True
    if isinstance(error, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
        return True  # refused, reset, dropped mid-answer
    if isinstance(error, openai.APIConnectionError | openai.RateLimitError):
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in TRANSIENT_STATUS or error.status_code >= 500
    return isinstance(error, json.JSONDecodeError | openai.APIResponseValidationError)


def retry_after(error: BaseException | None) -> float | None:
    """The wait a server asked for in `Retry-After` (seconds, or an HTTP date), capped."""
    response = getattr(error, "response", None)
    value = getattr(response, "headers", {}).get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


class WaitForServer(wait_base):
    """Honour the server's Retry-After when it sends one; otherwise exponential backoff."""

    def __init__(self, backoff: wait_base) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        asked = retry_after(retry_state.outcome.exception() if retry_state.outcome else None)
        return asked if asked is not None else self.backoff(retry_state)


# Credentials as they appear in echoed headers and error bodies.
SECRET_PATTERNS = re.compile(
    r"(?i)(authorization|api[-_]?key|x-api-key)(\W{1,4})(bearer\s+)?[^\s'\",;]+"
    r"|\bsk-[A-Za-z0-9_\-]{8,}"
)


def scrub(text: str, config: ModelConfig | None = None) -> str:
    """`text` without credentials: the configured key's value and anything that looks like an
    Authorization or api-key header value or an OpenAI-style key."""
    key = os.environ.get(config.api_key_env) if config is not None else None
    if key and len(key) >= 4:
        text = text.replace(key, "[redacted]")
    return SECRET_PATTERNS.sub(
        lambda m: f"{m.group(1)}{m.group(2)}[redacted]" if m.group(1) else "[redacted]", text
    )


def raw_text(message: AIMessage | None) -> str:
    """What the model actually said: its text, or the arguments of its tool call."""
    if message is None:
        return ""
    if message.tool_calls:
        return json.dumps(message.tool_calls[0]["args"], ensure_ascii=False)
    content = message.content
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def strip_code_fence(text: str) -> str:
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def parse_json_answer(message: AIMessage, schema: type[BaseModel]) -> dict[str, Any]:
    """An AIMessage holding JSON text, parsed into `schema`, in LangChain's include_raw layout
    ({"raw", "parsed", "parsing_error"})."""
    try:
        # strict=False admits raw newlines inside strings, which small models often write.
        data = json.loads(strip_code_fence(raw_text(message)), strict=False)
        parsed: BaseModel | None = schema.model_validate(data)
        error: Exception | None = None
    except json.JSONDecodeError as exc:
        parsed, error = None, ValueError(f"not valid JSON: {exc}")
    except ValidationError as exc:
        parsed, error = None, exc
    return {"raw": message, "parsed": parsed, "parsing_error": error}


def json_answer_parser(schema: type[BaseModel], include_raw: bool) -> Runnable[Any, Any]:
    """`parse_json_answer` as a runnable, for backends whose with_structured_output constrains
    text output rather than calling tools."""

    def parse(message: AIMessage) -> Any:
        result = parse_json_answer(message, schema)
        if include_raw:
            return result
        if result["parsing_error"] is not None:
            raise result["parsing_error"]
        return result["parsed"]

    return RunnableLambda(parse)


def describe_problem(error: BaseException | None) -> str:
    if error is None:
        return "the answer held no structured output"
    if isinstance(error, ValidationError):
        parts = []
        for item in error.errors()[:5]:
            where = ".".join(str(p) for p in item["loc"]) or "answer"
            parts.append(f"{where}: {item['msg']}")
        return "; ".join(parts)
    return str(error).splitlines()[0][:500]


@dataclass
class CallRecord:
    """Provenance of one LLM request."""

    role: str
    stage: str
    attempt: int
    model: str
    input_tokens: int
    output_tokens: int
    latency_s: float
    ok: bool
    cost_usd: float | None = None  # where the model has a price
    fallback: bool = False  # made by the role's fallback model after its own refused

    def as_dict(self) -> dict[str, Any]:
        record = dict(self.__dict__)
        if self.cost_usd is None:
            del record["cost_usd"]
        if not self.fallback:
            del record["fallback"]
        return record

    @classmethod
    def of(
        cls,
        message: Any,
        config: ModelConfig,
        *,
        role: str,
        stage: str,
        attempt: int,
        started: float,
        ok: bool,
    ) -> CallRecord:
        """The record of a request that began at `started` (perf_counter) and got `message`
        (whose own latency, when `invoke_with_backoff` noted one, is used: it is the same
        whether the answer came from the endpoint or, on resume, from the response log)."""
        usage = dict(getattr(message, "usage_metadata", None) or {})
        metadata = getattr(message, "response_metadata", None) or {}
        latency = metadata.get(LATENCY, time.perf_counter() - started)
        return cls(
            role=role,
            stage=stage,
            attempt=attempt,
            model=config.recorded_name,
            input_tokens=int(usage.get("input_tokens", 0)),
            output_tokens=int(usage.get("output_tokens", 0)),
            latency_s=round(latency, 4),
            ok=ok,
            cost_usd=call_cost(message, config),
        )


def call_cost(message: Any, config: ModelConfig) -> float | None:
    """What one answer cost at the model's configured price (None without a price)."""
    if config.price is None:
        return None
    usage = dict(getattr(message, "usage_metadata", None) or {})
    cached = (usage.get("input_token_details") or {}).get("cache_read", 0)
    return round(
        config.price.cost(
            int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0)), int(cached)
        ),
        8,
    )


def structured_method(config: ModelConfig) -> str | None:
    """How an endpoint is asked for structured output, or None where the backend decides."""
    if config.backend in ("local", "vllm"):
        return None
    if config.structured_output != "auto":
        return config.structured_output
    return "json_schema" if config.base_url is None else "function_calling"


Parse = Callable[[AIMessage], dict[str, Any]]
_Key = tuple[int, str | None, type[BaseModel]]
_RUNNABLES: dict[_Key, tuple[Any, Runnable[Any, Any], Parse]] = {}


def _include_raw(result: Any) -> dict[str, Any]:
    return dict(result)


def structured_runnable(
    model: BaseChatModel, method: str | None, schema: type[BaseModel]
) -> tuple[Runnable[Any, Any], Parse]:
    """`model` bound to answer `schema`, and the parser that turns what it returns into
    LangChain's include_raw layout; built once per (model, method, schema).

    For OpenAI-compatible endpoints the schema is converted once and sent in `extra_body`, which
    the openai client passes on as it is (its typed `response_format` / `tools` parameters are
    walked recursively on every request: ~5 ms of CPU per call for our schemas), and the answer
    is parsed by a plain function rather than a runnable sequence (~1.5 ms less per call). See
    benchmarks/orchestration.py."""
    key = (id(model), method, schema)
    cached = _RUNNABLES.get(key)
    if cached is not None and cached[0] is model:
        return cached[1], cached[2]
    runnable: Runnable[Any, Any]
    parse: Parse = functools.partial(parse_json_answer, schema=schema)
    bind_schema = getattr(model, "bind_schema", None)
    if method is None and bind_schema is not None:
        # the backend constrains output itself (local grammar, vllm, test doubles) and answers
        # an AIMessage, parsed here like any other (and logged as it came)
        runnable = bind_schema(schema)
    elif method is None:  # a chat model of someone else's: its own structured output
        runnable, parse = model.with_structured_output(schema, include_raw=True), _include_raw
    elif method == "json_schema":
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()},
        }
        runnable = model.bind(extra_body={"response_format": response_format})
    elif method == "function_calling":
        tool = convert_to_openai_tool(schema)
        choice = {"type": "function", "function": {"name": tool["function"]["name"]}}
        runnable = model.bind(extra_body={"tools": [tool], "tool_choice": choice})
    else:  # json_mode: valid JSON, no schema; the parser validates it
        runnable = model.bind(extra_body={"response_format": {"type": "json_object"}})
    if len(_RUNNABLES) > 1024:  # models of finished runs; a long-lived process keeps no more
        _RUNNABLES.clear()
    _RUNNABLES[key] = (model, runnable, parse)
    return runnable, parse


async def call_structured(
    model: BaseChatModel,
    config: ModelConfig,
    messages: list[BaseMessage],
    schema: type[T],
    *,
    role: str,
    stage: str,
    repair_attempts: int,
    check: Callable[[T], list[str]] | None = None,
    fallback: tuple[BaseChatModel, ModelConfig] | None = None,
) -> tuple[T, list[CallRecord]]:
    """Ask `model` for a `schema` answer. A malformed answer (or one `check` objects to) is sent
    back with the problem `repair_attempts` times; then StageFailed('malformed_output'). When
    the model refuses or is filtered (`teacher_refused`), the `fallback` model, if any, is asked
    the same, and its calls are recorded after the refused ones (`fallback: true`)."""
    try:
        return await _call_structured(
            model, config, messages, schema, role, stage, repair_attempts, check
        )
    except StageFailed as refused:
        if fallback is None or refused.reason != Reason.TEACHER_REFUSED:
            raise
        try:
            answer, records = await _call_structured(
                *fallback, messages, schema, role, stage, repair_attempts, check
            )
        except StageFailed as failed:
            failed.calls = refused.calls + [{**c, "fallback": True} for c in failed.calls]
            raise
        for record in records:
            record.fallback = True
        return answer, [*_records(refused.calls), *records]


def _records(calls: list[dict[str, Any]]) -> list[CallRecord]:
    return [CallRecord(**call) for call in calls]


async def _call_structured(
    model: BaseChatModel,
    config: ModelConfig,
    messages: list[BaseMessage],
    schema: type[T],
    role: str,
    stage: str,
    repair_attempts: int,
    check: Callable[[T], list[str]] | None,
) -> tuple[T, list[CallRecord]]:
    runnable, parse = structured_runnable(model, structured_method(config), schema)
    conversation = list(messages)
    records: list[CallRecord] = []
    problem, last_raw = "", ""
    for attempt in range(repair_attempts + 1):
        started = time.perf_counter()
        answer = await invoke_with_backoff(runnable, conversation, config, stage, schema.__name__)
        result = parse(answer)
        raw: AIMessage | None = result.get("raw")
        parsed = result["parsed"]
        error = result.get("parsing_error")
        problems = [] if parsed is None or error is not None else (check(parsed) if check else [])
        ok = parsed is not None and error is None and not problems
        records.append(
            CallRecord.of(
                raw, config, role=role, stage=stage, attempt=attempt, started=started, ok=ok
            )
        )
        if ok:
            return parsed, records
        problem = "; ".join(problems) if problems else describe_problem(error)
        last_raw = raw_text(raw)
        stopped = _stopped(raw, role, config)  # sending it back would not help
        if stopped is not None:
            calls = [record.as_dict() for record in records]
            raise StageFailed(stage, stopped[0], stopped[1], last_raw, calls)
        conversation = [
            *messages,
            AIMessage(content=last_raw or "(empty answer)"),
            HumanMessage(content=REPAIR_PROMPT.format(problem=problem)),
        ]
    calls = [record.as_dict() for record in records]
    if REFUSAL.match(last_raw):  # prose declining the task, answered to every repair
        detail = f"{role}: the model refused instead of answering the schema: {last_raw[:300]}"
        raise StageFailed(stage, Reason.TEACHER_REFUSED, detail, last_raw, calls)
    raise StageFailed(stage, Reason.MALFORMED_OUTPUT, problem, last_raw, calls)


# How a refusal in prose begins (a schema was expected, so a valid answer never does).
REFUSAL = re.compile(
    r"\s*(?:i'?m sorry|i am sorry|sorry,|i apologi[sz]e|i can(?:not|'t|’t)|i won'?t|"
    r"i'?m (?:not able|unable)|i am (?:not able|unable)|as an ai)",
    re.IGNORECASE,
)


def _stopped(
    message: AIMessage | None, role: str, config: ModelConfig
) -> tuple[Reason, str] | None:
    """Why an invalid answer ended for good: the provider filtered it, the model refused in
    its `refusal` field, or it was cut at max_tokens."""
    metadata = getattr(message, "response_metadata", None) or {}
    finish = metadata.get("finish_reason")
    if finish == "content_filter":
        return Reason.TEACHER_REFUSED, f"{role}: the provider's content filter stopped the answer"
    if metadata.get("refusal"):
        return Reason.TEACHER_REFUSED, f"{role}: the model refused: {metadata['refusal'][:300]}"
    if finish == "length":
        return Reason.TRUNCATED, (
            f"{role}: the answer was cut at max_tokens={config.max_tokens} before it was complete; "
            f"raise models.{role}.max_tokens"
        )
    return None


async def invoke_with_backoff(
    runnable: Runnable[Any, Any],
    conversation: list[BaseMessage],
    config: ModelConfig,
    stage: str,
    shape: str = "text",
) -> Any:
    """Invoke with backoff on transient errors; anything else fails the stage. Inside a row
    (see aidsafe.models.replay) an answer already in the response log is served from it, and a
    new answer is logged before it is returned."""
    replay = current.get()
    key = ""
    if replay is not None:
        key = replay.key(request_hash(config.provenance(), shape, conversation))
        logged = replay.lookup(key)
        if logged is not None:
            return logged
    started = time.perf_counter()
    answer = await _invoke(runnable, conversation, config, stage)
    if isinstance(answer, BaseMessage):
        answer.response_metadata[LATENCY] = round(time.perf_counter() - started, 4)
        if replay is not None:
            replay.record(key, stage, answer, call_cost(answer, config) or 0.0)
    return answer


async def _invoke(
    runnable: Runnable[Any, Any], conversation: list[BaseMessage], config: ModelConfig, stage: str
) -> Any:
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(config.max_retries + 1),
            wait=WaitForServer(
                wait_exponential_jitter(
                    multiplier=config.retry_wait, max=60, jitter=config.retry_wait
                )
            ),
            reraise=True,
        ):
            with attempt:
                return await asyncio.wait_for(runnable.ainvoke(conversation), config.timeout)
    except Exception as error:
        kind = "transient, retries exhausted" if is_transient(error) else "not retryable"
        first_line = str(error).splitlines()[0][:500] if str(error) else ""
        # error bodies may echo the request's headers: never let a key reach a file
        detail = scrub(f"{type(error).__name__} ({kind}): {first_line}", config)
        raise StageFailed(stage, Reason.ENDPOINT_ERROR, detail) from error
    raise AssertionError("unreachable: tenacity either returns or raises")
