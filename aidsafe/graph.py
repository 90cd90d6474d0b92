"""The AIDSAFE graph: decompose_intents → draft → deliberate ⟲ → refine, one thread per prompt.
Each node is one agent's LLM call and returns a state update; LangGraph checkpoints after each,
so an interrupted row resumes without repeating finished calls."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from pydantic import BaseModel

from aidsafe.config import RunConfig
from aidsafe.context import RecipeContext, build_context
from aidsafe.prompts import format_intents, format_thoughts
from aidsafe.schemas import Intents, Refinement
from aidsafe.state import AidsafeState, ThoughtRecord, TurnRecord

T = TypeVar("T", bound=BaseModel)


def thought_records(thoughts: list[Any], author: str, turn: int) -> list[ThoughtRecord]:
    return [
        ThoughtRecord(
            text=t.text.strip(),
            policies=[str(getattr(p, "value", p)) for p in t.policies],
            author=author,
            turn=turn,
        )
        for t in thoughts
    ]


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


def build_graph(ctx: RecipeContext) -> StateGraph:
    agents = ctx.deliberation.agents
    budget = ctx.deliberation.budget

    async def decompose_intents(state: AidsafeState) -> dict[str, Any]:
        intents, calls = await ctx.ask(
            "decomposer", "decompose_intents", Intents, query=state["prompt"]
        )
        return {"intents": intents.model_dump(), "calls": calls}

    async def draft(state: AidsafeState) -> dict[str, Any]:
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

    def check_turn(turn: Any) -> list[str]:
        if not turn.complete and not turn.thoughts and not turn.response:
            return ["declare the chain of thought complete, or give new or corrected thoughts"]
        return []

    async def deliberate(state: AidsafeState) -> dict[str, Any]:
        turns = state.get("turns", [])
        turn = len(turns) + 1
        agent = (turn - 1) % agents + 1
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
            agents=agents,
            turn=turn,
        )
        complete = bool(verdict.complete)  # type: ignore[attr-defined]
        new_thoughts = [] if complete else thought_records(verdict.thoughts, role, turn)  # type: ignore[attr-defined]
        new_response = None if complete else verdict.response  # type: ignore[attr-defined]
        record = TurnRecord(
            turn=turn,
            round=(turn - 1) // agents + 1,
            agent=role,
            action="agree" if complete else "revise",
            thoughts=[dict(t) for t in new_thoughts],
            response=new_response,
        )
        update: dict[str, Any] = {
            "turns": [record],
            "thoughts": new_thoughts,
            "calls": calls,
            "agreed": deliberation_agreed([*turns, record], agents, ctx.deliberation.agreement),
        }
        if new_response:
            update["response"] = new_response
        return update

    async def refine(state: AidsafeState) -> dict[str, Any]:
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

    def route_after_draft(state: AidsafeState) -> Literal["deliberate", "refine"]:
        return "deliberate" if budget > 0 else "refine"

    def route_after_deliberate(state: AidsafeState) -> Literal["deliberate", "refine"]:
        if state.get("agreed") or len(state.get("turns", [])) >= budget:
            return "refine"
        return "deliberate"

    builder = StateGraph(AidsafeState)
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


def build_baseline_graph(ctx: RecipeContext) -> StateGraph:
    """The paper's LLM_ZS baseline: one zero-shot call writes the CoT and the response, given
    the same policies. Its state has the AIDSAFE layout, so every output format is shared."""

    async def answer_zero_shot(state: AidsafeState) -> dict[str, Any]:
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

    builder = StateGraph(AidsafeState)
    builder.add_node(answer_zero_shot)
    builder.add_edge(START, "answer_zero_shot")
    builder.add_edge("answer_zero_shot", END)
    return builder


def compile_graph(
    ctx: RecipeContext, checkpointer: BaseCheckpointSaver[Any] | None = None
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The generation graph of the context's recipe."""
    if ctx.recipe == "unsafechain":
        from aidsafe.unsafechain import build_unsafechain_graph

        builder = build_unsafechain_graph(
            ctx, ctx.unsafechain.samples, ctx.unsafechain.hard_threshold
        )
        return builder.compile(checkpointer=checkpointer, name="unsafechain")
    if ctx.recipe == "baseline":
        return build_baseline_graph(ctx).compile(checkpointer=checkpointer, name="baseline")
    return build_graph(ctx).compile(checkpointer=checkpointer, name="aidsafe")


def mermaid_diagram(config: RunConfig, which: str = "aidsafe") -> str:
    """A graph as Mermaid text; no model is built or called."""
    from aidsafe.belief import compile_belief_graph
    from aidsafe.config import BELIEF_ROLES

    if which in ("baseline", "unsafechain"):
        config = config.model_copy(update={"recipe": which})
    roles = list(BELIEF_ROLES) if which == "belief" else config.roles()
    placeholders: dict[str, Any] = dict.fromkeys(roles)  # drawing calls no model
    ctx = build_context(config, models=placeholders, roles=roles)
    compiled = compile_belief_graph(ctx) if which == "belief" else compile_graph(ctx)
    return str(compiled.get_graph().draw_mermaid())


def trace_record(state: dict[str, Any], ctx: RecipeContext) -> dict[str, Any]:
    """The full provenance record of one finished prompt (a line of traces.jsonl)."""
    from aidsafe import __version__

    if ctx.recipe == "unsafechain":
        from aidsafe.unsafechain import unsafechain_trace

        return unsafechain_trace(state, ctx)

    calls = state.get("calls", [])
    turns = state.get("turns", [])
    return {
        "id": state["id"],
        "prompt": state["prompt"],
        "recipe": "baseline" if ctx.recipe == "baseline" else "aidsafe",
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
        "policy_set": {
            "name": ctx.policies.name,
            "version": ctx.policies.version,
            "sha256": ctx.policies.sha256,
        },
        "models": {role: cfg.provenance() for role, cfg in ctx.model_configs.items()},
        "calls": calls,
        "tokens": {
            "input": sum(c["input_tokens"] for c in calls),
            "output": sum(c["output_tokens"] for c in calls),
        },
        "latency_s": round(sum(c["latency_s"] for c in calls), 4),
        "notes": state.get("notes", []),
        "aidsafe_version": __version__,
    }
