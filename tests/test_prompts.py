from pathlib import Path

import pytest

from aidsafe.agents.judge import JUDGE
from aidsafe.config import PromptTemplate
from aidsafe.errors import UserError
from aidsafe.policies import load_policies
from aidsafe.prompts import (
    RolePrompt,
    format_intents,
    format_thoughts,
    load_prompts,
    render_messages,
)
from aidsafe.recipes import registry
from aidsafe.recipes.aidsafe import DECOMPOSER, DRAFTER, REFINER

# Every role's default prompt, as the recipes and agents declare them.
DEFAULTS: dict[str, RolePrompt] = {
    name: role.prompt for name, role in registry.declared_roles().items() if role.prompt
}


def test_every_templated_role_declares_a_default_prompt() -> None:
    assert set(DEFAULTS) == {
        "decomposer",
        "drafter",
        "deliberator",
        "refiner",
        "baseline",
        "whisperer",
        "generator",
        "judge",
        "corrector",
        "classifier",
        "contrast",
    }
    assert DEFAULTS["judge"] is JUDGE.prompt
    for name, prompt in DEFAULTS.items():
        assert "query" in prompt.placeholders, name
        assert set(_fields(prompt.task)) <= prompt.placeholders, name
        assert not _fields(prompt.instructions), name  # static, shared across rows


def _fields(text: str) -> set[str]:
    import string

    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def test_policies_come_first_and_the_system_message_is_shared_across_rows() -> None:
    block = load_policies("default").render()
    first = render_messages(block, DEFAULTS["decomposer"], query="how do magnets work")
    second = render_messages(block, DEFAULTS["decomposer"], query="something else")
    assert first[0].text.startswith("# Safety policies: aidsafe-default")
    assert first[0].text == second[0].text  # static prefix, reusable by prefix caches
    assert "how do magnets work" not in first[0].text
    assert first[1].text == "Query:\nhow do magnets work"


def test_roles_share_the_policy_prefix() -> None:
    block = load_policies("default").render()
    systems = [
        render_messages(block, p, **dict.fromkeys(p.placeholders, "x"))[0].text
        for p in DEFAULTS.values()
    ]
    assert len(systems) == len(DEFAULTS)
    assert all(text.startswith(block) for text in systems)


def test_thoughts_are_numbered_with_cited_policies() -> None:
    thoughts = [{"text": " one ", "policies": ["a", "b"]}, {"text": "two", "policies": []}]
    assert format_thoughts(thoughts) == "1. one [a, b]\n2. two"
    assert format_thoughts([]) == "(none)"
    assert format_intents({"explicit": ["x"], "implicit": ["y"]}) == "- explicit: x\n- implicit: y"
    assert format_intents({}) == "- (none found)"


def test_user_braces_are_not_template_fields() -> None:
    messages = render_messages("P\n", DEFAULTS["decomposer"], query="print('{x}')")
    assert messages[1].text.endswith("print('{x}')")


def test_override_from_text_and_file(tmp_path: Path) -> None:
    task_file = tmp_path / "task.txt"
    task_file.write_text("Q: {query}\nI: {intents}")
    prompts = load_prompts(
        DEFAULTS, {"drafter": PromptTemplate(instructions="Be brief.", task=str(task_file))}
    )
    assert prompts["drafter"].instructions == "Be brief."
    assert prompts["drafter"].task == "Q: {query}\nI: {intents}"
    assert prompts["drafter"].placeholders == DRAFTER.prompt.placeholders  # type: ignore[union-attr]
    assert prompts["refiner"] == DEFAULTS["refiner"]
    only_task = load_prompts(DEFAULTS, {"refiner": PromptTemplate(task="{query}")})
    assert only_task["refiner"].instructions == DEFAULTS["refiner"].instructions
    assert only_task["refiner"].task == "{query}"


def test_overrides_of_roles_a_run_does_not_call_are_left_out() -> None:
    defaults = {"decomposer": DECOMPOSER.prompt, "refiner": REFINER.prompt}
    prompts = load_prompts(
        defaults,  # type: ignore[arg-type]
        {"whisperer": PromptTemplate(instructions="Be sneaky."), "refiner": PromptTemplate()},
    )
    assert set(prompts) == {"decomposer", "refiner"}
    assert prompts["refiner"] == REFINER.prompt


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (PromptTemplate(task="{query} {colour}"), "prompts.drafter.task: unknown placeholders"),
        (PromptTemplate(task="no query here {intents}"), "must contain the {query}"),
        (PromptTemplate(instructions="Hi {query}"), "instructions: must be static text"),
        (PromptTemplate(task="{query"), "prompts.drafter.task"),
    ],
)
def test_bad_overrides_are_rejected_when_loaded(override: PromptTemplate, message: str) -> None:
    with pytest.raises(UserError) as caught:
        load_prompts(DEFAULTS, {"drafter": override})
    assert message in str(caught.value)


def test_a_run_context_applies_the_config_overrides() -> None:
    config = registry.load_config(
        None, {"prompts": {"drafter": {"instructions": "Be brief."}}, "models": {}}
    )
    context = registry.context(registry.get("aidsafe"), config, build_models=False)
    assert context.prompts["drafter"].instructions == "Be brief."
    assert context.prompts["decomposer"] == DECOMPOSER.prompt
    assert set(context.prompts) == {"decomposer", "drafter", "deliberator", "refiner"}


@pytest.mark.parametrize(
    ("role", "task", "message"),
    [
        ("drafter", "{query} {colour}", "prompts.drafter.task: unknown placeholders"),
        # a role of a later stage of the chain is checked before the first stage runs
        ("whisperer", "{query} {belief}", "prompts.whisperer.task: unknown placeholders"),
        ("judge", "no query", "prompts.judge.task: must contain the {query}"),
    ],
)
def test_bad_overrides_in_a_config_file_fail_when_it_is_loaded(
    tmp_path: Path, role: str, task: str, message: str
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"recipe: aidsafe-dpo\nprompts:\n  {role}:\n    task: '{task}'\n")
    with pytest.raises(UserError, match=r"c\.yaml") as caught:
        registry.load_config(path)
    assert message in str(caught.value)
