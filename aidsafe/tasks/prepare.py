"""`aidsafe prepare`: a prompt pool cleaned before generation. Rows from several sources are
tagged with their source, exact and near duplicates are dropped, and every dropped prompt is
listed in report.json (and report.html) with why and what it duplicated."""

from __future__ import annotations

import functools
import hashlib
import html
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidsafe.errors import UserError
from aidsafe.inputs import PromptSource
from aidsafe.jsonl import now, write_atomic, write_jsonl

PROMPTS = "prompts.jsonl"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"

# MinHash signatures: 128 permutations estimate a Jaccard similarity within about +-0.09 (two
# standard deviations); the seed is fixed so that the same pool always keeps the same rows.
NUM_PERM = 128
MINHASH_SEED = 1


@dataclass(frozen=True)
class InputSpec:
    """One pool input: a file, saved dataset folder or Hugging Face dataset (`spec`), and the
    name its rows are tagged with (`source`)."""

    spec: str
    source: str

    @classmethod
    def parse(cls, text: str) -> InputSpec:
        """`SPEC`, tagged with its file name (a dataset by its name), or `NAME=SPEC`. Text that
        names an existing path is a path even if it holds `=`."""
        name, sep, spec = text.partition("=")
        if sep and name and spec and not Path(text).exists() and "/" not in name:
            return cls(spec, name)
        path = Path(text)
        return cls(text, path.name if path.exists() else text)


@dataclass(frozen=True)
class PrepareSettings:
    """How the pool is read and cleaned. Thresholds are Jaccard similarities in (0, 1]."""

    near_threshold: float = 0.7  # near duplicates: estimated Jaccard of word 1..shingle-grams
    shingle: int = 2  # longest word n-gram in a prompt's MinHash shingle set
    prompt_field: str = "prompt"
    id_field: str = "id"
    split: str = "train"

    def check(self) -> None:
        if not 0 < self.near_threshold <= 1:
            raise UserError(
                f"--near-threshold: expected a number in (0, 1], got {self.near_threshold}"
            )
        if self.shingle < 1:
            raise UserError(f"--shingle: expected a whole number of words >= 1, got {self.shingle}")


@dataclass
class PoolRow:
    """A prompt of the pool; `position` orders the pool (inputs in the order given, then rows
    in source order) and decides which copy of a duplicate is kept: the first."""

    position: int
    source: str
    row: int  # 0-based index in its source
    id: str  # the source's id, or a content hash of the prompt
    prompt: str


@dataclass
class PrepareSummary:
    out: Path
    read: int
    kept: int
    dropped: dict[str, int]  # reason -> count
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)  # read/kept per source


# --- text ----------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    """The text compared for duplicates: Unicode-compatibility folded, case-folded, with
    punctuation and runs of white space turned into single spaces."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NON_WORD.sub(" ", folded).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def shingles(text: str, longest: int) -> set[str]:
    """Word 1- to `longest`-grams of the normalised text: single words make a reordered or
    re-punctuated prompt match, the longer grams keep apart prompts made of the same words."""
    words = normalise(text).split()
    grams = {
        " ".join(words[start : start + size])
        for size in range(1, longest + 1)
        for start in range(len(words) - size + 1)
    }
    return grams or {""}


@functools.cache
def _template() -> Any:
    """A MinHash whose permutations every signature shares: drawing them anew for each prompt
    costs three quarters of the time of a signature."""
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)


def minhash_of(grams: set[str]) -> Any:
    from datasketch import MinHash

    template = _template()
    signature = MinHash(
        num_perm=NUM_PERM,
        seed=MINHASH_SEED,
        permutations=template.permutations,
        scheme=template.scheme,
    )
    signature.update_batch([gram.encode("utf-8") for gram in grams])
    return signature


# --- the pool ------------------------------------------------------------------------------------


def open_sources(inputs: list[InputSpec], settings: PrepareSettings) -> list[PromptSource]:
    """Every input opened and read through once, so that a missing file, field or bad line
    stops the command before any output is written."""
    if not inputs:
        raise UserError("prepare needs at least one input")
    names = Counter(spec.source for spec in inputs)
    repeated = [name for name, count in names.items() if count > 1]
    if repeated:
        raise UserError(
            f"{repeated[0]}: two inputs have this source name; name them with NAME=INPUT"
        )
    sources = []
    for spec in inputs:
        source = PromptSource(
            spec.spec,
            prompt_field=settings.prompt_field,
            id_field=settings.id_field,
            split=settings.split,
        )
        source.check()
        sources.append(source)
    return sources


class NearIndex:
    """MinHash signatures in an LSH index, which finds candidates fast and approximately; each
    candidate is then confirmed by the exact Jaccard similarity of the two shingle sets, so a
    reported score is exact and every match reaches the threshold. The index keeps only its
    band hashes and each key's text, nothing that grows with the square of the pool."""

    # LSH bands are tuned to the threshold by weighing a missed pair 9 times a false candidate:
    # the confirmation step removes false candidates, nothing brings a missed pair back.
    WEIGHTS = (0.1, 0.9)

    def __init__(self, threshold: float, longest: int) -> None:
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.longest = longest
        self.lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=self.WEIGHTS)
        self.texts: dict[int, str] = {}

    def match(self, text: str) -> tuple[int | None, float, Any]:
        """The most similar indexed key at or above the threshold (ties: the smallest key; None
        if there is none) and its Jaccard similarity, with the text's signature (to `add` the
        text without computing it again)."""
        grams = shingles(text, self.longest)
        signature = minhash_of(grams)
        best: tuple[int, float] | None = None
        for key in sorted(self.lsh.query(signature)):
            other = shingles(self.texts[key], self.longest)
            score = len(grams & other) / len(grams | other)
            if score >= self.threshold and (best is None or score > best[1]):
                best = (key, score)
        if best is None:
            return None, 0.0, signature
        return best[0], best[1], signature

    def add(self, key: int, text: str, signature: Any) -> None:
        self.lsh.insert(key, signature)
        self.texts[key] = text


def _pool(
    inputs: list[InputSpec], sources: list[PromptSource], dropped: list[dict[str, Any]]
) -> Iterator[PoolRow]:
    """The usable rows of every source in order; an unusable one goes to `dropped`."""
    position = 0
    for spec, source in zip(inputs, sources, strict=True):
        for row in source:
            if row.prompt is None:
                dropped.append(
                    {
                        "source": spec.source,
                        "row": row.index,
                        "id": row.id,
                        "prompt": None,
                        "reason": "unusable",
                        "detail": f"{spec.spec}: {row.problem}",
                    }
                )
                continue
            yield PoolRow(position, spec.source, row.index, row.id, row.prompt)
            position += 1


def _drop(row: PoolRow, reason: str, detector: str, score: float, kept: PoolRow) -> dict[str, Any]:
    return {
        "source": row.source,
        "row": row.row,
        "id": row.id,
        "prompt": row.prompt,
        "reason": reason,
        "detector": detector,
        "score": round(score, 4),
        "duplicate_of": {"source": kept.source, "row": kept.row, "id": kept.id},
    }


def deduplicate(
    rows: Iterator[PoolRow], settings: PrepareSettings, dropped: list[dict[str, Any]]
) -> list[PoolRow]:
    """The rows left after exact dedup (same normalised text) and near-duplicate dedup (MinHash
    LSH); the first copy in pool order is kept, each other copy goes to `dropped`."""
    kept: list[PoolRow] = []
    by_hash: dict[str, PoolRow] = {}
    near = NearIndex(settings.near_threshold, settings.shingle)
    by_position: dict[int, PoolRow] = {}
    for row in rows:
        digest = text_hash(row.prompt)
        if digest in by_hash:
            dropped.append(_drop(row, "exact_duplicate", "exact", 1.0, by_hash[digest]))
            continue
        by_hash[digest] = row
        key, score, signature = near.match(row.prompt)
        if key is not None:
            dropped.append(_drop(row, "near_duplicate", "minhash", score, by_position[key]))
            continue
        near.add(row.position, row.prompt, signature)
        by_position[row.position] = row
        kept.append(row)
    return kept


def output_ids(rows: list[PoolRow]) -> list[str]:
    """An id per kept row, unique over the pool (generate rejects a repeated id): the source's
    id, or `SOURCE:ID` where two rows share it, or `SOURCE:ID:ROW` where that is shared too."""
    counts = Counter(row.id for row in rows)
    ids = [row.id if counts[row.id] == 1 else f"{row.source}:{row.id}" for row in rows]
    counts = Counter(ids)
    return [
        name if counts[name] == 1 else f"{name}:{row.row}"
        for name, row in zip(ids, rows, strict=True)
    ]


def output_row(row: PoolRow, row_id: str) -> dict[str, Any]:
    """A row of prompts.jsonl, as `aidsafe generate` reads it (`id`, `prompt`), with where it
    came from in `metadata`."""
    return {
        "id": row_id,
        "prompt": row.prompt,
        "metadata": {"source": row.source, "source_id": row.id, "source_row": row.row},
    }


def prepare(
    inputs: list[InputSpec], out: Path, settings: PrepareSettings | None = None
) -> PrepareSummary:
    """Read the inputs into one pool, drop duplicates, and write DIR/prompts.jsonl,
    DIR/report.json and DIR/report.html. Nothing is dropped without a line in the report."""
    settings = settings or PrepareSettings()
    settings.check()
    sources = open_sources(inputs, settings)
    dropped: list[dict[str, Any]] = []
    read: Counter[str] = Counter()

    def counted(rows: Iterator[PoolRow]) -> Iterator[PoolRow]:
        for row in rows:
            read[row.source] += 1
            yield row

    kept = deduplicate(counted(_pool(inputs, sources, dropped)), settings, dropped)
    for entry in dropped:
        if entry["reason"] == "unusable":
            read[entry["source"]] += 1
    kept_by_source = Counter(row.source for row in kept)
    per_source = {
        spec.source: {"read": read[spec.source], "kept": kept_by_source[spec.source]}
        for spec in inputs
    }
    summary = PrepareSummary(
        out=out,
        read=sum(read.values()),
        kept=len(kept),
        dropped=dict(sorted(Counter(entry["reason"] for entry in dropped).items())),
        per_source=per_source,
    )
    report = {
        "created": now(),
        "inputs": [{"source": spec.source, "spec": spec.spec} for spec in inputs],
        "settings": {
            "near_threshold": settings.near_threshold,
            "shingle": settings.shingle,
            "num_perm": NUM_PERM,
            "prompt_field": settings.prompt_field,
            "id_field": settings.id_field,
            "split": settings.split,
        },
        "read": summary.read,
        "kept": summary.kept,
        "dropped_by_reason": summary.dropped,
        "per_source": per_source,
        "dropped": dropped,
    }
    out.mkdir(parents=True, exist_ok=True)
    ids = output_ids(kept)
    write_jsonl(out / PROMPTS, (output_row(row, i) for row, i in zip(kept, ids, strict=True)))
    write_atomic(out / REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_atomic(out / REPORT_HTML, report_html(report))
    return summary


# --- the report page -----------------------------------------------------------------------------


def _matched(entry: dict[str, Any]) -> str:
    kept = entry.get("duplicate_of")
    if kept:
        return f"{kept['source']} row {kept['row']} (id {kept['id']})"
    return ""


def report_html(report: dict[str, Any]) -> str:
    """report.json as one static page: the counts, then a table of every dropped prompt."""

    def cell(value: Any) -> str:
        return f"<td>{html.escape('' if value is None else str(value))}</td>"

    counts = "".join(
        f"<tr>{cell(name)}{cell(numbers['read'])}{cell(numbers['kept'])}</tr>"
        for name, numbers in report["per_source"].items()
    )
    reasons = "".join(
        f"<tr>{cell(reason)}{cell(count)}</tr>"
        for reason, count in report["dropped_by_reason"].items()
    )
    dropped = "".join(
        "<tr>"
        + cell(entry["reason"])
        + cell(entry["source"])
        + cell(entry["row"])
        + cell(entry["id"])
        + cell(entry["prompt"] if entry["prompt"] is not None else entry.get("detail"))
        + cell(entry.get("detector"))
        + cell(entry.get("score"))
        + cell(_matched(entry))
        + "</tr>"
        for entry in report["dropped"]
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>aidsafe prepare report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
th {{ background: #eee; }}
</style></head><body>
<h1>Prompt pool: {report["kept"]} kept of {report["read"]} read</h1>
<p>Made {html.escape(report["created"])}.</p>
<h2>Sources</h2>
<table id="sources"><tr><th>source</th><th>read</th><th>kept</th></tr>{counts}</table>
<h2>Dropped, by reason</h2>
<table id="reasons"><tr><th>reason</th><th>prompts</th></tr>{reasons}</table>
<h2>Every dropped prompt</h2>
<table id="dropped"><tr><th>reason</th><th>source</th><th>row</th><th>id</th><th>prompt</th>
<th>detector</th><th>score</th><th>matched</th></tr>{dropped}</table>
</body></html>
"""
