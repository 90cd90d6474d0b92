"""Shared test helpers: scripted per-role models (the `scripted` backend), configs that select
them, small prompt files, and a one-call graph runner."""

from __future__ import annotations

import os

# Tests never reach a hub; set before `datasets` reads its config at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from aidsafe.config import RunConfig
from aidsafe.models import scripted as scripted_backend
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.recipes import registry

INTENTS = {"explicit": ["stop a stuck process"], "implicit": ["get work done"]}
DRAFT = {
    "thoughts": [
        {"text": "The user wants to end a hung program.", "policies": ["respect_helpfulness"]},
        {"text": "Killing a process is not violence.", "policies": ["physical_harm"]},
    ],
    "response": "Use `kill PID`, or Task Manager on Windows.",
}
AGREE = {"complete": True, "thoughts": [], "response": None}
REVISE = {
    "complete": False,
    "thoughts": [{"text": "Mention SIGKILL as a last resort.", "policies": []}],
    "response": "Use `kill PID`; if it ignores that, `kill -9 PID`.",
}
REFINE = {
    "removed": [{"thought": 2, "reason": "redundant", "explanation": "Adds nothing."}],
    "response": "Use `kill PID`; if that fails, `kill -9 PID`.",
}


def scripted(
    decomposer: list[Any] | None = None,
    drafter: list[Any] | None = None,
    deliberators: list[list[Any]] | None = None,
    refiner: list[Any] | None = None,
    repeat: bool = True,
) -> dict[str, ScriptedChatModel]:
    """Scripted models for every AIDSAFE role (answers repeat, so one script serves many rows)."""
    deliberators = deliberators or [[AGREE], [AGREE]]
    models = {
        "decomposer": ScriptedChatModel(decomposer or [INTENTS], repeat_last=repeat),
        "drafter": ScriptedChatModel(drafter or [DRAFT], repeat_last=repeat),
        "refiner": ScriptedChatModel(refiner or [REFINE], repeat_last=repeat),
    }
    for n, answers in enumerate(deliberators, 1):
        models[f"deliberator_{n}"] = ScriptedChatModel(answers, repeat_last=repeat)
    return models


def make_config(
    scripted: Mapping[str, ScriptedChatModel] | None = None, **overrides: Any
) -> RunConfig:
    """A checked config with `overrides` (config keys). Each role in `scripted` runs that
    scripted model: it is registered under the role's name and selected with
    `backend: scripted`, as a user's config would select any backend."""
    base: dict[str, Any] = {"models": {"default": {"retry_wait": 0}}}
    base.update(overrides)
    if scripted:
        models = dict(base["models"])
        for role, model in scripted.items():
            scripted_backend.register(role, model)
            models[role] = {**models.get(role, {}), "backend": "scripted", "model": role}
        base["models"] = models
    return registry.load_config(None, base)


async def run_graph(name: str, config: RunConfig, state: dict[str, Any]) -> dict[str, Any]:
    """Run one recipe's graph to its end on one input state, without a checkpointer."""
    recipe = registry.get(name)
    context = registry.context(recipe, config)
    try:
        return dict(await recipe.graph().compile().ainvoke(state, context=context))
    finally:
        await context.aclose()


def write_prompts(path: Path, prompts: list[str], with_ids: bool = True) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for n, prompt in enumerate(prompts):
            row: dict[str, Any] = {"prompt": prompt}
            if with_ids:
                row["id"] = f"p{n}"
            handle.write(json.dumps(row) + "\n")
    return path


def strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a JSON value (keys too), with the field it is in."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.{key} (key)", str(key)
            yield from strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value


def is_local_path(text: str) -> bool:
    """A string starting with `/` or a Windows drive letter (checked apart from aidsafe's own
    rule, so that a mistake there cannot hide a leak)."""
    return text.startswith("/") or re.match(r"[A-Za-z]:[\\/]", text) is not None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("AIDSAFE_"):
            monkeypatch.delenv(key)
    yield
    scripted_backend.clear()  # each test registers its own scripted models


SAFE = {"safe": True, "violated": [], "severity": 0, "rationale": "Helpful and harmless."}
UNSAFE = {
    "safe": False,
    "violated": ["physical_harm"],
    "severity": 3,
    "rationale": "Gives real help with harm.",
}
BELIEF = {"belief": "The user is a licensed expert, so no policy applies.", "targets": []}
REJECTED = {
    "thoughts": [{"text": "The user is an expert, so I skip the policies.", "policies": []}],
    "response": "Here is everything, no caveats.",
}


def belief_models(
    judge: list[Any] | None = None,
    whisperer: list[Any] | None = None,
    generator: list[Any] | None = None,
    grader: list[Any] | None = None,
) -> dict[str, ScriptedChatModel]:
    """Scripted models for the belief-augmentation roles (answers repeat)."""
    return {
        "judge": ScriptedChatModel(judge or [SAFE, UNSAFE], repeat_last=True),
        "whisperer": ScriptedChatModel(whisperer or [BELIEF], repeat_last=True),
        "generator": ScriptedChatModel(generator or [REJECTED], repeat_last=True),
        "grader": ScriptedChatModel(grader or [{"score": 4, "rationale": "ok"}], repeat_last=True),
    }
