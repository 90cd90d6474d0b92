"""The baseline recipe (the paper's LLM_ZS) with a scripted model: one zero-shot call."""

from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.recipes import baseline, registry
from aidsafe.recipes.base import Done
from tests.conftest import DRAFT, make_config, run_graph


async def test_baseline_is_one_zero_shot_call_in_the_aidsafe_layout() -> None:
    model = ScriptedChatModel([DRAFT])
    config = make_config(scripted={"baseline": model}, recipe="baseline")
    state = await run_graph("baseline", config, {"id": "x", "prompt": "How do I kill a process?"})
    assert model.calls == 1
    assert model.received[0][1].text == "Query:\nHow do I kill a process?"  # no intents
    outcome = baseline.RECIPE.finish(state, registry.context(baseline.RECIPE, config))
    assert isinstance(outcome, Done)
    trace = outcome.record
    assert trace["recipe"] == "baseline" and trace["deliberation"]["turns"] == []
    assert [t["text"] for t in trace["final_cot"]] == [t["text"] for t in DRAFT["thoughts"]]
    assert trace["response"] == DRAFT["response"] and trace["removed"] == []
