"""JSON-lines files: streaming reads that name a damaged line, atomic rewrites, and cutting a
torn last line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class DamagedLine(Exception):
    """A ledger line that is not a JSON object: the message names the file and the line."""

    def __init__(self, path: Path, number: int, why: str) -> None:
        super().__init__(
            f"{path}:{number}: damaged line ({why}); `aidsafe repair {path.parent}` moves damaged "
            "lines into a quarantine file and rebuilds what derives from them"
        )
        self.path = path
        self.number = number


def parse_line(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise DamagedLine(path, number, f"not JSON: {error.msg}") from None
    if not isinstance(row, dict):
        raise DamagedLine(path, number, f"a JSON {type(row).__name__}, not an object")
    return row


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file (none if it does not exist); DamagedLine on a bad line."""
    if not path.exists():
        return
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield parse_line(path, number, line)


def dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False)


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_atomic(path, "".join(dumps(row) + "\n" for row in rows))


def truncate_partial_line(path: Path) -> bool:
    """A kill during a write can leave half a line at the end: cut it, so the row is redone."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
        handle.seek(0)
        data = handle.read()
        keep = data.rfind(b"\n") + 1
        handle.truncate(keep)
        return True
