"""Small statistics for comparing runs: percentile bootstrap CIs and paired win rates.
Seeded, so a report is the same every time it is made from the same grades."""

from __future__ import annotations

import random
from collections.abc import Sequence

RESAMPLES = 2000


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of the mean; None for no data."""
    if not values:
        return None
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    low = means[int(tail * resamples)]
    high = means[min(resamples - 1, int((1 - tail) * resamples))]
    return (low, high)


def win_rate(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Share of paired items where the first beats the second; a tie counts one half."""
    if not pairs:
        return None
    score = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs)
    return score / len(pairs)
