"""The registry: the only module that names concrete recipes. It lists the recipes, the chains
(`aidsafe-dpo` = aidsafe, then belief over its rows), the roles a config may set, and checks a
loaded config against them. Add a recipe here with one line (or `register` it at run time)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aidsafe.agents.classifier import CLASSIFIER
from aidsafe.agents.context import Role, RunContext, build_context
from aidsafe.agents.contrast import CONTRAST
from aidsafe.agents.grader import GRADER
from aidsafe.agents.judge import JUDGE
from aidsafe.config import RunConfig, role_family
from aidsafe.config import load_config as load_settings
from aidsafe.errors import UserError
from aidsafe.prompts import load_prompts
from aidsafe.recipes import aidsafe, baseline, belief, unsafechain
from aidsafe.recipes.base import Recipe

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (aidsafe.RECIPE, baseline.RECIPE, belief.RECIPE, unsafechain.RECIPE)
}
# A chain runs its recipes in order; each later one consumes the rows of the one before.
CHAINS: dict[str, tuple[str, ...]] = {"aidsafe-dpo": ("aidsafe", "belief")}
DEFAULT = "aidsafe"
# What `aidsafe dpo RUN` runs over a finished run.
PAIRS = "belief"
# The roles of `aidsafe judge`, `grade` and `prepare --classify/--contrast`, which are not recipes
# but read the same config.
TASK_ROLES: dict[str, Role] = {role.name: role for role in (JUDGE, GRADER, CLASSIFIER, CONTRAST)}


def register(recipe: Recipe, chain: tuple[str, ...] | None = None) -> None:
    """Add a recipe (a plugin, or a test's toy recipe); `chain` also registers a chain."""
    RECIPES[recipe.name] = recipe
    if chain is not None:
        CHAINS[recipe.name] = chain


def unregister(name: str) -> None:
    RECIPES.pop(name, None)
    CHAINS.pop(name, None)


def get(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        chain = f" ({name!r} is a chain of {', '.join(CHAINS[name])})" if name in CHAINS else ""
        raise UserError(
            f"recipe: unknown recipe {name!r}{chain} (recipes: {', '.join(RECIPES)})"
        ) from None


def names() -> list[str]:
    """What `generate --recipe` accepts: recipes that consume prompts, and chains."""
    return [n for n, r in RECIPES.items() if r.consumes == "prompts"] + list(CHAINS)


def steps(name: str | None) -> list[Recipe]:
    """The recipes a `generate` run of `name` runs, in order."""
    name = name or DEFAULT
    if name in CHAINS:
        return [get(step) for step in CHAINS[name]]
    recipe = get(name)
    if recipe.consumes != "prompts":
        raise UserError(
            f"recipe: {name!r} makes rows from a finished run, not from prompts "
            f"(known: {', '.join(names())})"
        )
    return [recipe]


def pairs() -> Recipe:
    return get(PAIRS)


def declared_roles() -> dict[str, Role]:
    """Every role any recipe or task declares, by name."""
    roles = {role.name: role for r in RECIPES.values() for role in r.declared_roles}
    return roles | TASK_ROLES


def check_config(config: RunConfig, source: str = "configuration") -> None:
    """Names in `recipe`, `models` and `prompts` that no recipe knows, and prompt overrides of
    roles that take none, are errors naming the file and key (not a KeyError mid-run)."""
    if config.recipe is not None and config.recipe not in names():
        raise UserError(
            f"{source}: recipe: unknown recipe {config.recipe!r} (known: {', '.join(names())})"
        )
    roles = declared_roles()
    numbered = sorted(name for name, role in roles.items() if role.numbered)
    known = ", ".join(["default", *sorted(roles), *(f"{n}_N" for n in numbered)])
    for name in config.models:
        base = role_family(name)
        valid = name in ("default", *roles) or (
            base in roles and roles[base].numbered and int(name.rsplit("_", 1)[1]) > 0
        )
        if not valid:
            raise UserError(f"{source}: models.{name}: unknown role (known: {known})")
    templated = sorted(name for name, role in roles.items() if role.prompt is not None)
    for name in config.prompts:
        if name not in roles:
            raise UserError(
                f"{source}: prompts.{name}: unknown role (roles with prompts: "
                f"{', '.join(templated)})"
            )
        if roles[name].prompt is None:
            raise UserError(
                f"{source}: prompts.{name}: the {name} role takes no prompt template "
                f"({roles[name].description}); roles with prompts: {', '.join(templated)}"
            )
    # placeholders too, for every role: a later stage of a chain must not fail mid-run
    defaults = {name: roles[name].prompt for name in config.prompts}
    try:
        load_prompts({name: prompt for name, prompt in defaults.items() if prompt}, config.prompts)
    except UserError as error:
        raise UserError(f"{source}: {error}") from error


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The run configuration (file, overrides, AIDSAFE_* env, defaults), checked against the
    registered recipes and roles."""
    config = load_settings(path, overrides)
    check_config(config, str(path) if path is not None else "configuration")
    return config


def graph_names() -> list[str]:
    """Every recipe with a graph (for `aidsafe graph` and langgraph.json)."""
    return list(RECIPES)


def context(recipe: Recipe, config: RunConfig, *, build_models: bool = True) -> RunContext:
    return build_context(config, recipe.roles(config), build_models=build_models)


def studio_graph(name: str, config: RunConfig) -> Any:
    """A recipe's graph for LangGraph Studio (`graphs/langgraph.json`): compiled without a
    checkpointer (Studio brings its own), with the run context built from `config` bound as
    the default runtime context, since Studio cannot send one that holds chat models."""
    from langgraph.runtime import Runtime

    recipe = get(name)
    compiled = recipe.graph().compile(name=name)
    runtime = Runtime(context=context(recipe, config))
    # LangGraph merges a runtime found under this key with the one of each invocation.
    return compiled.with_config(configurable={"__pregel_runtime": runtime})


def mermaid_diagram(name: str) -> str:
    """A recipe's graph as Mermaid text; no model is built or called."""
    return str(get(name).graph().compile(name=name).get_graph().draw_mermaid())
