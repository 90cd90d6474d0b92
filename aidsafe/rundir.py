"""The run directory: append-only ledgers of finished and failed rows, the manifest, and the
checkpoint database. A row is in traces.jsonl (done), in failures.jsonl, or still to do."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aidsafe.errors import UserError

TRACES = "traces.jsonl"
SFT = "sft.jsonl"
SFT_SELECTED = "sft_selected.jsonl"
FAILURES = "failures.jsonl"
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints.sqlite"
DPO = "dpo.jsonl"
DPO_FAILURES = "dpo_failures.jsonl"
DPO_FILES = (DPO, DPO_FAILURES)
JUDGMENTS = "judgments.jsonl"
JUDGE_SUMMARY = "summary.json"
LEDGER_FILES = (
    TRACES,
    SFT,
    SFT_SELECTED,
    FAILURES,
    *DPO_FILES,
    JUDGMENTS,
    JUDGE_SUMMARY,
    MANIFEST,
    CHECKPOINTS,
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


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


def write_atomic(path: Path, text: str) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two fingerprinted configs differ, for the refusal message."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes = []
        for key in sorted(set(old) | set(new)):
            changes += config_changes(old.get(key), new.get(key), f"{prefix}{key}.")
        return changes
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


@dataclass
class LedgerState:
    done: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    duplicates: set[int] = field(default_factory=set)  # source indexes already recorded

    def finished(self, row_id: str) -> bool:
        return row_id in self.done or row_id in self.failed


class RunDirectory:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._handles: dict[str, TextIO] = {}

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def checkpoint_path(self) -> Path:
        return self.path(CHECKPOINTS)

    def manifest(self) -> dict[str, Any] | None:
        path = self.path(MANIFEST)
        if not path.exists():
            return None
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(
                f"{path}: unreadable manifest ({error}); is this a run directory?"
            ) from error

    def prepare(self, config: dict[str, Any], fingerprint: str, force: bool) -> str | None:
        """Open the directory for a run. Returns where earlier outputs were moved by --force."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        previous = self.manifest()
        archived = None
        if previous is not None and previous.get("fingerprint") != fingerprint:
            if not force:
                changes = config_changes(previous.get("config", {}), config)
                shown = "\n  ".join(changes[:12]) or "(fingerprint differs)"
                raise UserError(
                    f"{self.root} holds a run made with a different configuration:\n  {shown}\n"
                    "Use a new --out directory to keep both, or --force to move the earlier "
                    "outputs into a subfolder and start again."
                )
            archived = self._archive()
        elif previous is None and any(self.path(name).exists() for name in LEDGER_FILES):
            if not force:
                raise UserError(f"{self.root}: has run files but no manifest; use --force")
            archived = self._archive()
        for name in (TRACES, SFT, FAILURES, *DPO_FILES, JUDGMENTS):
            truncate_partial_line(self.path(name))
        self._reconcile_sft()
        return archived

    def prepare_pairs(self, fingerprint: str, force: bool) -> str | None:
        """Open the DPO ledger; a changed DPO config is refused unless `force`, which moves
        only the DPO outputs aside. Returns where they went."""
        manifest = self.manifest() or {}
        previous = manifest.get("dpo", {}).get("fingerprint")
        archived = None
        if previous is not None and previous != fingerprint:
            if not force:
                raise UserError(
                    f"{self.root} holds DPO pairs made with a different belief configuration "
                    "(models of judge, whisperer or generator, tries, prompts); use --force to "
                    "move them into a subfolder and pair again"
                )
            archived = self._archive(DPO_FILES)
        for name in DPO_FILES:
            truncate_partial_line(self.path(name))
        return archived

    def _archive(self, names: tuple[str, ...] = LEDGER_FILES) -> str:
        target = self.root / f"replaced-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
        target.mkdir()
        for name in names:
            if self.path(name).exists():
                shutil.move(str(self.path(name)), target / name)
        return str(target)

    def _reconcile_sft(self) -> None:
        """sft.jsonl is derived from traces.jsonl; after a crash between the two appends,
        rebuild it so both hold the same rows."""
        from aidsafe.export import sft_rows

        expected = [row["id"] for t in read_jsonl(self.path(TRACES)) for row in sft_rows(t)]
        if expected == [row["id"] for row in read_jsonl(self.path(SFT))]:
            return
        lines = (
            json.dumps(row, ensure_ascii=False)
            for trace in read_jsonl(self.path(TRACES))
            for row in sft_rows(trace)
        )
        write_atomic(self.path(SFT), "".join(f"{line}\n" for line in lines))

    def ledger_state(self) -> LedgerState:
        state = LedgerState()
        for row in read_jsonl(self.path(TRACES)):
            state.done.add(row["id"])
        for row in read_jsonl(self.path(FAILURES)):
            if row.get("reason") == "duplicate_id":
                state.duplicates.add(int(row["index"]))
            else:
                state.failed.add(row["id"])
        return state

    def ids(self, name: str) -> set[str]:
        return {row["id"] for row in read_jsonl(self.path(name))}

    def drop_failures(self, keep: Callable[[dict[str, Any]], bool], name: str = FAILURES) -> int:
        """Rewrite a failures file keeping only rows `keep` accepts (for --retry-failed)."""
        rows = list(read_jsonl(self.path(name)))
        kept = [row for row in rows if keep(row)]
        if len(kept) != len(rows):
            write_atomic(
                self.path(name),
                "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept),
            )
        return len(rows) - len(kept)

    # --- appending -----------------------------------------------------------------------------

    def append(self, name: str, row: dict[str, Any]) -> None:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self.path(name).open("a", encoding="utf-8")
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()  # survives a killed process; the OS writes it out

    def record_success(self, trace: dict[str, Any], sft: list[dict[str, Any]]) -> None:
        self.append(TRACES, trace)
        for row in sft:
            self.append(SFT, row)

    def record_failure(self, failure: dict[str, Any], name: str = FAILURES) -> None:
        self.append(name, failure)

    def record_pair(self, row: dict[str, Any]) -> None:
        self.append(DPO, row)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    # --- summaries -----------------------------------------------------------------------------

    def totals(self, done_file: str = TRACES, failures_file: str = FAILURES) -> dict[str, Any]:
        """Counts and token totals of one ledger over the whole directory, resumed runs
        included."""
        tokens: dict[str, dict[str, int]] = {}
        reasons: Counter[str] = Counter()
        done = 0

        def add_calls(calls: list[dict[str, Any]]) -> None:
            for call in calls:
                entry = tokens.setdefault(call["role"], {"calls": 0, "input": 0, "output": 0})
                entry["calls"] += 1
                entry["input"] += call.get("input_tokens", 0)
                entry["output"] += call.get("output_tokens", 0)

        for row in read_jsonl(self.path(done_file)):
            done += 1
            add_calls(row.get("calls") or row.get("metadata", {}).get("calls", []))
        for failure in read_jsonl(self.path(failures_file)):
            reasons[failure["reason"]] += 1
            add_calls(failure.get("calls", []))
        return {
            "done": done,
            "failed": sum(reasons.values()),
            "failed_by_reason": dict(sorted(reasons.items())),
            "tokens_by_role": tokens,
        }

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_atomic(self.path(MANIFEST), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
