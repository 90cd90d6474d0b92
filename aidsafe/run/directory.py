"""The run directory: one table of every file a run may hold, grouped for archiving; append-only
ledgers (one flushed line per finished item; a torn last line is cut), the manifest, and the
response log. An item is in its done ledger, in its failures ledger, or still to do."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aidsafe.errors import UserError
from aidsafe.jsonl import (
    DamagedLine,
    dumps,
    parse_line,
    read_jsonl,
    truncate_partial_line,
    write_atomic,
    write_jsonl,
)
from aidsafe.recipes import registry
from aidsafe.records import Reason

MANIFEST = "manifest.json"
LOCK = ".lock"  # held (flock) by the one process working in the directory
RESPONSES = "responses"  # the response log: a folder of append-only files, one per process
CHECKPOINTS = "checkpoints.sqlite"  # written by aidsafe before 0.2; archived with the run
SFT_SELECTED = "sft_selected.jsonl"
GRADES = "grades.jsonl"
GRADES_SUMMARY = "grades_summary.json"
SFT_FILTERED = "sft_filtered.jsonl"
JUDGMENTS = "judgments.jsonl"
JUDGE_SUMMARY = "summary.json"
PREVIEW = "preview"  # generate --preview: the sample's figures and projection
CLASSIFICATIONS = "classifications.jsonl"  # prepare --classify: policy tags per prompt
CONTRASTS = "contrasts.jsonl"  # prepare --contrast: benign look-alikes per prompt
HUB = "hub"  # aidsafe push: the dataset as uploaded (data files and the card)
VIEW = "view.html"  # `aidsafe view`: a page made from the run's files
SPLIT = "split.json"  # `aidsafe split`: the prompts held out of training for evaluation

# Files that are not a recipe's ledger, by archive group. Group `run` is the run itself:
# archiving it (generate --force) moves every file of the table, since all derive from it.
OTHER_FILES: dict[str, str] = {
    MANIFEST: "run",
    RESPONSES: "run",
    CHECKPOINTS: "run",
    SFT_SELECTED: "run",
    JUDGMENTS: "run",
    JUDGE_SUMMARY: "run",
    PREVIEW: "run",
    CLASSIFICATIONS: "classify",
    CONTRASTS: "contrast",
    HUB: "run",
    VIEW: "run",
    SPLIT: "run",
    GRADES: "grades",
    GRADES_SUMMARY: "grades",
    SFT_FILTERED: "grades",
}


def file_table() -> dict[str, str]:
    """Every file a run directory may hold -> its archive group: each registered recipe's
    ledger files in the recipe's group, and the files above."""
    table: dict[str, str] = {}
    for recipe in registry.RECIPES.values():
        for name in recipe.ledger.files:
            table.setdefault(name, recipe.archive_group)
    return table | OTHER_FILES


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
    finished: set[str] = field(default_factory=set)  # done or failed
    duplicates: set[int] = field(default_factory=set)  # source indexes already recorded
    prompts: dict[str, str] = field(default_factory=dict)  # id -> digest of its recorded prompt


def text_digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode("utf-8", "surrogatepass")).hexdigest()[:16]


class RunDirectory:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._handles: dict[str, TextIO] = {}
        self._lock: TextIO | None = None

    def lock(self) -> None:
        """Take the directory for this process: an exclusive advisory lock, which the kernel
        releases when the process ends, however it ends. A second process is refused with
        the holder's pid and host (exit 2)."""
        if self._lock is not None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = self.path(LOCK).open("a+", encoding="utf-8")
        except OSError as error:
            raise UserError(
                f"{self.root}: cannot use this run directory ({error.strerror or error})"
            ) from error
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"{self.root}: in use by {holder}; wait for it to end or stop it (one process "
                "per run directory)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"aidsafe pid {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def path(self, name: str) -> Path:
        return self.root / name

    # --- the manifest --------------------------------------------------------------------------

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

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        write_atomic(self.path(MANIFEST), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")

    # --- opening a stage -----------------------------------------------------------------------

    def open_stage(
        self,
        section: str | None,
        settings: dict[str, Any],
        fingerprint: str,
        force: bool,
        group: str,
        what: str = "run output",
    ) -> str | None:
        """Open the directory for one stage whose fingerprint lives in `section` of the
        manifest (None: its top level). A changed configuration is refused unless `force`,
        which moves the stage's archive `group` aside. Returns where it went."""
        if self.root.exists() and not self.root.is_dir():
            raise UserError(f"{self.root}: exists and is not a directory")
        self.lock()
        try:
            manifest = self.manifest()
            table = file_table()
            archived = None
            if manifest is None and any(self.path(name).exists() for name in table):
                if not force:
                    raise UserError(f"{self.root}: has run files but no manifest; use --force")
                archived = self.archive("run")
            elif manifest is not None:
                previous = manifest if section is None else manifest.get(section, {})
                if previous.get("fingerprint") not in (None, fingerprint):
                    if not force:
                        changes = config_changes(previous.get("config", {}), settings)
                        shown = "\n  ".join(changes[:12]) or "(fingerprint differs)"
                        raise UserError(
                            f"{self.root} holds {what} made with a different configuration:\n"
                            f"  {shown}\nUse a new --out directory to keep both, or --force to "
                            "move the earlier outputs into a subfolder and start again."
                        )
                    archived = self.archive(group)
            for name in table:
                if name.endswith(".jsonl"):
                    truncate_partial_line(self.path(name))
            self.check_ledgers()
            return archived
        except BaseException:
            self.unlock()  # refused: the directory stays free
            raise

    def ledger_files(self) -> list[Path]:
        return [self.path(name) for name in file_table() if name.endswith(".jsonl")]

    def check_ledgers(self) -> None:
        """Every ledger line is a JSON object with an id (else DamagedLine naming the file and
        line), and no done ledger is missing while the rows derived from it are there."""
        for path in self.ledger_files():
            for number, row in enumerate(read_jsonl(path), 1):
                if not isinstance(row.get("id"), str):
                    raise DamagedLine(path, number, "no `id`")
        made_by = (self.manifest() or {}).get("recipe")
        for recipe in [registry.RECIPES[made_by]] if made_by in registry.RECIPES else []:
            done, derived = recipe.ledger.done, recipe.ledger.derived
            if derived is None or self.path(done).exists() or not self.path(derived).exists():
                continue
            if self.path(derived).stat().st_size > 0:  # not silently emptied and redone
                raise UserError(
                    f"{self.root}: {done} is missing but {derived} holds rows made from it; "
                    f"restore {done}, or use --force to move what is here aside and start again"
                )

    def repair(self) -> dict[str, int]:
        """Move every damaged ledger line into `<ledger>.quarantine.jsonl` (with its line
        number and text), then rebuild the derived rows of the run's recipe. Returns the number
        of lines moved per file."""
        moved: dict[str, int] = {}
        for path in self.ledger_files():
            if not path.exists():
                continue
            kept, bad = [], []
            with path.open(encoding="utf-8", errors="surrogateescape") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        row = parse_line(path, number, line)
                        if not isinstance(row.get("id"), str):
                            raise DamagedLine(path, number, "no `id`")
                        kept.append(line if line.endswith("\n") else line + "\n")
                    except DamagedLine as damage:
                        bad.append({"line": number, "text": line.rstrip("\n"), "why": str(damage)})
            if bad:
                quarantine = path.with_name(path.name.removesuffix(".jsonl") + ".quarantine.jsonl")
                with quarantine.open("a", encoding="utf-8", errors="surrogateescape") as handle:
                    handle.writelines(dumps(entry) + "\n" for entry in bad)
                write_atomic(path, "".join(kept))
                moved[path.name] = len(bad)
        manifest = self.manifest() or {}
        made_by = manifest.get("recipe")
        if made_by in registry.RECIPES:
            ledger = registry.RECIPES[made_by].ledger
            if ledger.derived is not None:
                self.rebuild_derived(ledger.done, ledger.derived, registry.RECIPES[made_by].derived)
        return moved

    def archive(self, group: str) -> str:
        """Move the files of `group` (`run`: every file of the table) into a new subfolder."""
        target = self.root / f"replaced-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}"
        target.mkdir()
        for name, file_group in file_table().items():
            if (group == "run" or file_group == group) and self.path(name).exists():
                shutil.move(str(self.path(name)), target / name)
        return str(target)

    def rebuild_derived(
        self, source: str, derived: str, rows_of: Callable[[dict[str, Any]], list[dict[str, Any]]]
    ) -> None:
        """`derived` is rebuilt from `source` when the two disagree (a crash between the two
        appends, or a derived file deleted by hand)."""
        expected = [
            row["id"] for record in read_jsonl(self.path(source)) for row in rows_of(record)
        ]
        # written even when empty: the run's rows file exists whatever became of its rows
        if self.path(derived).exists() and expected == [
            row["id"] for row in read_jsonl(self.path(derived))
        ]:
            return
        write_jsonl(
            self.path(derived),
            (row for record in read_jsonl(self.path(source)) for row in rows_of(record)),
        )

    def ledger_state(self, done: str, failures: str) -> LedgerState:
        state = LedgerState()

        def finished(row: dict[str, Any]) -> None:
            state.finished.add(row["id"])
            if isinstance(row.get("prompt"), str):  # recipes' rows and judgments name it
                state.prompts[row["id"]] = text_digest(row["prompt"])

        for row in read_jsonl(self.path(done)):
            finished(row)
        if failures != done:
            for row in read_jsonl(self.path(failures)):
                if row.get("reason") == Reason.DUPLICATE_ID:
                    state.duplicates.add(int(row["index"]))
                else:
                    finished(row)
        return state

    def ids(self, name: str) -> set[str]:
        return {row["id"] for row in read_jsonl(self.path(name))}

    def drop_failures(self, name: str, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite a failures file keeping only rows `keep` accepts (for --retry-failed)."""
        rows = list(read_jsonl(self.path(name)))
        kept = [row for row in rows if keep(row)]
        if len(kept) != len(rows):
            write_jsonl(self.path(name), kept)
        return len(rows) - len(kept)

    # --- appending -----------------------------------------------------------------------------

    def append(self, name: str, row: dict[str, Any]) -> None:
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = self.path(name).open("a", encoding="utf-8")
        handle.write(dumps(row) + "\n")
        handle.flush()  # survives a killed process; the OS writes it out

    def append_all(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.append(name, row)

    def close(self) -> None:
        """Close the ledgers and give the directory back."""
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self.unlock()

    # --- summaries -----------------------------------------------------------------------------

    def totals(
        self,
        done_file: str,
        failures_file: str,
        reason_of: Callable[[dict[str, Any]], str | None] = lambda row: row.get("reason"),
    ) -> dict[str, Any]:
        """Counts and token totals of one ledger over the whole directory, resumed runs
        included. In a ledger that holds both (judgments), `reason_of` tells failures."""
        tokens: dict[str, dict[str, Any]] = {}
        reasons: Counter[str] = Counter()
        done = 0

        def add_calls(calls: list[dict[str, Any]]) -> None:
            for call in calls:
                entry = tokens.setdefault(call["role"], {"calls": 0, "input": 0, "output": 0})
                entry["calls"] += 1
                entry["input"] += call.get("input_tokens", 0)
                entry["output"] += call.get("output_tokens", 0)
                if call.get("cost_usd") is not None:
                    entry["cost_usd"] = round(entry.get("cost_usd", 0.0) + call["cost_usd"], 8)

        for row in read_jsonl(self.path(done_file)):
            reason = reason_of(row) if failures_file == done_file else None
            if reason:
                reasons[reason] += 1
            else:
                done += 1
            add_calls(row.get("calls") or row.get("metadata", {}).get("calls", []))
        if failures_file != done_file:
            for failure in read_jsonl(self.path(failures_file)):
                reasons[failure["reason"]] += 1
                add_calls(failure.get("calls", []))
        costs = [entry["cost_usd"] for entry in tokens.values() if "cost_usd" in entry]
        return {
            "done": done,
            "failed": sum(reasons.values()),
            "failed_by_reason": dict(sorted(reasons.items())),
            "tokens_by_role": tokens,
            **({"cost_usd": round(sum(costs), 8)} if costs else {}),
        }

    def spent(self, ledgers: Iterable[str]) -> tuple[float, int, int]:
        """Cost (USD), tokens and rows recorded so far in `ledgers`, done and failed rows
        alike: what a budget has used in this directory, over every earlier run."""
        usd, tokens, rows = 0.0, 0, 0
        for name in dict.fromkeys(ledgers):
            for row in read_jsonl(self.path(name)):
                rows += 1
                for call in row.get("calls") or row.get("metadata", {}).get("calls", []):
                    usd += call.get("cost_usd") or 0.0
                    tokens += call.get("input_tokens", 0) + call.get("output_tokens", 0)
        return usd, tokens, rows
