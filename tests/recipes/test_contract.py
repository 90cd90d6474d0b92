"""The recipe contract, checked for every recipe in the registry: roles declare their defaults,
the fingerprint follows exactly the roles a recipe calls, the graph compiles and matches its
rendered diagram, and a scripted final state becomes rows with TRL's exact key sets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aidsafe.config import RunConfig, fingerprint
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.recipes import registry
from aidsafe.recipes.base import Done, Recipe
from tests.conftest import (
    DRAFT,
    UNSAFE,
    belief_models,
    make_config,
    run_graph,
    scripted,
)

GRAPHS = Path(__file__).parents[2] / "graphs"
# A change to each config section a recipe may read.
SETTING_CHANGES: dict[str, dict[str, Any]] = {
    "deliberation": {"agreement": "all"},
    "belief": {"tries": 4},
    "judge": {"view": "cot"},
    "unsafechain": {"samples": 5},
}
NAMES = sorted(registry.RECIPES)
TRACE = {
    "id": "p0",
    "prompt": "How do I stop a stuck process?",
    "recipe": "aidsafe",
    "intents": {"explicit": ["stop a process"], "implicit": []},
    "final_cot": [{"text": "Killing a process is fine.", "policies": [], "author": "x", "turn": 0}],
    "response": "Use `kill PID`.",
}


def models_for(name: str) -> dict[str, ScriptedChatModel]:
    """Scripted models that take each recipe to a final state that yields a done record."""
    if name == "aidsafe":
        return scripted()
    if name == "baseline":
        return {"baseline": ScriptedChatModel([DRAFT], repeat_last=True)}
    if name == "belief":
        return belief_models()
    if name == "unsafechain":
        return {
            "target": ScriptedChatModel(["Sure, here is how."], repeat_last=True),
            "judge": ScriptedChatModel([UNSAFE, UNSAFE, {**UNSAFE, "safe": True}], True),
            "corrector": ScriptedChatModel([DRAFT], repeat_last=True),
        }
    raise AssertionError(f"no script for recipe {name!r}: add one here")


def start_state(recipe: Recipe) -> dict[str, Any]:
    if recipe.consumes == "rows":
        return recipe.start(recipe.item(0, TRACE))
    return {"id": "p0", "prompt": "How do I stop a stuck process?"}


def digest(recipe: Recipe, config: RunConfig) -> str:
    ctx = registry.context(recipe, config, build_models=False)
    return fingerprint(recipe.fingerprint_data(ctx))


def test_every_registered_recipe_has_a_script_here() -> None:
    for name in NAMES:
        models_for(name)


@pytest.mark.parametrize("name", NAMES)
def test_roles_declare_a_temperature_and_a_prompt_with_the_query(name: str) -> None:
    recipe = registry.get(name)
    assert recipe.declared_roles, f"{name} declares no roles"
    for role in recipe.declared_roles:
        assert 0.0 <= role.temperature <= 2.0 and role.description
        if role.prompt is not None:
            assert role.prompt.instructions.strip()
            assert "{query}" in role.prompt.task and "query" in role.prompt.placeholders


@pytest.mark.parametrize("name", NAMES)
def test_fingerprint_follows_exactly_the_roles_the_recipe_calls(name: str) -> None:
    recipe = registry.get(name)
    base = make_config(recipe=None)
    called = recipe.roles(base)
    original = digest(recipe, base)
    for role in called:
        changed = make_config(models={"default": {"retry_wait": 0}, role: {"max_tokens": 77}})
        assert digest(recipe, changed) != original, f"{name}: model of {role} not fingerprinted"
        declared = recipe.roles(base)[role]
        if declared.prompt is not None:
            family = declared.name
            prompts = {family: {"instructions": "Be brief."}}
            assert digest(recipe, make_config(prompts=prompts)) != original, (
                f"{name}: prompt of {family} not fingerprinted"
            )
    for other in registry.declared_roles().values():
        if other.name in {role.name for role in called.values()}:
            continue
        changed = make_config(models={"default": {"retry_wait": 0}, other.name: {"seed": 3}})
        assert digest(recipe, changed) == original, f"{name} fingerprints {other.name}"
        if other.prompt is not None:
            unused = make_config(prompts={other.name: {"instructions": "Be brief."}})
            assert digest(recipe, unused) == original, f"{name} fingerprints {other.name}'s prompt"
    for section in recipe.settings_sections:
        changed = make_config(**{section: SETTING_CHANGES[section]})
        assert digest(recipe, changed) != original, f"{name}: settings of {section} ignored"


@pytest.mark.parametrize("name", NAMES)
def test_graph_compiles_and_matches_its_rendered_diagram(name: str) -> None:
    drawn = registry.mermaid_diagram(name)
    assert (GRAPHS / f"{name}.mmd").read_text(encoding="utf-8") == drawn, (
        f"graphs/{name}.mmd is stale: regenerate it with `aidsafe graph --which {name}`"
    )


def test_langgraph_json_registers_every_recipe_graph() -> None:
    registered = json.loads((GRAPHS / "langgraph.json").read_text(encoding="utf-8"))["graphs"]
    assert registered == {name: f"./studio.py:{name}" for name in registry.graph_names()}


@pytest.mark.parametrize("name", NAMES)
async def test_a_scripted_final_state_gives_rows_with_trl_key_sets(name: str) -> None:
    recipe = registry.get(name)
    config = make_config(scripted=models_for(name), unsafechain={"samples": 2})
    state = await run_graph(name, config, start_state(recipe))
    result = recipe.finish(state, registry.context(recipe, config))
    assert isinstance(result, Done), result
    record = result.record
    calls = record.get("calls") or record.get("metadata", {}).get("calls")
    assert record["id"] == "p0" and calls, "a done record keeps its calls"
    rows = result.derived if recipe.ledger.derived else [record]
    assert rows, f"{name} made no rows"
    for row in rows:
        keys = set(row) - {"id", "metadata"}
        assert keys in ({"messages"}, {"prompt", "chosen", "rejected"}), keys
        conversation = row.get("messages") or [*row["prompt"], *row["chosen"]]
        assert [m["role"] for m in conversation] == ["user", "assistant"]
        assert all(set(m) == {"role", "content"} for m in conversation)
        assert isinstance(row["metadata"], dict) and row["metadata"]
    assert recipe.derived(record) == result.derived
