"""`generate --select N`: a balanced subset of a run's SFT rows (STAR-1-style selection)."""

from __future__ import annotations

import hashlib
from typing import Any


def select_subset(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """STAR-1-style balanced selection: while more than `n` rows remain, drop one row from the
    largest (source x category) bucket, where the category is the first policy the original
    answer violated ("none" when it was safe). Ties go to the bucket named first in sort order;
    within a bucket the row with the largest sha256(id) goes first. Deterministic."""
    buckets: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        meta = row["metadata"]
        replaced = meta.get("replaced")
        violated = replaced["verdict"]["violated"] if replaced else []
        key = (meta.get("source", meta["recipe"]), violated[0] if violated else "none")
        buckets.setdefault(key, []).append(row)
    for members in buckets.values():
        members.sort(key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    remaining = sum(len(m) for m in buckets.values())
    while remaining > n:
        key = max(sorted(buckets), key=lambda k: len(buckets[k]))
        buckets[key].pop()
        remaining -= 1
    kept = {row["id"] for members in buckets.values() for row in members}
    return [row for row in rows if row["id"] in kept]
