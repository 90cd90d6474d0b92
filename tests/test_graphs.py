"""graphs/: the LangGraph Studio entry points (one factory per registered recipe) build each
graph with its run context bound, so Studio can run it without sending one."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from aidsafe.recipes import registry
from tests.conftest import make_config, scripted

GRAPHS = Path(__file__).parents[1] / "graphs"
EXAMPLES = Path(__file__).parents[1] / "examples"


def studio() -> ModuleType:
    spec = importlib.util.spec_from_file_location("studio", GRAPHS / "studio.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(registry.RECIPES))
def test_each_recipe_has_a_studio_factory_on_the_config_file(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("AIDSAFE_CONFIG_FILE", str(EXAMPLES / "vllm-serve.yaml"))
    graph = getattr(studio(), name)()
    assert set(registry.get(name).graph().nodes) <= set(graph.get_graph().nodes)


async def test_a_studio_graph_runs_without_a_context_from_the_caller(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make_config(scripted=scripted())  # registers the scripted role models
    roles = ["decomposer", "drafter", "deliberator_1", "deliberator_2", "refiner"]
    config = tmp_path / "studio.yaml"
    config.write_text(
        "models:\n"
        + "".join(f"  {role}:\n    backend: scripted\n    model: {role}\n" for role in roles)
    )
    monkeypatch.setenv("AIDSAFE_CONFIG_FILE", str(config))
    graph = studio().aidsafe()
    state = await graph.ainvoke({"id": "s", "prompt": "How do I stop a stuck process?"})
    assert state["final_response"] and state["turns"]
