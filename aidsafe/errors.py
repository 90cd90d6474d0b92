"""Errors a user can act on: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, config or environment; the message names the file and field at fault."""


class StageFailed(Exception):
    """A graph stage could not produce a valid result; the row goes to failures.jsonl."""

    def __init__(self, stage: str, reason: str, detail: str, raw: str | None = None) -> None:
        super().__init__(f"{stage}: {reason}: {detail}")
        self.stage = stage
        self.reason = reason
        self.detail = detail
        self.raw = raw


def describe_validation_error(source: str, error: object) -> str:
    """One readable line per problem of a pydantic ValidationError: `source: a.b[2].c: message`."""
    from pydantic import ValidationError

    if not isinstance(error, ValidationError):
        return f"{source}: {error}"
    lines = []
    for problem in error.errors():
        where = ""
        for part in problem["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key (not part of the schema)"
        lines.append(f"{source}: {where or '(top level)'}: {message}")
    return "\n".join(lines)
