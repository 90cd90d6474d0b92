"""The one place chat models are built from a role's ModelConfig, and checked before a run."""

from __future__ import annotations

import os
from typing import Any

import httpx
from langchain_core.language_models import BaseChatModel

from aidsafe.config import OPENAI_BASE_URL, ModelConfig
from aidsafe.errors import UserError

# Local servers (vllm serve, llama.cpp) accept any key but the OpenAI client insists on one.
PLACEHOLDER_KEY = "not-needed"


def api_key(config: ModelConfig) -> str:
    key = os.environ.get(config.api_key_env)
    if key:
        return key
    if config.base_url is None:
        raise UserError(
            f"OpenAI's API needs a key: set the environment variable {config.api_key_env} "
            "(or set base_url to a server that needs none)"
        )
    return PLACEHOLDER_KEY


def build_chat_model(config: ModelConfig, pools: dict[Any, Any] | None = None) -> BaseChatModel:
    """The chat model of one role's config. `pools`: what the models of one run share: HTTP
    connection pools, one per endpoint (each pool checks its idle connections on every request,
    so one per model config cost ~0.7 ms per call; see benchmarks/RESULTS.md), and rate limits,
    one per model at an endpoint."""
    if config.backend == "scripted":
        from aidsafe.models.scripted import lookup

        return lookup(config.model)
    if config.backend == "local":
        from aidsafe.models.local import ChatLlamaCpp, bundled_model_path, check_llama_available

        check_llama_available()
        path = config.model or str(bundled_model_path())
        return ChatLlamaCpp(
            model_path=path,
            n_ctx=config.n_ctx,
            n_threads=config.n_threads,
            temperature=config.temperature if config.temperature is not None else 0.7,
            max_tokens=config.max_tokens or 1024,
            top_p=config.top_p,
            seed=config.seed,
        )
    if config.backend == "vllm":
        from aidsafe.models.vllm import ChatVLLM, EngineSettings

        return ChatVLLM(
            settings=EngineSettings.of(config),
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            top_p=config.top_p,
            seed=config.seed,
        )
    from aidsafe.models.endpoint import ChatEndpoint

    if not config.model:
        raise UserError("an `openai` backend needs `model` (the model name at the endpoint)")
    return ChatEndpoint(
        model=config.model,
        base_url=config.base_url or OPENAI_BASE_URL,
        api_key=api_key(config),
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        top_p=config.top_p,
        seed=config.seed,
        timeout=config.timeout,
        # a connection pool of the run's own, one per endpoint: kept-alive connections must
        # not outlive the run's event loop, and each pool checks its idle ones per request
        pool=_pool(config, pools),
        limits=_limits(config, pools),
        adaptive=config.adaptive_concurrency,
    )


def _limits(config: ModelConfig, shared: dict[Any, Any] | None) -> Any:
    """The model's rate limits, one per model at an endpoint (roles calling it share them)."""
    from aidsafe.models.limits import RateLimits

    if config.requests_per_minute is None and config.tokens_per_minute is None:
        return None
    if shared is None:
        return RateLimits(config.requests_per_minute, config.tokens_per_minute)
    key = (
        "limits",
        config.base_url,
        config.model,
        config.requests_per_minute,
        config.tokens_per_minute,
    )
    if key not in shared:
        shared[key] = RateLimits(config.requests_per_minute, config.tokens_per_minute)
    return shared[key]


def _pool(config: ModelConfig, pools: dict[Any, Any] | None) -> Any:
    from aidsafe.models.endpoint import EndpointPool

    if pools is None:
        return EndpointPool(config.timeout)
    key = (config.base_url, config.timeout)
    if key not in pools:
        pools[key] = EndpointPool(config.timeout)
    return pools[key]


def preflight(configs: dict[str, ModelConfig]) -> None:
    """Fail before the run starts when a backend cannot work: missing package or model file,
    missing key, or an endpoint that does not answer."""
    checked: set[str] = set()
    if any(config.backend == "vllm" for config in configs.values()):
        from aidsafe.models.vllm import check_shared_engines, check_vllm_available

        check_vllm_available()
        check_shared_engines(configs)
    for role, config in configs.items():
        if config.backend == "scripted":
            from aidsafe.models.scripted import lookup

            lookup(config.model)
            continue
        if config.backend == "vllm":
            if not config.model:
                raise UserError(f"models.{role}.model: a `vllm` backend needs a model")
            continue
        if config.backend == "local":
            from aidsafe.models.local import bundled_model_path, check_llama_available

            check_llama_available()
            if config.model and not os.path.exists(config.model):
                raise UserError(f"models.{role}.model: GGUF file {config.model} not found")
            if not config.model:
                bundled_model_path()
            continue
        if not config.model:
            raise UserError(f"models.{role}.model: an `openai` backend needs a model name")
        key = api_key(config)
        url = (config.base_url or OPENAI_BASE_URL).rstrip("/")
        if url in checked:
            continue
        checked.add(url)
        try:
            answer = httpx.get(
                f"{url}/models", headers={"Authorization": f"Bearer {key}"}, timeout=10
            )
        except httpx.HTTPError as error:
            raise UserError(
                f"models.{role}.base_url: endpoint {url} is unreachable ({type(error).__name__}: "
                f"{error}); start the server or fix the URL"
            ) from error
        if answer.status_code in (401, 403):
            raise UserError(
                f"models.{role}: endpoint {url} rejected the API key from ${config.api_key_env} "
                f"(HTTP {answer.status_code})"
            )
