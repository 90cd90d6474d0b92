"""Errors a user can act on (exit 2), a run that had to stop (exit 1), and a stage that failed
(the row is recorded as failed, the run goes on)."""

from __future__ import annotations

from typing import Any

from aidsafe.records import Reason


class UserError(Exception):
    """Bad input, config or environment; the message names the file and field at fault."""


class RunFailed(Exception):
    """The run could not go on (a ledger write failed, a bug outside any row); the message says
    what happened and that the finished work is kept."""


class StageFailed(Exception):
    """A graph stage could not produce a valid result; the row goes to the failures ledger with
    `reason` and every call the stage made (`calls`)."""

    def __init__(
        self,
        stage: str,
        reason: Reason,
        detail: str,
        raw: str | None = None,
        calls: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(f"{stage}: {reason}: {detail}")
        self.stage = stage
        self.reason = Reason(reason)
        self.detail = detail
        self.raw = raw
        self.calls: list[dict[str, Any]] = list(calls or [])

    def __reduce__(self) -> Any:  # crosses process boundaries (Ray) with its fields
        return (StageFailed, (self.stage, self.reason, self.detail, self.raw, self.calls))


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
