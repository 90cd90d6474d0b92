"""What the AIDSAFE and baseline recipes share: the state of a policy-embedded CoT row, its trace
(a line of traces.jsonl) and its TRL conversational SFT row. Both write the same layout, so every
output format and report reads either."""

from __future__ import annotations

import operator
from collections import Counter
from typing import Annotated, Any, TypedDict

from aidsafe.agents.context import RunContext
from aidsafe.agents.thoughts import ThoughtRecord
from aidsafe.prompts import format_thoughts
from aidsafe.records import model_name, provenance, sft_row
from aidsafe.schemas import REMOVAL_REASONS

# The paper AIDSAFE's recipes implement (the baseline is its LLM_ZS, belief its DPO supplement).
AIDSAFE_PAPER = """@inproceedings{kumarage2025aidsafe,
  title = {Towards Safety Reasoning in {LLMs}: {AI}-agentic Deliberation for Policy-embedded
           {CoT} Data Creation},
  author = {Kumarage and others},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2025},
  year = {2025},
  eprint = {2505.21784},
  archivePrefix = {arXiv}
}"""


class TurnRecord(TypedDict):
    turn: int  # 1-based agent turn
    round: int  # 1-based round: every agent speaks once per round
    agent: str
    action: str  # "agree" or "revise"
    thoughts: list[dict[str, Any]]
    response: str | None


class CotState(TypedDict, total=False):
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
    calls: Annotated[list[dict[str, Any]], operator.add]  # one call record per LLM request
    notes: Annotated[list[str], operator.add]  # deterministic fixes applied to model answers


def cot_trace(recipe: str, state: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """The full provenance record of one finished prompt."""
    turns = state.get("turns", [])
    return {
        "id": state["id"],
        "prompt": state["prompt"],
        "recipe": recipe,
        "intents": state["intents"],
        "initial_cot": [t for t in state["thoughts"] if t["turn"] == 0],
        "initial_response": state["initial_response"],
        "deliberation": {
            "turns": turns,
            "agreed": bool(state.get("agreed")),
            "rounds": max((t["round"] for t in turns), default=0),
        },
        "thoughts": state["thoughts"],
        "removed": state["removed"],
        "final_cot": state["final_thoughts"],
        "response": state["final_response"],
        "notes": state.get("notes", []),
        **provenance(ctx.policy_provenance(), ctx.provenance(), state.get("calls", [])),
    }


def cot_sft_row(trace: dict[str, Any]) -> dict[str, Any]:
    """TRL conversational SFT row: `messages`, plus `id` and a separate `metadata` column."""
    reasons = Counter(removal["reason"] for removal in trace["removed"])
    cot = format_thoughts(trace["final_cot"])
    return sft_row(
        trace["id"],
        trace["prompt"],
        cot,
        trace["response"],
        {
            "recipe": trace["recipe"],
            "policy_set": trace["policy_set"]["name"],
            "policy_sha256": trace["policy_set"]["sha256"],
            "models": {role: model_name(m) for role, m in trace["models"].items()},
            "deliberation_turns": len(trace["deliberation"]["turns"]),
            "agreed": trace["deliberation"]["agreed"],
            "thoughts_total": len(trace["thoughts"]),
            "thoughts_removed": len(trace["removed"]),
            "removed_by_reason": {reason: reasons.get(reason, 0) for reason in REMOVAL_REASONS},
            "input_tokens": trace["tokens"]["input"],
            "output_tokens": trace["tokens"]["output"],
            "latency_s": trace["latency_s"],
        },
    )
