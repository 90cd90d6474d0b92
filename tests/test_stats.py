"""Bootstrap confidence intervals and paired win rates, by hand."""

import pytest

from aidsafe.stats import bootstrap_ci, win_rate


def test_bootstrap_ci_and_win_rate_by_hand() -> None:
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([3.0]) == (3.0, 3.0)
    assert bootstrap_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)
    low, high = bootstrap_ci([1.0, 5.0] * 20) or (0, 0)
    assert low < 3.0 < high and low > 2.0 and high < 4.0
    assert bootstrap_ci([1.0, 2.0, 5.0]) == bootstrap_ci([1.0, 2.0, 5.0])  # seeded
    assert win_rate([(5, 4), (3, 3), (2, 4), (4, 1)]) == pytest.approx(2.5 / 4)
    assert win_rate([]) is None
