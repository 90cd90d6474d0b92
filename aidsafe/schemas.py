"""What each agent must answer, as pydantic models. Thoughts cite policy ids through an enum
built from the run's policy set, so every backend that honours a schema can only cite real ids."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, create_model

RemovalReason = Literal["repetitive", "redundant", "deceptive", "policy_inconsistent"]
REMOVAL_REASONS: tuple[str, ...] = RemovalReason.__args__  # type: ignore[attr-defined]


class Intents(BaseModel):
    """The intents behind a user query."""

    explicit: list[str] = Field(
        min_length=1, max_length=5, description="What the query literally asks for."
    )
    implicit: list[str] = Field(
        default_factory=list, max_length=5, description="The underlying goals, often benign."
    )


class Removal(BaseModel):
    """One thought the refiner removes."""

    # unbounded on purpose: grammar-constrained decoders do not enforce bounds; a number that
    # names no thought is ignored and noted by the refiner's step
    thought: int = Field(description="Number of the removed thought.")
    reason: RemovalReason
    explanation: str = Field(description="One sentence: why it goes.")


class Refinement(BaseModel):
    """The refiner's verdict over all thoughts of all rounds."""

    removed: list[Removal] = Field(default_factory=list)
    response: str = Field(min_length=1, description="Final response, consistent with the kept CoT.")


@dataclass(frozen=True)
class RecipeSchemas:
    """Schemas whose policy citations may name only the given policy ids."""

    thought: type[BaseModel]
    initial_cot: type[BaseModel]
    deliberation_turn: type[BaseModel]
    belief: type[BaseModel]
    verdict: type[BaseModel]


def schemas_for(policy_ids: list[str]) -> RecipeSchemas:
    policy_id = StrEnum("PolicyId", {pid: pid for pid in policy_ids})  # type: ignore[misc]
    thought = create_model(
        "Thought",
        __doc__="One step of reasoning.",
        text=(str, Field(min_length=1, description="The reasoning step.")),
        policies=(
            list[policy_id],
            Field(default_factory=list, max_length=3, description="Policies the step applies."),
        ),
    )
    initial_cot = create_model(
        "InitialCoT",
        __doc__="A first chain of thought and the response it leads to.",
        thoughts=(list[thought], Field(min_length=1, max_length=8)),
        response=(str, Field(min_length=1)),
    )
    deliberation_turn = create_model(
        "DeliberationTurn",
        __doc__="One agent's turn: declare the CoT complete, or add and correct thoughts.",
        complete=(bool, Field(description="True when nothing needs to be added or corrected.")),
        thoughts=(
            list[thought],
            Field(default_factory=list, max_length=4, description="New or corrected thoughts."),
        ),
        response=(
            str | None,
            Field(default=None, description="An updated response, or null to keep the current."),
        ),
    )
    belief = create_model(
        "Belief",
        __doc__="An adversarial belief to inject into the generator's context.",
        belief=(str, Field(min_length=1, description="One or two sentences.")),
        targets=(
            list[policy_id],
            Field(default_factory=list, max_length=3, description="Policies it aims to break."),
        ),
    )
    verdict = create_model(
        "Verdict",
        __doc__="A safety judgement of one CoT and response.",
        safe=(bool, Field(description="True when nothing breaks a policy.")),
        violated=(
            list[policy_id],
            Field(default_factory=list, max_length=5, description="Policies broken."),
        ),
        # an enum, not a bounded int: grammar-constrained decoders enforce enums, not bounds
        severity=(Literal[0, 1, 2, 3, 4], Field(description="0 none, 4 severe.")),
        rationale=(str, Field(description="One or two sentences.")),
    )
    return RecipeSchemas(thought, initial_cot, deliberation_turn, belief, verdict)
