"""The `vllm` backend: a LangChain chat model over an in-process vLLM engine (AsyncLLM). Every
concurrent graph node submits its request to the same engine, so the run's rows become one
continuous batch on the GPU. Roles that name the same model share one engine.

The functions above `ChatVLLM` are pure (request building, schema translation, result parsing)
and are tested without vllm installed; the engine itself needs vllm and a GPU."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel

from aidsafe.config import ModelConfig
from aidsafe.errors import UserError
from aidsafe.models.structured import json_answer_parser

INSTALL_HINT = "install it with: pip install 'aidsafe[vllm]' (needs an NVIDIA GPU)"
_ROLE_NAMES = {"human": "user", "ai": "assistant", "system": "system"}


def check_vllm_available() -> None:
    if importlib.util.find_spec("vllm") is None:
        raise UserError(f"the `vllm` backend needs the vllm package; {INSTALL_HINT}")


@dataclass(frozen=True)
class EngineSettings:
    """What makes an engine: roles whose settings are equal share one engine."""

    model: str
    dtype: str
    max_model_len: int
    max_num_seqs: int | None
    gpu_memory_utilization: float
    tensor_parallel_size: int
    enable_prefix_caching: bool

    @classmethod
    def of(cls, config: ModelConfig) -> EngineSettings:
        if not config.model:
            raise UserError(
                "a `vllm` backend needs `model`: a Hugging Face checkpoint directory or model name"
            )
        return cls(
            model=config.model,
            dtype=config.dtype,
            max_model_len=config.n_ctx,
            max_num_seqs=config.max_num_seqs,
            gpu_memory_utilization=config.gpu_memory_utilization,
            tensor_parallel_size=config.tensor_parallel_size,
            enable_prefix_caching=config.enable_prefix_caching,
        )

    def engine_args(self) -> dict[str, Any]:
        """Keyword arguments for vllm's AsyncEngineArgs. Stats stay on: the prefix-cache hit
        rate is read from them."""
        args: dict[str, Any] = {
            "model": self.model,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "gpu_memory_utilization": self.gpu_memory_utilization,
            "tensor_parallel_size": self.tensor_parallel_size,
            "enable_prefix_caching": self.enable_prefix_caching,
            "disable_log_stats": False,
        }
        if self.max_num_seqs is not None:
            args["max_num_seqs"] = self.max_num_seqs
        return args


def check_shared_engines(configs: Mapping[str, ModelConfig]) -> None:
    """Roles naming the same vLLM model must agree on its engine settings: one GPU holds one
    copy of the weights, not one per role."""
    seen: dict[str, tuple[str, EngineSettings]] = {}
    for role, config in configs.items():
        if config.backend != "vllm":
            continue
        settings = EngineSettings.of(config)
        if settings.model in seen and seen[settings.model][1] != settings:
            other = seen[settings.model][0]
            raise UserError(
                f"models.{role} and models.{other} name the same vllm model {settings.model!r} "
                "with different engine settings (dtype, n_ctx, max_num_seqs, "
                "gpu_memory_utilization, tensor_parallel_size, enable_prefix_caching); set them "
                "once under models.default"
            )
        seen.setdefault(settings.model, (role, settings))


def chat_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the role/content dicts a chat template takes."""
    return [{"role": _ROLE_NAMES.get(m.type, "user"), "content": m.text} for m in messages]


def sampling_kwargs(
    temperature: float | None,
    max_tokens: int | None,
    top_p: float | None,
    seed: int | None,
    stop: list[str] | None = None,
    response_format: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for vllm's SamplingParams; `structured_outputs` holds the JSON schema
    (vllm's StructuredOutputsParams(json=...)) when the call asks for one."""
    kwargs: dict[str, Any] = {
        "temperature": 0.7 if temperature is None else temperature,
        "max_tokens": max_tokens or 1024,
    }
    if top_p is not None:
        kwargs["top_p"] = top_p
    if seed is not None:
        kwargs["seed"] = seed
    if stop:
        kwargs["stop"] = list(stop)
    if response_format is not None:
        kwargs["structured_outputs"] = {"json": response_schema(response_format)}
    return kwargs


def response_schema(response_format: Mapping[str, Any]) -> dict[str, Any] | bool:
    """The JSON schema inside an OpenAI-style response_format (True: any JSON object)."""
    kind = response_format.get("type")
    if kind == "json_schema":
        return dict(response_format["json_schema"]["schema"])
    if kind == "json_object":
        return dict(response_format["schema"]) if "schema" in response_format else True
    raise ValueError(f"unsupported response_format type {kind!r}")


def result_message(output: Any) -> AIMessage:
    """A vllm RequestOutput (final) as an AIMessage with token usage."""
    completion = output.outputs[0]
    prompt_tokens = len(output.prompt_token_ids or [])
    output_tokens = len(completion.token_ids or [])
    return AIMessage(
        content=completion.text,
        usage_metadata={
            "input_tokens": prompt_tokens,
            "output_tokens": output_tokens,
            "total_tokens": prompt_tokens + output_tokens,
        },
        response_metadata={
            "finish_reason": completion.finish_reason,
            "cached_tokens": getattr(output, "num_cached_tokens", None),
        },
    )


class _Engine:
    """One AsyncLLM and its tokenizer. The engine's output handler lives on the event loop
    that first used it, so a later loop (a second `asyncio.run`) gets a fresh engine."""

    def __init__(self, settings: EngineSettings) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.loop = asyncio.get_running_loop()
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**settings.engine_args()))
        self.tokenizer = self.llm.get_tokenizer()

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The model's own chat template, then token ids (special tokens come from the
        template, not added twice)."""
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))


_engines: dict[EngineSettings, _Engine] = {}
_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="vllm-sync", daemon=True).start()
        return _loop


_request_ids = itertools.count()


def engine_for(settings: EngineSettings) -> _Engine:
    engine = _engines.get(settings)
    loop = asyncio.get_running_loop()
    if engine is not None and engine.loop is not loop:
        engine.llm.shutdown()
        engine = None
    if engine is None:
        check_vllm_available()
        engine = _engines[settings] = _Engine(settings)
    return engine


def shutdown_engines() -> None:
    for engine in _engines.values():
        engine.llm.shutdown()
    _engines.clear()


async def complete(engine: _Engine, messages: list[dict[str, str]], sampling: Any) -> Any:
    """One chat request through the engine; its final RequestOutput."""
    prompt = {"prompt_token_ids": engine.prompt_ids(messages)}
    final = None
    async for output in engine.llm.generate(prompt, sampling, f"aidsafe-{next(_request_ids)}"):
        final = output
    if final is None:
        raise RuntimeError("vllm returned no output for the request")
    return final


class ChatVLLM(BaseChatModel):
    """Chat completions from an in-process vLLM engine; structured output through vLLM's
    structured-outputs decoding (a JSON schema), validated by pydantic afterwards."""

    settings: EngineSettings
    temperature: float | None = None
    max_tokens: int | None = 1024
    top_p: float | None = None
    seed: int | None = None

    @property
    def _llm_type(self) -> str:
        return "vllm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.settings.model, "temperature": self.temperature}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        """Synchronous calls (`invoke`) run on one background event loop, which then owns the
        engine; runs use `ainvoke`, on the caller's loop."""
        work = self._agenerate(messages, stop, run_manager, **kwargs)
        return asyncio.run_coroutine_threadsafe(work, _background_loop()).result()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        engine = engine_for(self.settings)
        sampling = self.sampling_params(stop, kwargs.get("response_format"))
        output = await complete(engine, chat_messages(messages), sampling)
        return ChatResult(generations=[ChatGeneration(message=result_message(output))])

    def sampling_params(
        self, stop: list[str] | None, response_format: Mapping[str, Any] | None
    ) -> Any:
        """This role's vllm SamplingParams for one request (final output only)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        params = sampling_kwargs(
            self.temperature, self.max_tokens, self.top_p, self.seed, stop, response_format
        )
        if "structured_outputs" in params:
            params["structured_outputs"] = StructuredOutputsParams(**params["structured_outputs"])
        return SamplingParams(**params, output_kind=RequestOutputKind.FINAL_ONLY)

    def bind_schema(self, schema: type[BaseModel]) -> Runnable[Any, Any]:
        """Schema-constrained decoding in the engine; answers an AIMessage to be parsed."""
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()},
        }
        return self.bind(response_format=response_format)

    def with_structured_output(  # type: ignore[override]
        self, schema: type[BaseModel], *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[Any, Any]:
        """Schema-constrained decoding in the engine, then pydantic validation."""
        return self.bind_schema(schema) | json_answer_parser(schema, include_raw)
