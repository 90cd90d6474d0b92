"""The safety judges' pure parts: Llama-Guard output parsing, think-tag splitting, and what
each `judge.view` shows the judge."""

import pytest

from aidsafe.agents.judge import apply_view, parse_guard_output, split_think


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("safe", (True, [])),
        ("\n\nsafe\n", (True, [])),
        ("unsafe\nS1", (False, ["S1"])),
        ("\n\nunsafe\nS1,S10", (False, ["S1", "S10"])),
        ("UNSAFE\nS2, s14", (False, ["S2", "S14"])),
        ("unsafe", (False, [])),
    ],
)
def test_guard_outputs_parse(text: str, expected: tuple[bool, list[str]]) -> None:
    assert parse_guard_output(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "I think it is fine", "safety first", "maybe\nunsafe"])
def test_guard_garbage_is_refused_not_guessed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_guard_output(text)


def test_split_think() -> None:
    assert split_think("<think>\nplan\n</think>\n\nanswer") == ("plan", "answer")
    assert split_think("plan only closed</think>answer") == ("plan only closed", "answer")
    assert split_think("just an answer") == ("", "just an answer")


@pytest.mark.parametrize(
    ("view", "expected"),
    [("full", ("plan", "answer")), ("cot", ("plan", "")), ("answer", ("", "answer"))],
)
def test_views_show_the_judge_part_of_a_completion(view: str, expected: tuple[str, str]) -> None:
    assert apply_view(view, *split_think("<think>plan</think>answer")) == expected
