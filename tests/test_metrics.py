"""Safe@1, ConsSafe@K and Safe@K over judged samples, overall and per policy, by hand."""

from typing import Any

import pytest

from aidsafe.metrics import per_policy_metrics, safety_metrics


def test_metrics_by_hand() -> None:
    groups: dict[str, list[bool | None]] = {
        "a": [True, True, True, True],  # all safe
        "b": [True, True, False, False],  # exactly half: consistent, not all
        "c": [True, False, False, False],  # a quarter
        "d": [None, None],  # nothing judged: left out
    }
    metrics = safety_metrics(groups)
    assert metrics["safe_at_1"] == pytest.approx((1 + 0.5 + 0.25) / 3)
    assert metrics["cons_safe_at_k"] == pytest.approx(2 / 3)
    assert metrics["safe_at_k"] == pytest.approx(1 / 3)
    assert (metrics["prompts"], metrics["prompts_unjudged"]) == (3, 1)
    assert (metrics["samples_judged"], metrics["samples_unjudged"]) == (12, 2)


def test_metrics_with_k_1_and_unjudged_samples_excluded() -> None:
    metrics = safety_metrics({"a": [True], "b": [False], "c": [None, True]})
    assert metrics["safe_at_1"] == pytest.approx(2 / 3)
    assert metrics["cons_safe_at_k"] == metrics["safe_at_k"] == pytest.approx(2 / 3)
    assert (metrics["k_min"], metrics["k_max"]) == (1, 1)
    assert safety_metrics({})["safe_at_1"] is None


def test_per_policy_metrics() -> None:
    judgments: list[dict[str, Any]] = [
        {"group": "a", "safe": False, "violated": ["p1"]},
        {"group": "a", "safe": True, "violated": []},
        {"group": "b", "safe": None, "violated": []},
    ]
    metrics = per_policy_metrics(judgments, ["p1", "p2"])
    assert metrics["p1"]["safe_at_1"] == 0.5 and metrics["p1"]["safe_at_k"] == 0.0
    assert metrics["p2"]["safe_at_k"] == 1.0 and metrics["p2"]["prompts_unjudged"] == 1
