"""The `vllm` backend. Request building, schema translation and result parsing are pure and run
everywhere; the engine test runs the real CLI on a GPU (skipped where vllm or CUDA is absent)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage

from aidsafe.config import ModelConfig, RunConfig, fingerprint
from aidsafe.errors import UserError
from aidsafe.inputs import PromptSource
from aidsafe.models import build_chat_model
from aidsafe.models import vllm as vllm_backend
from aidsafe.models.structured import structured_method
from aidsafe.models.vllm import (
    ChatVLLM,
    EngineSettings,
    chat_messages,
    check_shared_engines,
    response_schema,
    result_message,
    sampling_kwargs,
)
from aidsafe.recipes import registry
from aidsafe.recipes.registry import load_config
from aidsafe.records import Reason
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.schemas import Intents
from aidsafe.testing import example_instance
from tests.conftest import make_config, read_jsonl, write_prompts

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


def vllm_config(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"backend": "vllm", "model": "/models/smol", **fields})


def test_engine_settings_come_from_the_role_config_with_prefix_caching_on() -> None:
    settings = EngineSettings.of(vllm_config(dtype="bfloat16", max_num_seqs=128, n_ctx=4096))
    assert settings.engine_args() == {
        "model": "/models/smol",
        "dtype": "bfloat16",
        "max_model_len": 4096,
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 1,
        "enable_prefix_caching": True,
        "disable_log_stats": False,
        "max_num_seqs": 128,
    }
    assert "max_num_seqs" not in EngineSettings.of(vllm_config()).engine_args()


def test_a_vllm_backend_without_a_model_is_a_user_error() -> None:
    with pytest.raises(UserError, match="needs `model`"):
        EngineSettings.of(ModelConfig(backend="vllm"))


def test_roles_naming_one_model_share_an_engine_or_are_told_to_agree() -> None:
    same = {"drafter": vllm_config(temperature=0.7), "refiner": vllm_config(temperature=0.0)}
    check_shared_engines(same)  # sampling differs, the engine is the same: fine
    clash = {"drafter": vllm_config(), "refiner": vllm_config(gpu_memory_utilization=0.5)}
    with pytest.raises(UserError, match=r"models\.refiner and models\.drafter .* same vllm model"):
        check_shared_engines(clash)
    first = build_chat_model(vllm_config(temperature=0.7))
    second = build_chat_model(vllm_config(temperature=0.0))
    assert isinstance(first, ChatVLLM) and isinstance(second, ChatVLLM)
    assert first.settings == second.settings and hash(first.settings) == hash(second.settings)


def test_sampling_parameters_carry_the_role_settings_and_the_json_schema() -> None:
    schema = Intents.model_json_schema()
    response_format = {"type": "json_schema", "json_schema": {"name": "Intents", "schema": schema}}
    kwargs = sampling_kwargs(0.0, 512, 0.9, 7, ["</s>"], response_format)
    assert kwargs == {
        "temperature": 0.0,
        "max_tokens": 512,
        "top_p": 0.9,
        "seed": 7,
        "stop": ["</s>"],
        "structured_outputs": {"json": schema},
    }
    plain = sampling_kwargs(None, None, None, None)
    assert plain == {"temperature": 0.7, "max_tokens": 1024}


def test_response_formats_translate_to_a_schema_or_any_json() -> None:
    assert response_schema({"type": "json_object", "schema": {"type": "object"}}) == {
        "type": "object"
    }
    assert response_schema({"type": "json_object"}) is True
    with pytest.raises(ValueError, match="unsupported"):
        response_schema({"type": "text"})


def test_structured_output_is_asked_of_the_engine_and_validated_by_pydantic() -> None:
    model = build_chat_model(vllm_config())
    assert structured_method(vllm_config()) is None  # the backend constrains output itself
    runnable = model.with_structured_output(Intents, include_raw=True)
    bound = runnable.first  # type: ignore[attr-defined]
    response_format = bound.kwargs["response_format"]
    assert response_schema(response_format) == Intents.model_json_schema()
    parsed = runnable.last.invoke(  # type: ignore[attr-defined]
        result_message(fake_output('{"explicit": ["a"], "implicit": []}'))
    )
    assert parsed["parsed"] == Intents(explicit=["a"], implicit=[])
    broken = runnable.last.invoke(result_message(fake_output('{"explicit": ')))  # type: ignore[attr-defined]
    assert broken["parsed"] is None and "not valid JSON" in str(broken["parsing_error"])


def fake_output(text: str) -> SimpleNamespace:
    completion = SimpleNamespace(text=text, token_ids=[1, 2, 3], finish_reason="stop")
    return SimpleNamespace(outputs=[completion], prompt_token_ids=[5] * 10, num_cached_tokens=8)


def test_results_become_messages_with_token_usage() -> None:
    message = result_message(fake_output("hello"))
    assert message.content == "hello"
    assert message.usage_metadata == {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13}
    assert message.response_metadata == {"finish_reason": "stop", "cached_tokens": 8}


def test_messages_keep_their_roles_for_the_chat_template() -> None:
    messages = [SystemMessage(content="policies"), HumanMessage(content="prompt")]
    assert chat_messages(messages) == [
        {"role": "system", "content": "policies"},
        {"role": "user", "content": "prompt"},
    ]


def run_fingerprint(config: RunConfig) -> str:
    recipe = registry.get("aidsafe")
    return fingerprint(
        recipe.fingerprint_data(registry.context(recipe, config, build_models=False))
    )


def test_engine_settings_are_not_part_of_the_fingerprint_but_dtype_is() -> None:
    engine = {"backend": "vllm", "model": "m"}
    small = load_config(None, {"models": {"default": engine}})
    big = load_config(
        None,
        {
            "models": {
                "default": {
                    **engine,
                    "max_num_seqs": 512,
                    "gpu_memory_utilization": 0.5,
                    "tensor_parallel_size": 2,
                    "enable_prefix_caching": False,
                }
            }
        },
    )
    half = load_config(None, {"models": {"default": {**engine, "dtype": "half"}}})
    assert run_fingerprint(small) == run_fingerprint(big)
    assert run_fingerprint(small) != run_fingerprint(half)
    assert small.model_for("drafter", 0.7).provenance()["dtype"] == "auto"
    assert "dtype" not in load_config(None, {}).model_for("drafter", 0.7).provenance()


def test_missing_vllm_is_reported_before_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidsafe.models import preflight

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a)
    )
    with pytest.raises(UserError, match=r"aidsafe\[vllm\]"):
        preflight({"drafter": vllm_config()})


def gpu_available() -> bool:
    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.timeout(1500)
@pytest.mark.skipif(not gpu_available(), reason="needs vllm and a CUDA GPU")
def test_generate_on_an_in_process_vllm_engine(tmp_path: Path) -> None:
    """The real CLI, the AIDSAFE recipe with DPO pairs, on SmolLM2-135M converted from the
    bundled GGUF (AIDSAFE_VLLM_MODEL may name a checkpoint directory instead)."""
    from aidsafe.models.checkpoint import convert_gguf

    model = os.environ.get("AIDSAFE_VLLM_MODEL") or str(convert_gguf(tmp_path / "smollm2"))
    config = tmp_path / "vllm.yaml"
    config.write_text(
        "models:\n  default:\n    backend: vllm\n"
        f"    model: {model}\n    gpu_memory_utilization: 0.5\n    n_ctx: 8192\n"
    )
    out = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "aidsafe", "generate", str(EXAMPLES / "prompts.jsonl")),
        *("--out", str(out), "--config", str(config), "--concurrency", "8"),
        *("--recipe", "aidsafe-dpo", "--quiet"),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert finished.returncode == 0, finished.stderr[-4000:]
    traces = read_jsonl(out / "traces.jsonl")
    failures = read_jsonl(out / "failures.jsonl")
    assert len(traces) + len(failures) == 8
    assert {f["reason"] for f in failures} <= {"malformed_output"}, failures
    assert traces, "a real engine with schema-constrained decoding finishes some rows"
    for trace in traces:
        assert all(call["input_tokens"] > 0 for call in trace["calls"])
        assert trace["models"]["drafter"]["backend"] == "vllm"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["done"] == len(traces)
    assert manifest["counts"]["failed"] == len(failures)
    # the chain's second stage, belief pairs, on the same engine: one outcome per trace
    pairs = read_jsonl(out / "dpo.jsonl")
    rejected = read_jsonl(out / "dpo_failures.jsonl")
    assert sorted(r["id"] for r in pairs + rejected) == sorted(t["id"] for t in traces)
    assert all(Reason(r["reason"]) for r in rejected)
    assert manifest["dpo"]["recipe"] == "belief"
    assert manifest["dpo"]["counts"]["done"] == len(pairs)
    assert manifest["dpo"]["counts"]["failed"] == len(rejected)


class FakeTokenizer:
    """Stands in for the model's tokenizer: a visible chat template, one id per character."""

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        assert kwargs == {"add_generation_prompt": True, "tokenize": False}
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        assert add_special_tokens is False
        return [ord(c) % 256 for c in text]


class FakeAsyncLLM:
    """Stands in for vllm's AsyncLLM: answers every request with a schema-valid instance."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], Any, str]] = []

    async def generate(self, prompt: dict[str, Any], sampling: Any, request_id: str) -> Any:
        self.requests.append((prompt, sampling, request_id))
        schema = sampling.kwargs["structured_outputs"].kwargs["json"]
        text = json.dumps(example_instance(schema))
        completion = SimpleNamespace(text=text, token_ids=[1] * 7, finish_reason="stop")
        yield SimpleNamespace(
            outputs=[completion], prompt_token_ids=prompt["prompt_token_ids"], num_cached_tokens=0
        )

    def shutdown(self) -> None:
        pass


class Recorded:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAsyncLLM]:
    """A `vllm` module whose AsyncLLM is FakeAsyncLLM: the adapter's own code runs for real."""
    llm = FakeAsyncLLM()
    vllm = ModuleType("vllm")
    vllm.__spec__ = ModuleSpec("vllm", None)
    vllm.SamplingParams = Recorded  # type: ignore[attr-defined]
    vllm.AsyncEngineArgs = Recorded  # type: ignore[attr-defined]
    params = ModuleType("vllm.sampling_params")
    params.StructuredOutputsParams = Recorded  # type: ignore[attr-defined]
    params.RequestOutputKind = SimpleNamespace(FINAL_ONLY="final-only")  # type: ignore[attr-defined]
    engine = ModuleType("vllm.v1.engine.async_llm")

    class AsyncLLM:
        @staticmethod
        def from_engine_args(args: Recorded) -> Any:
            llm.engine_args = args.kwargs  # type: ignore[attr-defined]
            llm.get_tokenizer = FakeTokenizer  # type: ignore[attr-defined]
            return llm

    engine.AsyncLLM = AsyncLLM  # type: ignore[attr-defined]
    for name, module in {
        "vllm": vllm,
        "vllm.sampling_params": params,
        "vllm.v1": ModuleType("vllm.v1"),
        "vllm.v1.engine": ModuleType("vllm.v1.engine"),
        "vllm.v1.engine.async_llm": engine,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    yield llm
    vllm_backend.shutdown_engines()


async def test_a_run_on_the_vllm_backend_goes_through_one_shared_engine(
    tmp_path: Path, fake_vllm: FakeAsyncLLM
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["first prompt", "second prompt"])
    config = make_config(
        concurrency=2,
        models={"default": {"backend": "vllm", "model": "/models/smol", "retry_wait": 0}},
    )
    result = await generate(
        PromptSource(str(prompts)), RunDirectory(tmp_path / "run"), config, show_progress=False
    )
    [summary] = result.stages
    assert (summary.recipe, summary.done_now, summary.failed_now) == ("aidsafe", 2, 0)
    assert fake_vllm.engine_args["model"] == "/models/smol"  # type: ignore[attr-defined]
    assert fake_vllm.engine_args["enable_prefix_caching"] is True  # type: ignore[attr-defined]
    assert len(fake_vllm.requests) == 2 * 4  # every role, one engine
    assert len({request_id for _, _, request_id in fake_vllm.requests}) == 8
    prompt, sampling, _ = fake_vllm.requests[0]
    assert sampling.kwargs["output_kind"] == "final-only"
    assert sampling.kwargs["temperature"] == 0.7  # the decomposer's default
    text = "".join(chr(i) for i in prompt["prompt_token_ids"])
    assert text.startswith("<system># Safety policies") and text.endswith("<assistant>")
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    assert len(traces) == 2
    assert all(call["output_tokens"] == 7 for trace in traces for call in trace["calls"])
    assert all(trace["models"]["drafter"]["backend"] == "vllm" for trace in traces)
    refiner = [s for _, s, _ in fake_vllm.requests if s.kwargs["temperature"] == 0.0]
    assert refiner, "the refiner samples at its own temperature on the shared engine"


def test_a_synchronous_call_runs_on_a_background_loop(fake_vllm: FakeAsyncLLM) -> None:
    model = build_chat_model(vllm_config(temperature=0.0))
    runnable = model.with_structured_output(Intents, include_raw=True)
    answer = runnable.invoke([HumanMessage(content="hello")])
    assert answer["parsed"] == Intents.model_validate(example_instance(Intents.model_json_schema()))
    assert len(fake_vllm.requests) == 1
