"""Helpers for the grading, filtering and report tests: finished runs made with scripted
models, and a scripted grader that answers by the rubric it is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aidsafe.agents.grader import METRICS, RUBRICS
from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from tests.conftest import DRAFT, make_config, scripted, write_prompts


def grader(by_metric: dict[str, Any] | None = None) -> ScriptedChatModel:
    """Answers by the rubric in the system prompt: a score per metric (default 4)."""
    by_metric = by_metric or {}

    def answer(messages: list[Any]) -> Any:
        system = messages[0].text
        metric = next(m for m in METRICS if RUBRICS[m] in system)
        return by_metric.get(metric, {"score": 4, "rationale": f"ok {metric}"})

    return ScriptedChatModel([answer], repeat_last=True)


async def make_run(tmp_path: Path, name: str, recipe: str, prompts: list[str]) -> RunDirectory:
    """A finished run of `recipe` over `prompts`, its models scripted."""
    source = PromptSource(str(write_prompts(tmp_path / "p.jsonl", prompts)))
    run = RunDirectory(tmp_path / name)
    models = (
        {"baseline": ScriptedChatModel([DRAFT], repeat_last=True)}
        if recipe == "baseline"
        else scripted()
    )
    await generate(source, run, make_config(scripted=models, recipe=recipe), show_progress=False)
    return run
