from pathlib import Path

import pytest

from aidsafe.config import PromptTemplate
from aidsafe.errors import UserError
from aidsafe.policies import load_policies
from aidsafe.prompts import (
    DEFAULT_PROMPTS,
    format_intents,
    format_thoughts,
    load_prompts,
    render_messages,
)


def test_policies_come_first_and_the_system_message_is_shared_across_rows() -> None:
    block = load_policies("default").render()
    first = render_messages(block, DEFAULT_PROMPTS["decomposer"], query="how do magnets work")
    second = render_messages(block, DEFAULT_PROMPTS["decomposer"], query="something else")
    assert first[0].text.startswith("# Safety policies: aidsafe-default")
    assert first[0].text == second[0].text  # static prefix, reusable by prefix caches
    assert "how do magnets work" not in first[0].text
    assert first[1].text == "Query:\nhow do magnets work"


def test_roles_share_the_policy_prefix() -> None:
    block = load_policies("default").render()
    systems = [
        render_messages(block, p, **dict.fromkeys(p.placeholders, "x"))[0].text
        for p in DEFAULT_PROMPTS.values()
    ]
    assert all(text.startswith(block) for text in systems)


def test_thoughts_are_numbered_with_cited_policies() -> None:
    thoughts = [{"text": " one ", "policies": ["a", "b"]}, {"text": "two", "policies": []}]
    assert format_thoughts(thoughts) == "1. one [a, b]\n2. two"
    assert format_thoughts([]) == "(none)"
    assert format_intents({"explicit": ["x"], "implicit": ["y"]}) == "- explicit: x\n- implicit: y"


def test_user_braces_are_not_template_fields() -> None:
    messages = render_messages("P\n", DEFAULT_PROMPTS["decomposer"], query="print('{x}')")
    assert messages[1].text.endswith("print('{x}')")


def test_override_from_text_and_file(tmp_path: Path) -> None:
    task_file = tmp_path / "task.txt"
    task_file.write_text("Q: {query}\nI: {intents}")
    prompts = load_prompts(
        {"drafter": PromptTemplate(instructions="Be brief.", task=str(task_file))}
    )
    assert prompts["drafter"].instructions == "Be brief."
    assert prompts["drafter"].task == "Q: {query}\nI: {intents}"
    assert prompts["refiner"] == DEFAULT_PROMPTS["refiner"]


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
        load_prompts({"drafter": override})
    assert message in str(caught.value)
