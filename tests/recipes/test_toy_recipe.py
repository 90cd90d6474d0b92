"""Adding a recipe is one module and one registry line: a toy recipe runs through generate,
resume, export and the Ray engine without any other module knowing it."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.recipes import registry
from aidsafe.run.directory import RunDirectory
from aidsafe.run.engine import Engine
from aidsafe.run.pipeline import generate
from aidsafe.tasks.export import export_run
from tests.conftest import make_config, read_jsonl, write_prompts
from tests.recipes import toy


@pytest.fixture
def toy_recipe() -> Iterator[None]:
    registry.register(toy.RECIPE)
    yield
    registry.unregister(toy.RECIPE.name)


def echoer(text: str = "HELLO") -> ScriptedChatModel:
    return ScriptedChatModel([{"text": text}], repeat_last=True)


async def test_a_registered_recipe_runs_resumes_and_exports(
    toy_recipe: None, tmp_path: Path
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["hello", "there", "you"])
    model = echoer()
    config = make_config(scripted={"echoer": model}, recipe="toy")
    run = RunDirectory(tmp_path / "run")
    first = await generate(PromptSource(str(prompts)), run, config, show_progress=False, limit=2)
    assert [(s.recipe, s.done_now, s.failed_now) for s in first.stages] == [("toy", 2, 0)]
    assert [row["echo"] for row in read_jsonl(run.path("toy.jsonl"))] == ["HELLO", "HELLO"]
    assert model.calls == 2

    again = await generate(PromptSource(str(prompts)), run, config, show_progress=False)
    assert (again.stages[0].skipped, again.stages[0].done_now) == (2, 1)
    assert model.calls == 3  # finished rows are not asked again
    assert sorted(row["id"] for row in read_jsonl(run.path("toy.jsonl"))) == ["p0", "p1", "p2"]
    manifest = run.manifest() or {}
    assert manifest["recipe"] == "toy" and manifest["counts"]["done"] == 3
    assert manifest["config"]["models"]["echoer"]["backend"] == "scripted"

    target, rows = export_run(run.root, "jsonl", tmp_path / "sft.jsonl", "sft")
    exported = read_jsonl(target)
    assert rows == 3 and set(exported[0]) == {"id", "messages", "metadata"}


def test_the_cli_knows_a_registered_recipe(toy_recipe: None) -> None:
    assert "toy" in registry.names()
    assert registry.steps("toy") == [toy.RECIPE]
    assert "echo" in registry.mermaid_diagram("toy")


@pytest.mark.timeout(300)
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed")
def test_a_registered_recipe_runs_on_ray_workers(toy_recipe: None, tmp_path: Path) -> None:
    import ray
    import ray.cloudpickle

    # the workers cannot import the tests package: send the recipe's module by value
    ray.cloudpickle.register_pickle_by_value(toy)
    prompts = write_prompts(tmp_path / "p.jsonl", [f"q{n}" for n in range(6)])
    config = make_config(scripted={"echoer": echoer("LOUD")}, recipe="toy", concurrency=2)
    engine = Engine(workers=2)
    try:
        with engine.session():
            result = asyncio.run(
                generate(
                    PromptSource(str(prompts)),
                    RunDirectory(tmp_path / "run"),
                    config,
                    show_progress=False,
                    engine=engine,
                )
            )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(toy)
    assert (result.stages[0].done_now, result.stages[0].failed_now) == (6, 0)
    rows = read_jsonl(tmp_path / "run" / "toy.jsonl")
    assert sorted(row["id"] for row in rows) == [f"p{n}" for n in range(6)]
    assert {row["echo"] for row in rows} == {"LOUD"}
    assert len(read_jsonl(tmp_path / "run" / "sft.jsonl")) == 6
