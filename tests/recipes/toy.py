"""A toy recipe, written the way a new recipe would be: one module, one node, one role. Its test
registers it and runs it through generate, resume, export and the Ray engine without touching
any other module."""

from typing import Any, TypedDict

from langgraph.runtime import Runtime
from pydantic import BaseModel

from aidsafe.agents.context import Role, RunContext
from aidsafe.prompts import RolePrompt
from aidsafe.recipes.base import Done, Ledger, Recipe, RecipeGraph, one_node_graph
from aidsafe.records import provenance, sft_row

ECHOER = Role(
    "echoer",
    temperature=0.0,
    prompt=RolePrompt("Say the query back, louder.", "Query:\n{query}", frozenset({"query"})),
    description="says the query back",
)


class Echo(BaseModel):
    text: str


class EchoState(TypedDict, total=False):
    id: str
    prompt: str
    echo: str
    calls: list[dict[str, Any]]


async def echo(state: EchoState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    answer, calls = await runtime.context.ask("echoer", "echo", Echo, query=state["prompt"])
    return {"echo": answer.text, "calls": calls}


class Toy(Recipe):
    name = "toy"
    description = "says every prompt back"
    ledger = Ledger(done="toy.jsonl", failures="toy_failures.jsonl", derived="sft.jsonl")
    declared_roles = (ECHOER,)

    def graph(self) -> RecipeGraph:
        return one_node_graph(EchoState, echo)

    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done:
        record = {"id": state["id"], "prompt": state["prompt"], "echo": state["echo"]}
        record |= provenance(ctx.policy_provenance(), ctx.provenance(), state["calls"])
        return Done(record, self.derived(record))

    def derived(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        metadata = {"recipe": "toy"}
        return [sft_row(record["id"], record["prompt"], "I say it back.", record["echo"], metadata)]


RECIPE = Toy()
