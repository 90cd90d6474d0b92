"""What the models answer: every bounded value is an enum in the JSON schema, because grammar-
constrained decoders (llama.cpp, vLLM's structured outputs) enforce enums but not integer bounds
(the embedded model answered `severity: 5` to every DPO judge call before)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from aidsafe.agents.grader import Grade
from aidsafe.schemas import Intents, Refinement, schemas_for

POLICIES = ["physical_harm", "respect_helpfulness"]
BOUNDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}


def answer_schemas() -> list[type[BaseModel]]:
    recipe = schemas_for(POLICIES)
    return [
        Intents,
        Refinement,
        Grade,
        recipe.thought,
        recipe.initial_cot,
        recipe.deliberation_turn,
        recipe.belief,
        recipe.verdict,
    ]


def bounded_keys(schema: Any, path: str = "") -> list[str]:
    """Where a JSON schema bounds a number instead of enumerating its values."""
    found: list[str] = []
    if isinstance(schema, dict):
        found += [f"{path}.{key}" for key in BOUNDS & set(schema)]
        for key, value in schema.items():
            found += bounded_keys(value, f"{path}.{key}")
    elif isinstance(schema, list):
        for n, value in enumerate(schema):
            found += bounded_keys(value, f"{path}[{n}]")
    return found


@pytest.mark.parametrize("schema", answer_schemas(), ids=lambda s: s.__name__)
def test_no_answer_schema_bounds_a_number(schema: type[BaseModel]) -> None:
    assert bounded_keys(schema.model_json_schema()) == []


def test_severity_scores_and_reasons_are_enums() -> None:
    verdict = schemas_for(POLICIES).verdict.model_json_schema()
    assert verdict["properties"]["severity"]["enum"] == [0, 1, 2, 3, 4]
    assert Grade.model_json_schema()["properties"]["score"]["enum"] == [1, 2, 3, 4, 5]
    removal = Refinement.model_json_schema()["$defs"]["Removal"]["properties"]["reason"]
    assert removal["enum"] == ["repetitive", "redundant", "deceptive", "policy_inconsistent"]
    with pytest.raises(ValidationError):
        Grade.model_validate({"score": 6, "rationale": "x"})
