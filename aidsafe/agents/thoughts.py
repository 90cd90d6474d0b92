"""Thoughts as recorded in state and traces, and the instructions of every role that writes a
chain of thought from scratch (the drafter, the zero-shot baseline, the belief-conditioned
generator): sharing them keeps the only difference between those contexts the task itself."""

from __future__ import annotations

from typing import Any, TypedDict


class ThoughtRecord(TypedDict):
    text: str
    policies: list[str]
    author: str  # the role that wrote it: "drafter", "deliberator_N", ...
    turn: int  # 0 for an initial CoT, then the deliberation turn (or belief try) that wrote it


def thought_records(thoughts: list[Any], author: str, turn: int) -> list[ThoughtRecord]:
    """Thoughts of a structured answer as plain records (policy ids as strings)."""
    return [
        ThoughtRecord(
            text=t.text.strip(),
            policies=[str(getattr(p, "value", p)) for p in t.policies],
            author=author,
            turn=turn,
        )
        for t in thoughts
    ]


DRAFTER_INSTRUCTIONS = """\
You are an AI assistant that reasons about the safety policies before it answers. Write a chain \
of thought of short, concrete steps: consider each intent, decide which policies apply to it and \
cite them by id, and decide what help is allowed. Then write the response to the user: helpful \
wherever the policies allow, declining only what they forbid, and saying briefly why."""
