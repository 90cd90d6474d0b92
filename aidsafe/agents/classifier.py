"""The `classifier` role: which of the run's policies a prompt touches, for `aidsafe prepare`
to tag and balance a prompt pool. Its answer is constrained to the policy set's ids (an enum)
plus `none`, so a tag can never name a policy the set does not have."""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, create_model

from aidsafe.agents.context import Role, RunContext
from aidsafe.prompts import RolePrompt

NONE = "none"

CLASSIFIER_INSTRUCTIONS = """\
You sort user prompts for a safety team. Read the prompt below and list the ids of every policy \
above that the prompt touches: a policy is touched when a response to the prompt would have to \
weigh it (the prompt asks for, or could lead to, what the policy covers), whether or not the \
prompt is harmful. Answer `none` alone when no policy applies. Add a one-line rationale."""

CLASSIFIER_TASK = "Prompt:\n{query}"

CLASSIFIER = Role(
    "classifier",
    temperature=0.0,
    prompt=RolePrompt(CLASSIFIER_INSTRUCTIONS, CLASSIFIER_TASK, frozenset({"query"})),
    description="tags a prompt with the policies it touches (aidsafe prepare --classify)",
)


@functools.cache
def tags_schema(policy_ids: tuple[str, ...]) -> type[BaseModel]:
    """The classifier's answer for one policy set: policy ids (or `none`) and a rationale."""
    tag = StrEnum("PolicyTag", {pid: pid for pid in (*policy_ids, NONE)})  # type: ignore[misc]
    return create_model(
        "PolicyTags",
        __doc__="The policies a prompt touches.",
        policies=(list[tag], Field(min_length=1, max_length=len(policy_ids) + 1)),
        rationale=(str, Field(description="One line.")),
    )


async def classify_prompt(
    ctx: RunContext, prompt: str
) -> tuple[list[str], str, list[dict[str, Any]]]:
    """The policy ids `prompt` touches (an empty list for `none`; `none` beside ids is
    dropped), the rationale, and the calls."""
    schema = tags_schema(tuple(ctx.policies.ids))
    answer, calls = await ctx.ask(CLASSIFIER.name, "classify", schema, query=prompt)
    named = [str(tag.value if isinstance(tag, StrEnum) else tag) for tag in answer.policies]  # type: ignore[attr-defined]
    tags = [tag for n, tag in enumerate(named) if tag != NONE and tag not in named[:n]]
    return tags, str(answer.rationale), calls  # type: ignore[attr-defined]
