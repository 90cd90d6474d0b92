"""STAR-1-style balanced selection, shared by `generate --select N` (a run's SFT rows) and
`prepare --select N` (a prompt pool): trim the largest (source x category) bucket first."""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


def balanced_subset(
    items: list[T],
    n: int,
    bucket: Callable[[T], tuple[str, ...]],
    ident: Callable[[T], str],
    seed: int | None = None,
) -> list[T]:
    """Keep `n` of `items`: while more than `n` remain, drop one item from the largest bucket
    (ties: the bucket named first in sort order); within a bucket the item with the largest
    sha256 of its `ident` (of `seed:ident` given a seed) goes first. The result depends on the
    items, not on their order, and keeps their order."""

    def rank(item: T) -> str:
        name = ident(item) if seed is None else f"{seed}:{ident(item)}"
        return hashlib.sha256(name.encode()).hexdigest()

    buckets: dict[tuple[str, ...], list[T]] = {}
    for item in items:
        buckets.setdefault(bucket(item), []).append(item)
    for members in buckets.values():
        members.sort(key=rank)
    # a heap of (-size, bucket) pops the largest bucket, and among equals the first in sort
    # order: one removal costs log(buckets), not a sort of the buckets
    heap = [(-len(members), key) for key, members in buckets.items()]
    heapq.heapify(heap)
    remaining = len(items)
    while remaining > n:
        size, key = heapq.heappop(heap)
        buckets[key].pop()
        remaining -= 1
        if size + 1 < 0:
            heapq.heappush(heap, (size + 1, key))
    kept: set[Hashable] = {id(item) for members in buckets.values() for item in members}
    return [item for item in items if id(item) in kept]


def _sft_bucket(row: dict[str, Any]) -> tuple[str, str]:
    """A run's SFT row: its source (UnsafeChain's original or corrected, else the recipe) and
    the first policy the original answer violated ("none" when it was safe)."""
    meta = row["metadata"]
    replaced = meta.get("replaced")
    violated = replaced["verdict"]["violated"] if replaced else []
    return meta.get("source", meta["recipe"]), violated[0] if violated else "none"


def select_subset(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`generate --select N`: a balanced subset of a run's SFT rows (see `balanced_subset`)."""
    return balanced_subset(rows, n, _sft_bucket, lambda row: str(row["id"]))
