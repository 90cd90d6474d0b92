"""The paper's LLM_ZS baseline: one zero-shot call writes the CoT and the response, given the
same policies, with no intents, deliberation or refinement. Its rows have the AIDSAFE layout, so
every output format, grade and comparison reads both."""

from __future__ import annotations

from typing import Any

from langgraph.runtime import Runtime

from aidsafe.agents.context import Role, RunContext
from aidsafe.agents.thoughts import DRAFTER_INSTRUCTIONS, thought_records
from aidsafe.prompts import RolePrompt
from aidsafe.recipes.base import Done, Ledger, Recipe, RecipeGraph, one_node_graph
from aidsafe.recipes.policy_cot import AIDSAFE_PAPER, CotState, cot_sft_row, cot_trace

BASELINE_TASK = "Query:\n{query}"
BASELINE = Role(
    "baseline",
    temperature=0.7,
    # the drafter's instructions, without intents: the only difference is the pipeline
    prompt=RolePrompt(DRAFTER_INSTRUCTIONS, BASELINE_TASK, frozenset({"query"})),
    description="writes the CoT and response in one zero-shot call",
)


async def answer_zero_shot(state: CotState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    cot, calls = await ctx.ask(
        "baseline", "answer_zero_shot", ctx.schemas.initial_cot, query=state["prompt"]
    )
    thoughts = thought_records(cot.thoughts, "baseline", 0)  # type: ignore[attr-defined]
    response = cot.response.strip()  # type: ignore[attr-defined]
    return {
        "intents": {"explicit": [], "implicit": []},
        "thoughts": thoughts,
        "response": response,
        "initial_response": response,
        "removed": [],
        "final_thoughts": thoughts,
        "final_response": response,
        "calls": calls,
    }


class Baseline(Recipe):
    name = "baseline"
    paper = AIDSAFE_PAPER
    description = "one zero-shot call per prompt (the paper's LLM_ZS), for comparison"
    ledger = Ledger(done="traces.jsonl", failures="failures.jsonl", derived="sft.jsonl")
    declared_roles = (BASELINE,)

    def graph(self) -> RecipeGraph:
        return one_node_graph(CotState, answer_zero_shot)

    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done:
        trace = cot_trace(self.name, state, ctx)
        return Done(trace, self.derived(trace))

    def derived(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        return [cot_sft_row(record)]


RECIPE = Baseline()
