"""The AIDSAFE graph with scripted models: routing, agreement, budget, refinement, failures."""

from typing import Any

import pytest

from aidsafe.errors import StageFailed
from aidsafe.recipes.aidsafe import apply_refinement, deliberation_agreed
from aidsafe.schemas import Refinement
from tests.conftest import AGREE, DRAFT, REFINE, REVISE, make_config, run_graph, scripted


async def run(models: dict[str, Any], **config: Any) -> dict[str, Any]:
    state = {"id": "x", "prompt": "How do I kill a stuck process?"}
    return await run_graph("aidsafe", make_config(scripted=models, **config), state)


async def test_agreement_ends_deliberation_early() -> None:
    models = scripted(deliberators=[[REVISE], [AGREE]])
    state = await run(models)
    assert [t["action"] for t in state["turns"]] == ["revise", "agree"]
    assert [t["agent"] for t in state["turns"]] == ["deliberator_1", "deliberator_2"]
    assert state["agreed"] is True
    assert models["deliberator_1"].calls == 1 and models["deliberator_2"].calls == 1
    # the revision added a thought and replaced the response before the refiner ran
    assert len(state["thoughts"]) == 3 and state["thoughts"][2]["author"] == "deliberator_1"
    assert "kill -9" in models["refiner"].received[0][-1].text


async def test_budget_ends_deliberation_without_agreement() -> None:
    models = scripted(deliberators=[[REVISE], [REVISE]])
    state = await run(models, deliberation={"budget": 3})
    assert [t["turn"] for t in state["turns"]] == [1, 2, 3]
    assert [t["round"] for t in state["turns"]] == [1, 1, 2]
    assert [t["agent"] for t in state["turns"]] == [
        "deliberator_1",
        "deliberator_2",
        "deliberator_1",
    ]
    assert state["agreed"] is False
    assert len(state["thoughts"]) == 2 + 3


async def test_agreement_rule_all_needs_every_agent() -> None:
    models = scripted(deliberators=[[AGREE], [REVISE, AGREE]])
    state = await run(models, deliberation={"agreement": "all", "budget": 6})
    assert [t["action"] for t in state["turns"]] == ["agree", "revise", "agree", "agree"]
    assert state["agreed"] is True


async def test_zero_budget_skips_deliberation() -> None:
    models = scripted()
    state = await run(models, deliberation={"budget": 0})
    assert state.get("turns", []) == []
    assert models["deliberator_1"].calls == 0
    assert state["final_response"] == REFINE["response"]


async def test_refiner_sees_every_thought_and_its_removals_are_applied() -> None:
    models = scripted(deliberators=[[REVISE], [AGREE]])
    state = await run(models)
    refiner_prompt = models["refiner"].received[0][-1].text
    assert "1. The user wants" in refiner_prompt and "3. Mention SIGKILL" in refiner_prompt
    assert [r["thought"] for r in state["removed"]] == [2]
    assert state["removed"][0]["reason"] == "redundant"
    assert state["removed"][0]["text"] == DRAFT["thoughts"][1]["text"]
    assert [t["text"] for t in state["final_thoughts"]] == [
        DRAFT["thoughts"][0]["text"],
        REVISE["thoughts"][0]["text"],
    ]


async def test_unknown_policy_citation_is_repaired() -> None:
    bad = {"thoughts": [{"text": "t", "policies": ["no_such_policy"]}], "response": "r"}
    models = scripted(drafter=[bad, DRAFT])
    state = await run(models)
    assert models["drafter"].calls == 2
    assert "policies" in models["drafter"].received[1][-1].text
    assert state["thoughts"][0]["policies"] == ["respect_helpfulness"]


async def test_malformed_output_beyond_repairs_fails_the_row_with_a_typed_reason() -> None:
    models = scripted(refiner=["{not json", '{"removed": []}', "plain words"])
    with pytest.raises(StageFailed) as caught:
        await run(models, repair_attempts=2)
    assert (caught.value.stage, caught.value.reason) == ("refine", "malformed_output")
    assert caught.value.raw == "plain words"
    assert models["refiner"].calls == 3


async def test_an_empty_revision_is_sent_back() -> None:
    empty = {"complete": False, "thoughts": [], "response": None}
    models = scripted(deliberators=[[empty, AGREE], [AGREE]])
    state = await run(models)
    assert models["deliberator_1"].calls == 2
    assert [t["action"] for t in state["turns"]] == ["agree"]


async def test_removing_every_thought_is_sent_back() -> None:
    remove_all = {
        "removed": [
            {"thought": 1, "reason": "repetitive", "explanation": "e"},
            {"thought": 2, "reason": "deceptive", "explanation": "e"},
        ],
        "response": "r",
    }
    models = scripted(refiner=[remove_all, REFINE])
    state = await run(models, deliberation={"budget": 0})
    assert models["refiner"].calls == 2
    assert len(state["final_thoughts"]) == 1


def test_apply_refinement_ignores_missing_and_repeated_numbers() -> None:
    thoughts: list[Any] = [
        {"text": t, "policies": [], "author": "drafter", "turn": 0} for t in "abc"
    ]
    refinement = Refinement.model_validate(
        {
            "removed": [
                {"thought": 2, "reason": "redundant", "explanation": ""},
                {"thought": 2, "reason": "redundant", "explanation": ""},
                {"thought": 9, "reason": "deceptive", "explanation": ""},
            ],
            "response": "r",
        }
    )
    kept, removed, notes = apply_refinement(thoughts, refinement)
    assert [t["text"] for t in kept] == ["a", "c"]
    assert len(removed) == 1 and notes == ["refine: ignored removal of thought 9 (does not exist)"]


@pytest.mark.parametrize(
    ("actions", "rule", "agents", "expected"),
    [
        (["revise", "agree"], "any", 2, True),
        (["agree", "revise"], "any", 2, False),
        (["agree", "revise", "agree"], "all", 2, False),
        (["revise", "agree", "agree"], "all", 2, True),
        (["agree"], "all", 1, True),
    ],
)
def test_agreement_rules(actions: list[str], rule: str, agents: int, expected: bool) -> None:
    turns: Any = [{"action": a} for a in actions]
    assert deliberation_agreed(turns, agents, rule) is expected
