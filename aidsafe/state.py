"""The per-prompt graph state. Plain JSON-able values only, so checkpoints stay portable."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict


class ThoughtRecord(TypedDict):
    text: str
    policies: list[str]
    author: str  # "drafter" or "deliberator_N"
    turn: int  # 0 for the initial CoT, then the deliberation turn that wrote it


class TurnRecord(TypedDict):
    turn: int  # 1-based agent turn
    round: int  # 1-based round: every agent speaks once per round
    agent: str
    action: str  # "agree" or "revise"
    thoughts: list[dict[str, Any]]
    response: str | None


class AidsafeState(TypedDict, total=False):
    id: str
    prompt: str
    intents: dict[str, list[str]]
    thoughts: Annotated[list[ThoughtRecord], operator.add]  # all thoughts of all rounds
    response: str  # the current response
    initial_response: str
    turns: Annotated[list[TurnRecord], operator.add]
    agreed: bool
    removed: list[dict[str, Any]]  # {thought, text, reason, explanation}
    final_thoughts: list[ThoughtRecord]
    final_response: str
    calls: Annotated[list[dict[str, Any]], operator.add]  # one CallRecord per LLM request
    notes: Annotated[list[str], operator.add]  # deterministic fixes applied to model answers
