"""Run configuration: one typed object, loaded with precedence CLI flag > config file >
AIDSAFE_* environment variable > default, and a fingerprint that guards resumed runs."""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from aidsafe.errors import UserError, describe_validation_error
from aidsafe.portable import file_sha256, is_absolute_path, portable_name, url_host

Backend = Literal["local", "openai", "vllm", "scripted"]
StructuredMethod = Literal["auto", "json_schema", "function_calling", "json_mode"]
OPENAI_BASE_URL = "https://api.openai.com/v1"  # an `openai` backend without base_url


class Price(BaseModel):
    """What a model's tokens cost, in US dollars per million tokens. aidsafe ships no prices
    (they change): copy them from your provider's price page."""

    model_config = ConfigDict(extra="forbid")

    input: float = Field(ge=0, description="USD per million input (prompt) tokens.")
    output: float = Field(ge=0, description="USD per million output (completion) tokens.")
    cached_input: float | None = Field(
        None,
        ge=0,
        description="USD per million input tokens the provider served from its prompt cache "
        "(unset: the input price).",
    )

    def cost(self, input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> float:
        """The price of one call's tokens."""
        cached = min(cached_tokens, input_tokens)
        cached_price = self.input if self.cached_input is None else self.cached_input
        usd = (input_tokens - cached) * self.input + cached * cached_price
        return (usd + output_tokens * self.output) / 1_000_000


class ModelConfig(BaseModel):
    """How to reach and sample one chat model. Every field is optional in a config file; unset
    fields are inherited from `models.default`, then from the defaults below."""

    model_config = ConfigDict(extra="forbid")

    backend: Backend = Field(
        "local",
        description="`local`: the embedded llama.cpp model, no network. "
        "`openai`: any OpenAI-compatible endpoint (OpenAI, vllm serve, llama.cpp server...). "
        "`vllm`: an in-process vLLM engine on this machine's GPU (extra `aidsafe[vllm]`). "
        "`scripted`: a scripted model registered in this process under `model` (tests).",
    )
    model: str | None = Field(
        None,
        description="Model name at the endpoint; for `local`, a GGUF path "
        "(unset: the bundled SmolLM2-135M-Instruct); for `vllm`, a Hugging Face checkpoint "
        "directory or model name.",
    )
    base_url: str | None = Field(
        None, description="Endpoint URL, e.g. http://localhost:8000/v1 (unset: OpenAI's API)."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the API key. The key itself is "
        "never read from a config file nor written to any output.",
    )
    temperature: float | None = Field(
        None, ge=0, le=2, description="Sampling temperature, 0 to 2 (unset: the role's default)."
    )
    max_tokens: int | None = Field(1024, gt=0, description="Most tokens one answer may generate.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling (unset: server's).")
    seed: int | None = Field(None, description="Sampling seed, where the backend honours one.")
    structured_output: StructuredMethod = Field(
        "auto",
        description="How answers are constrained to the schema: `json_schema` (response_format), "
        "`function_calling` (a forced tool call), `json_mode`. `auto`: json_schema for OpenAI's "
        "API, function_calling for other endpoints, a JSON grammar for `local`.",
    )
    timeout: float = Field(300.0, gt=0, description="Seconds before one request is abandoned.")
    max_retries: int = Field(
        5, ge=0, description="Retries of transient endpoint errors (timeouts, 429, 5xx)."
    )
    retry_wait: float = Field(
        1.0, ge=0, description="First backoff wait in seconds; doubles per retry, with jitter."
    )
    n_ctx: int = Field(
        8192, gt=0, description="`local` and `vllm`: context window in tokens (max_model_len)."
    )
    n_threads: int | None = Field(None, gt=0, description="`local` only: CPU threads.")
    dtype: str = Field("auto", description="`vllm` only: weight dtype (auto, bfloat16, ...).")
    max_num_seqs: int | None = Field(
        None, gt=0, description="`vllm` only: most sequences in one batch (unset: vLLM's)."
    )
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="`vllm` only: share of GPU memory the engine may take."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="`vllm` only: GPUs per engine.")
    enable_prefix_caching: bool = Field(
        True,
        description="`vllm` only: reuse the KV cache of shared prompt prefixes (the policy text "
        "comes first in every prompt, so most prompt tokens are reused).",
    )

    price: Price | None = Field(
        None,
        description="What this model's tokens cost (USD per million); with it, cost is recorded "
        "per call, role, row and run, and `--max-cost` can cap a run.",
    )
    requests_per_minute: float | None = Field(
        None,
        gt=0,
        description="`openai` only: most requests per minute to this model at its endpoint, "
        "shared by every role using it (split evenly across Ray workers).",
    )
    tokens_per_minute: float | None = Field(
        None,
        gt=0,
        description="`openai` only: most tokens (input + output) per minute to this model at "
        "its endpoint, shared like `requests_per_minute`.",
    )

    fallback: ModelConfig | None = Field(
        None,
        description="A model for the call when this one refuses or its provider filters the "
        "answer (`teacher_refused`): the keys that differ (e.g. `model`, `base_url`); the rest "
        "are this model's. Recorded in the call's provenance.",
    )
    adaptive_concurrency: bool = Field(
        True,
        description="`openai` only: after the endpoint first signals overload (429, 503, "
        "timeouts), adapt the requests in flight to it (AIMD: +1 per round trip while "
        "healthy, halved on overload). false: always as many as the rows in flight ask.",
    )

    @field_validator("fallback")
    @classmethod
    def _one_fallback(cls, fallback: ModelConfig | None) -> ModelConfig | None:
        if fallback is not None and fallback.fallback is not None:
            raise ValueError("a fallback model has no fallback of its own")
        return fallback

    def fallback_config(self) -> ModelConfig | None:
        """The fallback model's full config: this model's, with the fallback's keys."""
        if self.fallback is None:
            return None
        mine = self.model_dump(exclude={"fallback"}, exclude_unset=True)
        return ModelConfig.model_validate(
            mine | self.fallback.model_dump(include=self.fallback.model_fields_set)
        )

    def provenance(self) -> dict[str, Any]:
        """What a row records about its model, the same on every machine that runs the same
        model: its identity (`identity`) and sampling, never credentials nor plumbing (engine
        sizing does not change what the model says; dtype does; neither do prices and rate
        limits). The run fingerprint is made of it too, so a model file moved or reinstalled
        elsewhere resumes the same run, and a changed file does not; a fallback model is
        recorded the same way, inside."""
        plumbing = {"api_key_env", "timeout", "max_retries", "retry_wait", "n_threads"}
        plumbing |= {"price", "requests_per_minute", "tokens_per_minute", "adaptive_concurrency"}
        plumbing |= {"max_num_seqs", "gpu_memory_utilization", "tensor_parallel_size"}
        plumbing |= {"enable_prefix_caching", "model", "base_url"}
        if self.backend != "vllm":
            plumbing.add("dtype")
        recorded = {
            "backend": self.backend,
            **self.identity(),
            **self.model_dump(exclude=plumbing | {"fallback"}),
        }
        fallback = self.fallback_config()
        if fallback is not None:
            recorded["fallback"] = fallback.provenance()
        return recorded

    def identity(self) -> dict[str, Any]:
        """The model by its portable name (`recorded_name`) and what pins it: a local GGUF by
        the SHA-256 of the file; an endpoint by the host of its base URL (never a user,
        password, path or query string); a vLLM checkpoint folder by the SHA-256 of its
        config.json. Hashes are None where there is no file to read."""
        name = model_label(self.backend, self.model)
        if self.backend == "local":
            return {"model": name, "sha256": file_sha256(self.model) if self.model else None}
        if self.backend == "openai":
            return {"model": name, "host": url_host(self.base_url or OPENAI_BASE_URL)}
        if self.backend == "vllm":
            folder = self.model if self.model and os.path.isdir(self.model) else None
            digest = file_sha256(os.path.join(folder, "config.json")) if folder else None
            return {"model": name, "config_sha256": digest}
        return {"model": name}

    @property
    def recorded_name(self) -> str:
        """The model's name in records: `model` named portably, or the backend's name."""
        return model_label(self.backend, self.model) or self.backend


@lru_cache(maxsize=256)
def model_label(backend: str, model: str | None) -> str | None:
    """A model's name the same on every machine: a local GGUF (a path) by its package-relative
    or file name, a vLLM checkpoint folder by its name, a model name as it is; an absolute path
    anywhere (`vllm serve /models/x` names its model so) by its last part."""
    if model is None:
        return None
    if backend == "local" or is_absolute_path(model):
        return portable_name(model)
    if backend == "vllm" and os.path.exists(model):
        return portable_name(model)
    return model


class DeliberationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: int = Field(2, ge=1, description="Deliberation agents taking turns in order.")
    budget: int = Field(
        4, ge=0, description="Most agent turns before the refiner takes over (0: no deliberation)."
    )
    agreement: Literal["any", "all"] = Field(
        "any",
        description="`any`: stop when one agent declares the CoT complete (the paper). "
        "`all`: stop when every agent in turn has declared it complete with no change between.",
    )


class BeliefConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tries: int = Field(
        3, ge=1, description="Beliefs the whisperer may try per prompt before giving up."
    )
    faithfulness_margin: int | None = Field(
        2,
        ge=1,
        le=4,
        description="When no belief led to a violation, still keep a pair if the grader scores "
        "the chosen CoT's faithfulness to the policies at least this much (1-5 scale) above the "
        "most severe rejected try's (the paper's 'or faithfulness clearly lower'). null: off.",
    )


# Llama Guard 3's hazard codes, mapped onto the default policy set's ids.
LLAMA_GUARD_CATEGORIES = {
    "S1": "hate_harassment_violence",  # violent crimes
    "S2": "illegal_activities",  # non-violent crimes
    "S3": "illegal_activities",  # sex-related crimes
    "S4": "illegal_activities",  # child sexual exploitation
    "S5": "fraud_deception",  # defamation
    "S6": "physical_harm",  # specialised advice
    "S7": "hate_harassment_violence",  # privacy
    "S8": "illegal_activities",  # intellectual property
    "S9": "physical_harm",  # indiscriminate weapons
    "S10": "hate_harassment_violence",  # hate
    "S11": "physical_harm",  # suicide and self-harm
    "S12": "respect_helpfulness",  # sexual content
    "S13": "fraud_deception",  # elections
    "S14": "illegal_activities",  # code interpreter abuse
}


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["policy", "guard"] = Field(
        "policy",
        description="`policy`: any chat model returns a structured verdict against the policy "
        "set. `guard`: a Llama-Guard-style model answers `safe` or `unsafe` plus category codes.",
    )
    view: Literal["full", "cot", "answer"] = Field(
        "full",
        description="What the judge reads of a completion: all of it, the reasoning inside "
        "<think>...</think> only, or the answer after it only.",
    )
    categories: dict[str, str] = Field(
        default_factory=lambda: dict(LLAMA_GUARD_CATEGORIES),
        description="`guard` only: category code -> policy id.",
    )
    threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="`guard` only: call a completion unsafe when the guard's probability of "
        "answering `unsafe` is at least this, read from the token log-probabilities of its first "
        "answer token (needs an `openai` backend whose server returns them, as vLLM does). Unset: "
        "the guard's own answer decides.",
    )

    def fingerprint(self) -> dict[str, Any]:
        """What of this section decides a run's output; `threshold` only when set, so runs made
        before it existed keep their fingerprint."""
        data = self.model_dump()
        if data["threshold"] is None:
            del data["threshold"]
        return data


class UnsafeChainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    samples: int = Field(4, ge=1, description="K: completions sampled from the target per prompt.")
    hard_threshold: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="A prompt is hard when the share of its judged samples that are safe is at "
        "most this. 0: every sample unsafe (the default). Just under 1: any unsafe sample.",
    )


class InputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_field: str = Field("prompt", description="Column holding the prompt text.")
    id_field: str = Field(
        "id", description="Column holding a row id (missing: a hash of the prompt text)."
    )
    split: str = Field("train", description="Split of a Hugging Face dataset.")


class PromptTemplate(BaseModel):
    """Overrides a role's prompt: `instructions` (static, no placeholders) and/or `task` (the
    per-row part with placeholders). Each is the text itself or a path to a file holding it."""

    model_config = ConfigDict(extra="forbid")

    instructions: str | None = None
    task: str | None = None


class RunConfig(BaseSettings):
    """Everything that decides what a run produces (plus how hard it may push the endpoint)."""

    model_config = SettingsConfigDict(
        env_prefix="AIDSAFE_", env_nested_delimiter="__", extra="forbid"
    )

    recipe: str | None = Field(
        None,
        description="The recipe to run, or a chain of recipes (`aidsafe recipes` lists them). "
        "Unset: the default recipe.",
    )
    policies: str = Field(
        "default", description="Policy YAML path, or the name of a shipped set (`default`)."
    )
    models: dict[str, ModelConfig] = Field(
        default_factory=dict,
        description="Model per role (`aidsafe recipes` lists each recipe's roles), plus "
        "`default`. A numbered role (`deliberator_2`) inherits from its family "
        "(`deliberator`). Unset fields inherit from `default`.",
    )
    deliberation: DeliberationConfig = Field(default_factory=DeliberationConfig)
    belief: BeliefConfig = Field(default_factory=BeliefConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    unsafechain: UnsafeChainConfig = Field(default_factory=UnsafeChainConfig)
    input: InputConfig = Field(default_factory=InputConfig)
    prompts: dict[str, PromptTemplate] = Field(
        default_factory=dict, description="Prompt overrides per role (see README)."
    )
    repair_attempts: int = Field(
        2,
        ge=0,
        description="Times a malformed answer is sent back for repair before the row fails.",
    )
    concurrency: int = Field(4, ge=1, description="Prompts in flight at once.")
    max_cost: float | None = Field(
        None,
        gt=0,
        description="Budget in USD for the run directory, all commands and resumes together "
        "(needs `price` on the models): no new row starts once the cost so far plus the "
        "projected cost of the rows in flight would pass it.",
    )
    token_budget: int | None = Field(
        None,
        gt=0,
        description="Budget in tokens (input + output) for the run directory, as `max_cost`.",
    )
    checkpoint: Literal["step", "row"] = Field(
        "step",
        description="`step`: every model answer goes to the run's response log as it arrives, "
        "so a killed run repeats only the calls that were in flight. `row`: no response log; a "
        "killed run redoes its rows in flight from the start (writes about half the bytes).",
    )

    @model_validator(mode="after")
    def _threshold_needs_a_guard_at_an_endpoint(self) -> RunConfig:
        if self.judge.threshold is not None:
            if self.judge.kind != "guard":
                raise ValueError("judge.threshold is for `kind: guard` judges")
            backend = self.model_for("judge").backend
            if backend != "openai":
                raise ValueError(
                    "judge.threshold reads token log-probabilities from an `openai` backend "
                    f"(an endpoint such as vLLM's); the judge's backend is {backend}"
                )
        return self

    def model_for(self, role: str, temperature: float | None = None) -> ModelConfig:
        """The role's model: defaults < `default` < role family (`deliberator`) < the role.
        `temperature`: the role's default, used when no layer sets one."""
        layers = [self.models.get("default")]
        if role_family(role) != role:
            layers.append(self.models.get(role_family(role)))
        layers.append(self.models.get(role))
        merged: dict[str, Any] = {}
        for layer in layers:
            if layer is not None:
                merged.update(layer.model_dump(exclude_unset=True))  # nested: set keys only
        if merged.get("temperature") is None:
            merged["temperature"] = temperature
        return ModelConfig.model_validate(merged)


def role_family(role: str) -> str:
    """The family a numbered role name belongs to (`deliberator_2` -> `deliberator`); any
    other role is its own family."""
    base, _, number = role.rpartition("_")
    return base if base and number.isdigit() else role


def fingerprint(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Config file (optional) with CLI overrides on top; AIDSAFE_* env vars fill what neither
    sets. `overrides` uses the config's own nested keys; a None value means "not given"."""
    data: dict[str, Any] = {}
    source = "configuration"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as error:
            raise UserError(
                f"{path}: cannot read config file: {error.strerror or error}"
            ) from error
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML: {error}") from error
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        data = loaded or {}
    _deep_update(data, overrides or {})
    try:
        return RunConfig(**data)
    except ValidationError as error:
        raise UserError(describe_validation_error(source, error)) from error


def _deep_update(target: dict[str, Any], updates: dict[str, Any]) -> None:
    for key, value in updates.items():
        if isinstance(value, dict):
            node = target.get(key)
            if not isinstance(node, dict):
                node = target[key] = {}
            _deep_update(node, value)
        elif value is not None:
            target[key] = value
