"""The AIDSAFE recipe (Kumarage et al., 2025): decompose_intents -> draft -> deliberate (agents
take turns until one agrees or the budget is spent) -> refine, one graph thread per prompt. Each
node is one agent's LLM call and returns a state update."""

from __future__ import annotations

from typing import Any, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime, get_runtime

from aidsafe.agents.context import Role, RunContext, called_roles
from aidsafe.agents.thoughts import DRAFTER_INSTRUCTIONS, ThoughtRecord, thought_records
from aidsafe.config import RunConfig
from aidsafe.prompts import RolePrompt, format_intents, format_thoughts
from aidsafe.recipes.base import Done, Ledger, Recipe, RecipeGraph
from aidsafe.recipes.policy_cot import AIDSAFE_PAPER, CotState, TurnRecord, cot_sft_row, cot_trace
from aidsafe.schemas import Intents, Refinement

DECOMPOSER_INSTRUCTIONS = """\
You analyse requests sent to an AI assistant, before anyone answers them. Identify the intents \
behind the user's query. Explicit intents are what the query literally asks for, stated plainly, \
even when harmful. Implicit intents are the underlying goals a user most plausibly has; they are \
often benign. Do not answer the query."""

DELIBERATOR_INSTRUCTIONS = """\
You take part in a deliberation that checks an assistant's chain of thought against the safety \
policies. Read the query, its intents, the thoughts so far and the current response. If a \
thought is wrong, misapplies or misses a policy, or an intent is not covered, or the response \
does not follow from the thoughts (an unneeded refusal counts as a fault), write the new or \
corrected thoughts and, if needed, an updated response. If nothing needs to change, declare \
the chain of thought complete."""

REFINER_INSTRUCTIONS = """\
You are an impartial judge who refines a chain of thought written by several agents. Remove \
every thought that is repetitive (restates an earlier thought), redundant (adds nothing to the \
decision), deceptive (misstates the query, the policies or the facts) or policy-inconsistent \
(contradicts the policies), giving the reason for each. Keep every other thought. Then write the \
final response so that it follows from the kept thoughts and the policies."""

DECOMPOSER_TASK = "Query:\n{query}"
DRAFTER_TASK = "Query:\n{query}\n\nIntents:\n{intents}"
DELIBERATOR_TASK = (
    "Query:\n{query}\n\nIntents:\n{intents}\n\nThoughts so far:\n{thoughts}\n\n"
    "Current response:\n{response}\n\nYou are agent {agent} of {agents}, turn {turn}."
)
REFINER_TASK = (
    "Query:\n{query}\n\nIntents:\n{intents}\n\nAll thoughts, numbered:\n{thoughts}\n\n"
    "Last response:\n{response}"
)

DECOMPOSER = Role(
    "decomposer",
    temperature=0.7,
    prompt=RolePrompt(DECOMPOSER_INSTRUCTIONS, DECOMPOSER_TASK, frozenset({"query"})),
    description="finds the explicit and implicit intents of the prompt",
)
DRAFTER = Role(
    "drafter",
    temperature=0.7,
    prompt=RolePrompt(DRAFTER_INSTRUCTIONS, DRAFTER_TASK, frozenset({"query", "intents"})),
    description="writes the initial policy-embedded CoT and response",
)
DELIBERATOR = Role(
    "deliberator",
    temperature=0.7,
    prompt=RolePrompt(
        DELIBERATOR_INSTRUCTIONS,
        DELIBERATOR_TASK,
        frozenset({"query", "intents", "thoughts", "response", "agent", "agents", "turn"}),
    ),
    description="deliberation agents (deliberator_1..N) taking turns to correct the CoT",
    numbered=True,
)
REFINER = Role(
    "refiner",
    temperature=0.0,
    prompt=RolePrompt(
        REFINER_INSTRUCTIONS, REFINER_TASK, frozenset({"query", "intents", "thoughts", "response"})
    ),
    description="removes repetitive, redundant, deceptive and policy-inconsistent thoughts",
)


def deliberation_agreed(turns: list[TurnRecord], agents: int, rule: str) -> bool:
    """`any`: the latest turn agreed. `all`: each of the last `agents` turns agreed."""
    if rule == "any":
        return bool(turns) and turns[-1]["action"] == "agree"
    recent = turns[-agents:]
    return len(recent) == agents and all(t["action"] == "agree" for t in recent)


def apply_refinement(
    thoughts: list[ThoughtRecord], refinement: Refinement
) -> tuple[list[ThoughtRecord], list[dict[str, Any]], list[str]]:
    """Drop the removed thoughts. Numbers that do not exist or repeat are ignored and noted."""
    removed: list[dict[str, Any]] = []
    notes: list[str] = []
    seen: set[int] = set()
    for removal in refinement.removed:
        if not 1 <= removal.thought <= len(thoughts):
            notes.append(f"refine: ignored removal of thought {removal.thought} (does not exist)")
            continue
        if removal.thought in seen:
            continue
        seen.add(removal.thought)
        removed.append(
            {
                "thought": removal.thought,
                "text": thoughts[removal.thought - 1]["text"],
                "reason": removal.reason,
                "explanation": removal.explanation,
            }
        )
    kept = [t for n, t in enumerate(thoughts, 1) if n not in seen]
    return kept, removed, notes


def check_turn(turn: Any) -> list[str]:
    """A turn must agree or change something."""
    if not turn.complete and not turn.thoughts and not turn.response:
        return ["declare the chain of thought complete, or give new or corrected thoughts"]
    return []


async def decompose_intents(state: CotState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    intents, calls = await ctx.ask(
        "decomposer", "decompose_intents", Intents, query=state["prompt"]
    )
    return {"intents": intents.model_dump(), "calls": calls}


async def draft(state: CotState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    cot, calls = await ctx.ask(
        "drafter",
        "draft",
        ctx.schemas.initial_cot,
        query=state["prompt"],
        intents=format_intents(state["intents"]),
    )
    return {
        "thoughts": thought_records(cot.thoughts, "drafter", 0),  # type: ignore[attr-defined]
        "response": cot.response,  # type: ignore[attr-defined]
        "initial_response": cot.response,  # type: ignore[attr-defined]
        "calls": calls,
    }


async def deliberate(state: CotState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    settings = ctx.config.deliberation
    turns = state.get("turns", [])
    turn = len(turns) + 1
    agent = (turn - 1) % settings.agents + 1
    role = f"deliberator_{agent}"
    verdict, calls = await ctx.ask(
        role,
        "deliberate",
        ctx.schemas.deliberation_turn,
        check=check_turn,
        query=state["prompt"],
        intents=format_intents(state["intents"]),
        thoughts=format_thoughts(state["thoughts"]),
        response=state["response"],
        agent=agent,
        agents=settings.agents,
        turn=turn,
    )
    complete = bool(verdict.complete)  # type: ignore[attr-defined]
    new_thoughts = [] if complete else thought_records(verdict.thoughts, role, turn)  # type: ignore[attr-defined]
    new_response = None if complete else verdict.response  # type: ignore[attr-defined]
    record = TurnRecord(
        turn=turn,
        round=(turn - 1) // settings.agents + 1,
        agent=role,
        action="agree" if complete else "revise",
        thoughts=[dict(t) for t in new_thoughts],
        response=new_response,
    )
    update: dict[str, Any] = {
        "turns": [record],
        "thoughts": new_thoughts,
        "calls": calls,
        "agreed": deliberation_agreed([*turns, record], settings.agents, settings.agreement),
    }
    if new_response:
        update["response"] = new_response
    return update


async def refine(state: CotState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    thoughts = state["thoughts"]

    def check(refinement: Refinement) -> list[str]:
        kept, _, _ = apply_refinement(thoughts, refinement)
        return [] if kept else ["you removed every thought; keep the ones that are sound"]

    refinement, calls = await ctx.ask(
        "refiner",
        "refine",
        Refinement,
        check=check,
        query=state["prompt"],
        intents=format_intents(state["intents"]),
        thoughts=format_thoughts(thoughts),
        response=state["response"],
    )
    kept, removed, notes = apply_refinement(thoughts, refinement)
    return {
        "final_thoughts": kept,
        "removed": removed,
        "final_response": refinement.response.strip(),
        "calls": calls,
        "notes": notes,
    }


def route_after_draft(state: CotState) -> Literal["deliberate", "refine"]:
    budget = get_runtime(RunContext).context.config.deliberation.budget
    return "deliberate" if budget > 0 else "refine"


def route_after_deliberate(state: CotState) -> Literal["deliberate", "refine"]:
    budget = get_runtime(RunContext).context.config.deliberation.budget
    if state.get("agreed") or len(state.get("turns", [])) >= budget:
        return "refine"
    return "deliberate"


class Aidsafe(Recipe):
    name = "aidsafe"
    paper = AIDSAFE_PAPER
    description = (
        "SFT data: intents, a drafted CoT, multi-agent deliberation over the policies, a refiner"
    )
    ledger = Ledger(done="traces.jsonl", failures="failures.jsonl", derived="sft.jsonl")
    declared_roles = (DECOMPOSER, DRAFTER, DELIBERATOR, REFINER)
    settings_sections = ("deliberation",)

    def roles(self, config: RunConfig) -> dict[str, Role]:
        agents = config.deliberation.agents if config.deliberation.budget else 0
        roles = called_roles((DECOMPOSER, DRAFTER))
        roles |= called_roles((DELIBERATOR,), agents) if agents else {}
        return roles | called_roles((REFINER,))

    def graph(self) -> RecipeGraph:
        builder = StateGraph(CotState, context_schema=RunContext)
        builder.add_node(decompose_intents)
        builder.add_node(draft)
        builder.add_node(deliberate)
        builder.add_node(refine)
        builder.add_edge(START, "decompose_intents")
        builder.add_edge("decompose_intents", "draft")
        builder.add_conditional_edges("draft", route_after_draft)
        builder.add_conditional_edges("deliberate", route_after_deliberate)
        builder.add_edge("refine", END)
        return builder

    def recursion_limit(self, config: RunConfig) -> int:
        return 10 + 2 * config.deliberation.budget

    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done:
        trace = cot_trace(self.name, state, ctx)
        return Done(trace, self.derived(trace))

    def derived(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        return [cot_sft_row(record)]


RECIPE = Aidsafe()
