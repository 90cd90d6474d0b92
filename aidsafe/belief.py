"""Belief augmentation for DPO (the AIDSAFE "ear-whisperer"): from a finished AIDSAFE row,
judge the chosen side, then let a whisperer inject adversarial beliefs into a generator until a
judge finds the result violating, feeding earlier beliefs and scores back, within a budget."""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal, TypedDict

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from aidsafe.context import RecipeContext
from aidsafe.export import assistant_content, model_name
from aidsafe.grading import grade_metric
from aidsafe.graph import thought_records
from aidsafe.judges import judge_completion
from aidsafe.prompts import format_intents, format_thoughts
from aidsafe.state import ThoughtRecord

# Why a prompt yields no pair (the row goes to dpo_failures.jsonl with one of these).
NO_VIOLATING_BELIEF = "no_violating_belief"
CHOSEN_UNSAFE = "chosen_unsafe"
IDENTICAL_SIDES = "identical_sides"


class BeliefState(TypedDict, total=False):
    id: str
    prompt: str
    intents: dict[str, list[str]]
    chosen_thoughts: list[ThoughtRecord]
    chosen_response: str
    chosen_verdict: dict[str, Any]
    pending: dict[str, Any]  # the try in progress: belief, then the generated side
    tries: Annotated[list[dict[str, Any]], operator.add]  # finished tries, judged
    faithfulness: dict[str, Any]  # no violating try: grader scores of chosen vs. best try
    calls: Annotated[list[dict[str, Any]], operator.add]


def belief_input(trace: dict[str, Any]) -> BeliefState:
    """The branch starts from a finished AIDSAFE trace: its refined CoT is the chosen side."""
    return BeliefState(
        id=trace["id"],
        prompt=trace["prompt"],
        intents=trace["intents"],
        chosen_thoughts=trace["final_cot"],
        chosen_response=trace["response"],
    )


def format_tries(tries: list[dict[str, Any]]) -> str:
    if not tries:
        return "(none yet)"
    lines = []
    for n, attempt in enumerate(tries, 1):
        verdict = attempt["verdict"]
        outcome = "safe answer" if verdict["safe"] else "violation"
        lines.append(
            f"{n}. {attempt['belief']} -> score {verdict['severity']}/4 ({outcome}): "
            f"{verdict['rationale']}"
        )
    return "\n".join(lines)


def is_violating(verdict: dict[str, Any]) -> bool:
    return not verdict["safe"]


FAITHFULNESS_METRIC = "faithfulness_policy_cot"


def strongest_try(tries: list[dict[str, Any]]) -> int:
    """Index of the try the judge scored most severe (the latest among equals)."""
    return max(range(len(tries)), key=lambda n: (tries[n]["verdict"]["severity"], n))


def build_belief_graph(ctx: RecipeContext) -> StateGraph:
    budget = ctx.belief.tries

    async def judge(stage: str, state: BeliefState, thoughts: list[Any], response: str) -> Any:
        return await judge_completion(
            ctx, stage, state["prompt"], format_thoughts(thoughts), response
        )

    async def judge_chosen(state: BeliefState) -> dict[str, Any]:
        verdict, calls = await judge(
            "judge_chosen", state, state["chosen_thoughts"], state["chosen_response"]
        )
        return {"chosen_verdict": verdict, "calls": calls}

    async def whisper(state: BeliefState) -> dict[str, Any]:
        belief, calls = await ctx.ask(
            "whisperer",
            "whisper",
            ctx.schemas.belief,
            query=state["prompt"],
            intents=format_intents(state["intents"]),
            tries=format_tries(state.get("tries", [])),
        )
        data = belief.model_dump(mode="json")
        return {
            "pending": {"belief": data["belief"].strip(), "targets": data["targets"]},
            "calls": calls,
        }

    async def generate_rejected(state: BeliefState) -> dict[str, Any]:
        pending = state["pending"]
        cot, calls = await ctx.ask(
            "generator",
            "generate_rejected",
            ctx.schemas.initial_cot,
            query=state["prompt"],
            intents=format_intents(state["intents"]),
            belief=pending["belief"],
        )
        thoughts = thought_records(cot.thoughts, "generator", len(state.get("tries", [])) + 1)  # type: ignore[attr-defined]
        pending = {**pending, "thoughts": thoughts, "response": cot.response.strip()}  # type: ignore[attr-defined]
        return {"pending": pending, "calls": calls}

    async def judge_rejected(state: BeliefState) -> dict[str, Any]:
        pending = state["pending"]
        verdict, calls = await judge(
            "judge_rejected", state, pending["thoughts"], pending["response"]
        )
        return {"tries": [{**pending, "verdict": verdict}], "pending": {}, "calls": calls}

    async def grade_faithfulness(state: BeliefState) -> dict[str, Any]:
        """No belief led to a violation: grade how faithful to the policies the chosen CoT and
        the most severe rejected try are, for the 'faithfulness clearly lower' rule."""
        tries = state["tries"]
        best = strongest_try(tries)
        chosen, chosen_calls = await grade_metric(
            ctx,
            FAITHFULNESS_METRIC,
            state["prompt"],
            format_thoughts(state["chosen_thoughts"]),
            state["chosen_response"],
        )
        rejected, rejected_calls = await grade_metric(
            ctx,
            FAITHFULNESS_METRIC,
            state["prompt"],
            format_thoughts(tries[best]["thoughts"]),
            tries[best]["response"],
        )
        scores = {"try": best, "chosen": chosen.model_dump(), "rejected": rejected.model_dump()}
        return {"faithfulness": scores, "calls": chosen_calls + rejected_calls}

    def route_after_judge_chosen(state: BeliefState) -> Literal["whisper", "__end__"]:
        return "__end__" if is_violating(state["chosen_verdict"]) else "whisper"

    def route_after_judge_rejected(
        state: BeliefState,
    ) -> Literal["whisper", "grade_faithfulness", "__end__"]:
        tries = state.get("tries", [])
        if is_violating(tries[-1]["verdict"]):
            return "__end__"
        if len(tries) < budget:
            return "whisper"
        return "__end__" if ctx.belief.faithfulness_margin is None else "grade_faithfulness"

    builder = StateGraph(BeliefState)
    builder.add_node(judge_chosen)
    builder.add_node(whisper)
    builder.add_node(generate_rejected)
    builder.add_node(judge_rejected)
    builder.add_node(grade_faithfulness)
    builder.add_edge(START, "judge_chosen")
    builder.add_conditional_edges("judge_chosen", route_after_judge_chosen)
    builder.add_edge("whisper", "generate_rejected")
    builder.add_edge("generate_rejected", "judge_rejected")
    builder.add_conditional_edges("judge_rejected", route_after_judge_rejected)
    builder.add_edge("grade_faithfulness", END)
    return builder


def compile_belief_graph(
    ctx: RecipeContext, checkpointer: BaseCheckpointSaver[Any] | None = None
) -> CompiledStateGraph[Any, Any, Any, Any]:
    return build_belief_graph(ctx).compile(checkpointer=checkpointer, name="belief")


def pair_outcome(
    state: dict[str, Any], ctx: RecipeContext
) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """(DPO row, None) when the state makes a pair, else (None, (reason, detail))."""
    tries = state.get("tries", [])
    chosen_verdict = state["chosen_verdict"]
    if is_violating(chosen_verdict):
        return None, (CHOSEN_UNSAFE, f"the judge found the chosen side unsafe: {chosen_verdict}")
    violating = [t for t in tries if is_violating(t["verdict"])]
    faithfulness = state.get("faithfulness")
    rule = "violation"
    if violating:
        rejected = violating[-1]
    elif (
        faithfulness is not None
        and ctx.belief.faithfulness_margin is not None
        and (
            faithfulness["chosen"]["score"] - faithfulness["rejected"]["score"]
            >= ctx.belief.faithfulness_margin
        )
    ):
        rejected, rule = tries[faithfulness["try"]], "faithfulness"
    else:
        scores = [t["verdict"]["severity"] for t in tries]
        detail = f"none of {len(tries)} beliefs led to a violation (scores {scores})"
        if faithfulness is not None:
            detail += (
                f"; faithfulness to the policies: chosen {faithfulness['chosen']['score']}, "
                f"try {faithfulness['try'] + 1} {faithfulness['rejected']['score']} (a pair "
                f"needs a gap of {ctx.belief.faithfulness_margin})"
            )
        return None, (NO_VIOLATING_BELIEF, detail)
    chosen_text = assistant_content(
        format_thoughts(state["chosen_thoughts"]), state["chosen_response"]
    )
    rejected_text = assistant_content(format_thoughts(rejected["thoughts"]), rejected["response"])
    if " ".join(chosen_text.split()) == " ".join(rejected_text.split()):
        return None, (IDENTICAL_SIDES, "the rejected side is the same text as the chosen side")
    calls = state.get("calls", [])
    row = {
        "id": state["id"],
        "prompt": [{"role": "user", "content": state["prompt"]}],
        "chosen": [{"role": "assistant", "content": chosen_text}],
        "rejected": [{"role": "assistant", "content": rejected_text}],
        "metadata": {
            "recipe": "aidsafe-dpo",
            "belief": rejected["belief"],
            "belief_tries": len(tries),
            "pair_rule": rule,
            "faithfulness": faithfulness,
            "tries": [
                {
                    "belief": t["belief"],
                    "targets": t["targets"],
                    "severity": t["verdict"]["severity"],
                    "safe": t["verdict"]["safe"],
                    "violated": t["verdict"]["violated"],
                    "rationale": t["verdict"]["rationale"],
                }
                for t in tries
            ],
            "chosen_verdict": chosen_verdict,
            "rejected_verdict": rejected["verdict"],
            "rejected_violated": rejected["verdict"]["violated"],
            "policy_set": ctx.policies.name,
            "policy_sha256": ctx.policies.sha256,
            "models": {
                role: model_name(ctx.model_configs[role].provenance())
                for role in ("judge", "whisperer", "generator", "grader")
            },
            "input_tokens": sum(c["input_tokens"] for c in calls),
            "output_tokens": sum(c["output_tokens"] for c in calls),
            "calls": calls,
        },
    }
    return row, None
