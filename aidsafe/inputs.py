"""Prompt sources: JSONL, a JSON array, CSV, Parquet, a dataset saved with `save_to_disk`, or a
Hugging Face dataset name. Rows are streamed, never held in memory all at once (but for a JSON
array, which is parsed whole). Text files are UTF-8, with or without a byte-order mark."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from aidsafe.errors import UserError
from aidsafe.portable import file_sha256, portable_name, relative_to_cwd, tree_sha256

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
FILE_FORMATS |= {".parquet": "parquet", ".pq": "parquet"}

# A JSON escape such as "\ud800" decodes to a lone UTF-16 surrogate: not text, and UTF-8 (every
# output file) cannot encode it.
SURROGATE = re.compile(r"[\ud800-\udfff]")


METADATA = "metadata"  # an input row's own metadata object, kept with every record of the row


@dataclass(frozen=True)
class PromptRow:
    index: int  # 0-based position in the source
    id: str
    prompt: str | None  # None when the row is unusable; `problem` says why
    problem: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # the source's `extra_fields`
    has_id: bool = False  # the id came from the id column, not from a hash
    # the row's own `metadata` object (e.g. source and categories from `aidsafe prepare`),
    # carried into every record made from it
    metadata: dict[str, Any] | None = None


def category_names(value: Any) -> list[str]:
    """A category column's value as a list of names: text is one name; a list holds names; a
    mapping (BeaverTails' `category`) names those whose value is true; empty is none."""
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        return [str(name) for name, flag in value.items() if flag]
    if isinstance(value, list | tuple):
        return [str(name) for name in value if name is not None and name != ""]
    return [str(value)]


def content_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class PromptSource:
    def __init__(
        self,
        spec: str,
        prompt_field: str = "prompt",
        id_field: str = "id",
        split: str = "train",
        id_field_required: bool = False,
        text_fields: dict[str, str] | None = None,
        extra_fields: tuple[str, ...] = (),
        prompt_option: str = "--prompt-field",
        extra_option: str = "its option",
    ) -> None:
        """`text_fields`: more columns that must hold text, each with the option that names it
        (for error messages). `extra_fields`: columns carried along in PromptRow.fields.
        `prompt_option`, `extra_option`: the options that name the prompt field and the extra
        fields (for error messages)."""
        self.spec = spec
        self.prompt_field = prompt_field
        self.id_field = id_field
        self.split = split
        self.id_field_required = id_field_required
        self.text_fields = text_fields or {}
        self.extra_fields = extra_fields
        self.prompt_option = prompt_option
        self.extra_option = extra_option
        path = Path(spec)
        if path.is_dir():
            self.kind = "saved" if (path / "dataset_info.json").exists() else "hub"
        elif path.suffix.lower() in FILE_FORMATS:
            if not path.exists():
                raise UserError(f"{spec}: input file not found")
            self.kind = FILE_FORMATS[path.suffix.lower()]
        elif path.exists():
            raise UserError(
                f"{spec}: unsupported input format {path.suffix or '(no suffix)'} "
                "(use .jsonl, .csv, .parquet, a saved dataset folder or a Hugging Face dataset)"
            )
        else:
            self.kind = "hub"
        self._dataset: Any = None

    def describe(self) -> dict[str, Any]:
        """What identifies the source in a run's fingerprint: its kind and split, and a hub
        dataset's name; never a file's path (the same file by another spelling, or moved, is
        the same input: its rows are checked by content as the run resumes)."""
        described = {"kind": self.kind, "split": self.split}
        return described | ({"name": self.spec} if self._on_hub else {})

    @property
    def _on_hub(self) -> bool:
        """A Hugging Face dataset name, not a folder of data files on this machine."""
        return self.kind == "hub" and not Path(self.spec).is_dir()

    def provenance(self) -> dict[str, Any]:
        """What a run's manifest records about its input: a hub dataset by name and split; a
        file or folder by its name and the SHA-256 of its content, and, when it lies below the
        working directory, its path relative to it. Never an absolute path."""
        if self._on_hub:
            return {"name": self.spec, "split": self.split}
        path = Path(self.spec)
        digest = tree_sha256(path) if path.is_dir() else file_sha256(path)
        recorded: dict[str, Any] = {"name": portable_name(self.spec), "sha256": digest}
        if self.kind in ("saved", "hub"):
            recorded["split"] = self.split
        relative = relative_to_cwd(path)
        return recorded | ({"path": relative} if relative is not None else {})

    # --- reading -------------------------------------------------------------------------------

    def _records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(where, record) pairs; `where` names the line, row or element for messages."""
        if self.kind == "jsonl" and self._is_json_array():
            yield from self._json_array_records()
        elif self.kind == "jsonl":
            yield from self._jsonl_records()
        elif self.kind == "csv":
            yield from self._csv_records()
        elif self.kind == "parquet":
            yield from self._parquet_records()
        else:
            for number, record in enumerate(self._load_dataset(), start=1):
                yield f"row {number}", dict(record)

    @contextmanager
    def _text(self) -> Iterator[TextIO]:
        """The file opened as UTF-8 text (`utf-8-sig`: a byte-order mark is dropped); a read
        or decoding error is a UserError naming the file."""
        try:
            with open(self.spec, encoding="utf-8-sig", newline="") as handle:
                yield handle
        except OSError as error:
            raise UserError(f"{self.spec}: cannot read input: {error.strerror}") from error
        except UnicodeDecodeError as error:
            raise UserError(self._not_utf8()) from error

    def _not_utf8(self) -> str:
        """The message for a file that is not UTF-8, naming its first line that is not (the
        text reader's error does not say where in the file it is)."""
        with open(self.spec, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as error:
                    return (
                        f"{self.spec}: line {number}: not UTF-8 text (byte "
                        f"0x{line[error.start]:02X}); save the file as UTF-8"
                    )
        return f"{self.spec}: not UTF-8 text; save the file as UTF-8"

    def _is_json_array(self) -> bool:
        """A `.json` file that opens with `[` holds one array of objects, not JSON lines."""
        if Path(self.spec).suffix.lower() != ".json":
            return False
        with self._text() as handle:
            while (char := handle.read(1)).isspace():
                pass
            return char == "["

    def _json_array_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._text() as handle:
            try:
                items = json.load(handle)
            except json.JSONDecodeError as error:
                raise UserError(
                    f"{self.spec}: line {error.lineno}: not valid JSON: {error.msg}"
                ) from error
        for position, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise UserError(
                    f"{self.spec}: element {position} of the array: expected a JSON object, "
                    f"got {type(item).__name__}"
                )
            yield f"element {position}", item

    def _jsonl_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._text() as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(
                        f"{self.spec}: line {number}: not valid JSON: {error.msg}"
                    ) from error
                if not isinstance(record, dict):
                    raise UserError(
                        f"{self.spec}: line {number}: expected a JSON object, "
                        f"got {type(record).__name__}"
                    )
                yield f"line {number}", record

    def _csv_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        with self._text() as handle:
            reader = csv.DictReader(handle)
            try:
                for number, record in enumerate(reader, start=2):
                    yield f"row {number}", dict(record)
            except csv.Error as error:  # line_num: the lines of the records read before
                raise UserError(
                    f"{self.spec}: line {reader.line_num + 1}: not valid CSV: {error}"
                ) from error

    def _parquet(self) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.spec)
        except (pa.ArrowException, OSError) as error:
            raise UserError(f"{self.spec}: not a readable Parquet file: {error}") from error

    def _parquet_records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        import pyarrow as pa

        number = 0
        try:
            for batch in self._parquet().iter_batches(batch_size=1024):
                for record in batch.to_pylist():
                    number += 1
                    yield f"row {number}", record
        except (pa.ArrowException, OSError) as error:
            raise UserError(
                f"{self.spec}: not a readable Parquet file (after row {number}): {error}"
            ) from error

    def _load_dataset(self) -> Any:
        if self._dataset is not None:
            return self._dataset
        import datasets

        try:
            if self.kind == "saved":
                loaded = datasets.load_from_disk(self.spec)
                if isinstance(loaded, datasets.DatasetDict):
                    if self.split not in loaded:
                        raise UserError(
                            f"{self.spec}: no split {self.split!r} (splits: {', '.join(loaded)})"
                        )
                    loaded = loaded[self.split]
            else:
                loaded = datasets.load_dataset(self.spec, split=self.split)
        except UserError:
            raise
        except Exception as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"{self.spec}: cannot load dataset: {message}") from error
        self._dataset = loaded
        return loaded

    # --- checking and iteration ---------------------------------------------------------------

    def columns(self) -> list[str] | None:
        """Known column names, or None for JSON (rows may differ)."""
        if self.kind == "csv":
            with self._text() as handle:
                try:
                    return next(csv.reader(handle), [])
                except csv.Error as error:
                    raise UserError(f"{self.spec}: line 1: not valid CSV: {error}") from error
        if self.kind == "parquet":
            return list(self._parquet().schema_arrow.names)
        if self.kind in ("saved", "hub"):
            return list(self._load_dataset().column_names)
        return None

    def check(self) -> int:
        """Read the whole source once before a run: a clear error for a missing column or a
        corrupt line now rather than mid-run, and the row count for progress."""
        columns = self.columns()
        count = 0
        seen_prompt_field = False
        first_keys: list[str] = []
        seen_id_field = False
        seen: set[str] = set()
        wanted = {self.prompt_field, *self.text_fields, *self.extra_fields}
        for _, record in self._records():
            if count == 0:
                first_keys = list(record)
            count += 1
            seen_prompt_field = seen_prompt_field or self.prompt_field in record
            seen_id_field = seen_id_field or self.id_field in record
            seen |= wanted & set(record)
        available = columns if columns is not None else first_keys
        if count and not seen_prompt_field:
            raise UserError(
                f"{self.spec}: no prompt field {self.prompt_field!r} "
                f"(fields: {', '.join(available) or 'none'}); pick one with {self.prompt_option}"
            )
        flags = {**dict.fromkeys(self.extra_fields, self.extra_option), **self.text_fields}
        for name, flag in flags.items():
            if count and name not in seen:
                raise UserError(
                    f"{self.spec}: no field {name!r} (fields: {', '.join(available) or 'none'}); "
                    f"pick one with {flag}"
                )
        if count and self.id_field_required and not seen_id_field:
            raise UserError(
                f"{self.spec}: no id field {self.id_field!r} "
                f"(fields: {', '.join(available) or 'none'})"
            )
        if count == 0:
            raise UserError(f"{self.spec}: the input holds no rows")
        return count

    def __iter__(self) -> Iterator[PromptRow]:
        for index, (where, record) in enumerate(self._records()):
            value = record.get(self.prompt_field)
            raw_id = record.get(self.id_field)
            explicit_id = None if raw_id is None or str(raw_id).strip() == "" else str(raw_id)
            fields = {name: record.get(name) for name in (*self.text_fields, *self.extra_fields)}
            problems = [
                _text_problem(where, name, record.get(name))
                for name in (self.prompt_field, *self.text_fields)
            ] + [
                _surrogate_problem(where, name, record.get(name))
                for name in (self.id_field, *self.extra_fields)
            ]
            problem = next((p for p in problems if p), None)
            metadata = record.get(METADATA)
            metadata = _escaped(metadata) if isinstance(metadata, dict) else None
            if problem:
                # escaped, so that the failure row recording the problem can be written
                row_id = _escaped(explicit_id) if explicit_id else f"row-{index}"
                fields = _escaped(fields)
                yield PromptRow(
                    index, row_id, None, problem, fields, explicit_id is not None, metadata
                )
                continue
            assert isinstance(value, str)
            row_id = explicit_id or content_id(value)
            yield PromptRow(index, row_id, value, None, fields, explicit_id is not None, metadata)


def _text_problem(where: str, name: str, value: Any) -> str | None:
    if value is None:
        return f"{where}: field {name!r} is missing"
    if not isinstance(value, str):
        return f"{where}: field {name!r} is a {type(value).__name__}, not text"
    if not value.strip():
        return f"{where}: field {name!r} is empty"
    return _surrogate_problem(where, name, value)


def _surrogate_problem(where: str, name: str, value: Any) -> str | None:
    if _escaped(value) == value:
        return None
    found = SURROGATE.search(value) if isinstance(value, str) else None
    at = f" (\\u{ord(found.group()):04x} at character {found.start() + 1})" if found else ""
    return (
        f"{where}: field {name!r} holds a lone UTF-16 surrogate{at}, which is not text and "
        "cannot be encoded as UTF-8"
    )


def _escaped(value: Any) -> Any:
    """`value` with each lone surrogate written as its `\\uXXXX` escape."""
    if isinstance(value, str):
        return SURROGATE.sub(lambda found: f"\\u{ord(found.group()):04x}", value)
    if isinstance(value, dict):
        return {key: _escaped(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_escaped(item) for item in value]
    return value
