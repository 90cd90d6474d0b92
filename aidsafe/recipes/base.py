"""The Recipe protocol: everything one recipe is, declared in one place. The run layer drives
any recipe through it and never names a concrete one; `registry` lists them.

A recipe declares what it consumes (input prompts, or the finished rows of another recipe), its
ledger files, the roles it calls (default prompts and temperatures), the config sections it
reads, its LangGraph graph (module-level nodes reading the run context), how a final state
becomes a done record plus derived rows or a typed rejection, and its run statistics. The run
fingerprint is derived from these declarations, so it cannot drift from what runs."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from langgraph.graph import END, START, StateGraph

from aidsafe.agents.context import Role, RunContext, called_roles
from aidsafe.config import RunConfig
from aidsafe.inputs import PromptRow
from aidsafe.prompts import RolePrompt


@dataclass(frozen=True)
class Ledger:
    """A recipe's files in the run directory: `done` gets one line per finished item,
    `failures` one per item without a result (it may be the same file), `derived` is rebuilt
    from `done` (e.g. SFT rows from traces)."""

    done: str
    failures: str
    derived: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        names = (self.done, self.failures, self.derived)
        return tuple(dict.fromkeys(name for name in names if name))


@dataclass
class Done:
    """A finished item: its ledger record and the rows derived from it."""

    record: dict[str, Any]
    derived: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Rejected:
    """An item that ended without a result, for a reason the recipe names (a failure record)."""

    record: dict[str, Any]


# A recipe's graph: any state, nodes reading a RunContext as LangGraph's runtime context.
RecipeGraph = StateGraph[Any, RunContext, Any, Any]


def one_node_graph(state: type[Any], node: Callable[..., Any]) -> RecipeGraph:
    """START -> node -> END: the graph of a recipe that is one call (or one agent's work)."""
    builder = StateGraph(state, context_schema=RunContext)
    builder.add_node(node)
    builder.add_edge(START, node.__name__)
    builder.add_edge(node.__name__, END)
    return builder


def prompt_digest(prompt: RolePrompt) -> str:
    text = json.dumps([prompt.instructions, prompt.task], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Recipe(ABC):
    """Base of every recipe; subclasses set the class attributes and implement `graph` and
    `finish`. Instances hold at most their settings (picklable), so they travel to Ray workers."""

    name: ClassVar[str]
    description: ClassVar[str]
    verb: ClassVar[str] = "generating"  # progress line
    consumes: ClassVar[Literal["prompts", "rows"]] = "prompts"
    accepts: ClassVar[tuple[str, ...]] = ()  # consumes rows: recipes whose done rows it takes
    ledger: ClassVar[Ledger]
    section: ClassVar[str | None] = None  # its part of manifest.json (None: the top level)
    archive_group: ClassVar[str] = "run"  # the run-directory files --force moves aside
    declared_roles: ClassVar[tuple[Role, ...]] = ()
    settings_sections: ClassVar[tuple[str, ...]] = ()  # RunConfig sections it reads
    thread_prefix: ClassVar[str] = ""  # keeps its response-log threads apart from others'
    paper: ClassVar[str] = ""  # BibTeX of the paper the recipe implements (dataset cards cite it)

    def roles(self, config: RunConfig) -> dict[str, Role]:
        """Every role the graph calls under `config`, by the name it is called with."""
        return called_roles(self.declared_roles)

    @abstractmethod
    def graph(self) -> RecipeGraph:
        """The recipe's LangGraph graph, its nodes reading a RunContext."""

    def recursion_limit(self, config: RunConfig) -> int:
        return 25

    def start(self, item: PromptRow) -> dict[str, Any]:
        """The graph's input for one item."""
        return {"id": item.id, "prompt": item.prompt}

    def item(self, index: int, row: dict[str, Any]) -> PromptRow:
        """A done row of an accepted recipe as an item (recipes that consume rows)."""
        return PromptRow(
            index,
            row["id"],
            row["prompt"],
            fields={"row": row},
            has_id=True,
            metadata=row.get("input_metadata"),
        )

    @abstractmethod
    def finish(self, state: dict[str, Any], ctx: RunContext) -> Done | Rejected:
        """A final state as a done record (and its derived rows), or a rejection."""

    def failed(self, item: PromptRow, failure: dict[str, Any]) -> dict[str, Any]:
        """The failures-ledger line of an item that ended without a result (`failure`: the
        generic failure record, with its Reason); recipes whose failures share the done
        ledger's layout (judgments, grades) reshape it here."""
        return failure

    def derived(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """Rows derived from a done record (rebuilt from the ledger after a crash)."""
        return []

    def failure_reason(self, record: dict[str, Any]) -> str | None:
        """Why a ledger line is a failure (None: it is done); for ledgers that hold both."""
        return record.get("reason")

    def statistics(
        self, done: Iterable[dict[str, Any]], failures: Iterable[dict[str, Any]]
    ) -> dict[str, Any]:
        """Run-level statistics over the whole ledger, for the manifest and the summary."""
        return {}

    def fingerprint_data(self, ctx: RunContext) -> dict[str, Any]:
        """What decides this recipe's output: the models and prompts of exactly the roles it
        calls, the config sections it reads, repair attempts and the policy set."""
        config = ctx.config
        families = {role.name for role in ctx.roles.values()}
        return {
            "recipe": self.name,
            "models": {
                name: config.model_for(name, role.temperature).provenance()
                for name, role in ctx.roles.items()
            },
            # overridden prompts by content: an edited prompt file changes the fingerprint,
            # the same text by another path does not
            "prompts": {
                role: prompt_digest(ctx.prompts[role])
                for role in sorted(config.prompts)
                if role in families
            },
            "settings": {
                section: _section_fingerprint(getattr(config, section))
                for section in self.settings_sections
            },
            "repair_attempts": config.repair_attempts,
            "policy_set": {"name": ctx.policies.name, "sha256": ctx.policies.sha256},
        }


def _section_fingerprint(section: Any) -> dict[str, Any]:
    """A config section as it enters the fingerprint: its own `fingerprint()` where it has one
    (to leave out an option at its default that older runs did not have), else all of it."""
    fingerprint = getattr(section, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else section.model_dump()
