"""The response log: what makes a killed run resume without sending a finished call again.

Every answer a model gives inside a row is appended to the run's response log as it arrives (one
JSON line, flushed, written by the event loop's own thread), keyed by the row's thread, the
request's hash and how many identical requests the row made before it. Running a row again
replays its graph from the start: each request already answered is served from the log, in
order, so a row continues exactly where the killed process left it, inside multi-call nodes and
repairs included, and nothing depends on interpreting a half-saved checkpoint.

A row's graph reaches `invoke_with_backoff` through LangGraph and asyncio tasks, which copy the
context they start in: the row's `Replay` travels in a context variable."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict

LATENCY = "aidsafe_latency_s"  # response_metadata key: the logged latency of an answer


class ResponseLog:
    """One process's append-only log file of a stage (`<prefix>-<host>-<pid>.jsonl`)."""

    def __init__(self, directory: Path, prefix: str, group: str = "") -> None:
        self.directory = directory
        self.prefix = prefix
        # `group` names the files of one set of processes (a Ray pool's workers), which
        # `files(group)` finds again; every file still belongs to the stage's log
        where = f"{group}-" if group else ""
        self.path = directory / f"{prefix}-{where}{socket.gethostname()}-{os.getpid()}.jsonl"
        self._handle: TextIO | None = None
        self.bytes = 0

    def append(self, entry: dict[str, Any]) -> None:
        if self._handle is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        self._handle.write(line)
        self._handle.flush()  # in the kernel once written: survives the process being killed
        self.bytes += len(line)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def files(self, group: str = "") -> list[Path]:
        """Every log file of this stage, from any process (a worker's or an earlier run's), or
        only those of one `group` of processes."""
        if not self.directory.is_dir():
            return []
        where = f"{group}-" if group else ""
        return sorted(self.directory.glob(f"{self.prefix}-{where}*.jsonl"))

    def load(
        self, wanted: Callable[[str], bool], group: str = ""
    ) -> dict[str, dict[str, dict[str, Any]]]:
        """thread -> request key -> logged answer, for the threads `wanted` accepts (from one
        `group`'s files only, if given). A torn last line (a process killed mid-write) is
        skipped: its request is simply sent again."""
        answers: dict[str, dict[str, dict[str, Any]]] = {}
        for entry in _entries(self.files(group)):
            if wanted(entry["thread"]):
                answers.setdefault(entry["thread"], {})[entry["key"]] = entry
        return answers

    def compact(self, keep: Callable[[str], bool]) -> None:
        """Keep only the entries of threads `keep` accepts (rows that may run again), in one
        file written before the old ones are removed (a crash in between leaves duplicates,
        which are harmless)."""
        self.close()
        old = self.files()
        kept = [entry for entry in _entries(old) if keep(entry["thread"])]
        target = self.directory / f"{self.prefix}-kept-{os.getpid()}.jsonl"
        if kept:
            temporary = target.with_suffix(".tmp")
            with temporary.open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in kept)
            os.replace(temporary, target)
        for path in old:
            if path != target or not kept:
                path.unlink(missing_ok=True)


def _entries(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line


@dataclass
class Replay:
    """One row's view of the log: its logged answers, and where its new answers go."""

    thread: str
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: ResponseLog | None = None
    seen: dict[str, int] = field(default_factory=dict)  # request hash -> times asked so far
    served: int = 0  # answers taken from the log
    live_tokens: int = 0  # tokens of the answers this process asked for
    live_cost: float = 0.0  # what they cost, where the models have prices

    def key(self, request: str) -> str:
        """The request's key in this row: its hash and its rank among identical requests.
        Assigned when the request starts, in the deterministic order a graph issues them."""
        rank = self.seen.get(request, 0)
        self.seen[request] = rank + 1
        return f"{request}#{rank}"

    def lookup(self, key: str) -> BaseMessage | None:
        entry = self.answers.get(key)
        if entry is None:
            return None
        self.served += 1
        return messages_from_dict([entry["message"]])[0]

    def record(self, key: str, stage: str, message: BaseMessage, cost: float = 0.0) -> None:
        usage = getattr(message, "usage_metadata", None) or {}
        self.live_tokens += int(usage.get("input_tokens", 0)) + int(usage.get("output_tokens", 0))
        self.live_cost += cost
        if self.log is not None:
            entry = {"thread": self.thread, "key": key, "stage": stage}
            self.log.append(entry | {"message": message_to_dict(message)})


current: ContextVar[Replay | None] = ContextVar("aidsafe_replay", default=None)


def request_hash(model: Any, shape: str, messages: list[BaseMessage]) -> str:
    """What identifies a request: the model's settings, the answer's shape, the messages."""
    text = json.dumps(
        [model, shape, [(m.type, m.content) for m in messages]], ensure_ascii=False, default=str
    )
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
