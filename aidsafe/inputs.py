"""Prompt sources: JSONL, CSV, Parquet, a dataset saved with `save_to_disk`, or a Hugging Face
dataset name. Rows are streamed, never held in memory all at once."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidsafe.errors import UserError

FILE_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
FILE_FORMATS |= {".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class PromptRow:
    index: int  # 0-based position in the source
    id: str
    prompt: str | None  # None when the row is unusable; `problem` says why
    problem: str | None = None


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
    ) -> None:
        self.spec = spec
        self.prompt_field = prompt_field
        self.id_field = id_field
        self.split = split
        self.id_field_required = id_field_required
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
        return {"source": self.spec, "kind": self.kind, "split": self.split}

    # --- reading -------------------------------------------------------------------------------

    def _records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line or row number for messages, record) pairs."""
        if self.kind == "jsonl":
            yield from self._jsonl_records()
        elif self.kind == "csv":
            with self._open() as handle:
                reader = csv.DictReader(handle)
                for number, record in enumerate(reader, start=2):
                    yield number, dict(record)
        elif self.kind == "parquet":
            import pyarrow.parquet as pq

            number = 0
            for batch in pq.ParquetFile(self.spec).iter_batches(batch_size=1024):
                for record in batch.to_pylist():
                    number += 1
                    yield number, record
        else:
            for number, record in enumerate(self._load_dataset(), start=1):
                yield number, dict(record)

    def _open(self) -> Any:
        try:
            return open(self.spec, encoding="utf-8", newline="")
        except OSError as error:
            raise UserError(f"{self.spec}: cannot read input: {error.strerror}") from error

    def _jsonl_records(self) -> Iterator[tuple[int, dict[str, Any]]]:
        with self._open() as handle:
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
                yield number, record

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
        """Known column names, or None for JSONL (rows may differ)."""
        if self.kind == "csv":
            with self._open() as handle:
                return next(csv.reader(handle), [])
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(self.spec).schema_arrow.names)
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
        for _, record in self._records():
            if count == 0:
                first_keys = list(record)
            count += 1
            seen_prompt_field = seen_prompt_field or self.prompt_field in record
            seen_id_field = seen_id_field or self.id_field in record
        available = columns if columns is not None else first_keys
        if count and not seen_prompt_field:
            raise UserError(
                f"{self.spec}: no prompt field {self.prompt_field!r} "
                f"(fields: {', '.join(available) or 'none'}); pick one with --prompt-field"
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
        for index, (number, record) in enumerate(self._records()):
            where = f"{'row' if self.kind != 'jsonl' else 'line'} {number}"
            value = record.get(self.prompt_field)
            raw_id = record.get(self.id_field)
            explicit_id = None if raw_id is None or str(raw_id).strip() == "" else str(raw_id)
            if not isinstance(value, str) or not value.strip():
                problem = (
                    f"{where}: field {self.prompt_field!r} is missing"
                    if value is None
                    else f"{where}: field {self.prompt_field!r} is empty"
                    if isinstance(value, str)
                    else f"{where}: field {self.prompt_field!r} is a {type(value).__name__}, "
                    "not text"
                )
                yield PromptRow(index, explicit_id or f"row-{index}", None, problem)
                continue
            yield PromptRow(index, explicit_id or content_id(value), value)
