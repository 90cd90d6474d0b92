"""Prompt templates, their overrides and their rendering. Every prompt opens with the policy block
and the role's static instructions; the per-row text comes last, so engines with prefix caching
reuse the rest. The default prompt of each role lives with the recipe or agent that owns it."""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from aidsafe.config import PromptTemplate
from aidsafe.errors import UserError


@dataclass(frozen=True)
class RolePrompt:
    instructions: str
    task: str
    placeholders: frozenset[str]  # the task may use these; `query` is required


def _placeholders(where: str, template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise UserError(f"{where}: {error}") from error


def _text_or_file(value: str) -> str:
    # A single line naming an existing file is a path; anything else is the text itself.
    if "\n" not in value and len(value) < 4096 and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


def load_prompts(
    defaults: Mapping[str, RolePrompt], overrides: Mapping[str, PromptTemplate]
) -> dict[str, RolePrompt]:
    """The roles' default prompts with the config's overrides of those roles, placeholders
    checked now rather than mid-run."""
    prompts = dict(defaults)
    for role, override in overrides.items():
        if role not in prompts:
            continue  # a role this run does not call
        base = prompts[role]
        instructions = base.instructions
        task = base.task
        if override.instructions is not None:
            instructions = _text_or_file(override.instructions)
            found = _placeholders(f"prompts.{role}.instructions", instructions)
            if found:
                raise UserError(
                    f"prompts.{role}.instructions: must be static text (it is shared across "
                    f"rows for prefix caching) but uses placeholders {sorted(found)}"
                )
        if override.task is not None:
            task = _text_or_file(override.task)
            found = _placeholders(f"prompts.{role}.task", task)
            unknown = found - base.placeholders
            if unknown:
                raise UserError(
                    f"prompts.{role}.task: unknown placeholders {sorted(unknown)} "
                    f"(available: {sorted(base.placeholders)})"
                )
            if "query" not in found:
                raise UserError(f"prompts.{role}.task: must contain the {{query}} placeholder")
        prompts[role] = RolePrompt(instructions, task, base.placeholders)
    return prompts


def render_messages(policy_block: str, prompt: RolePrompt, **values: Any) -> list[BaseMessage]:
    system = f"{policy_block}\n# Your task\n{prompt.instructions}"
    return [SystemMessage(content=system), HumanMessage(content=prompt.task.format(**values))]


def format_intents(intents: Mapping[str, Sequence[str]]) -> str:
    lines = [f"- explicit: {item}" for item in intents.get("explicit", [])]
    lines += [f"- implicit: {item}" for item in intents.get("implicit", [])]
    return "\n".join(lines) or "- (none found)"


def format_thought(thought: Mapping[str, Any]) -> str:
    cited = thought.get("policies") or []
    return f"{thought['text'].strip()}" + (f" [{', '.join(cited)}]" if cited else "")


def format_thoughts(thoughts: Sequence[Mapping[str, Any]]) -> str:
    """Numbered list: the layout agents read and the layout of the final CoT."""
    return "\n".join(f"{n}. {format_thought(t)}" for n, t in enumerate(thoughts, 1)) or "(none)"
