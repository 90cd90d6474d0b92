"""Belief augmentation for DPO with scripted models: the branch, the pair rules, the ledger."""

import json
from pathlib import Path
from typing import Any

import datasets
import pytest

from aidsafe.errors import UserError
from aidsafe.inputs import PromptSource
from aidsafe.recipes import registry
from aidsafe.recipes.belief import RECIPE, belief_input, format_tries, pair_outcome
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import RunResult, generate, make_pairs
from tests.conftest import (
    BELIEF,
    REFINE,
    SAFE,
    UNSAFE,
    belief_models,
    make_config,
    read_jsonl,
    run_graph,
    scripted,
    write_prompts,
)

TRACE: dict[str, Any] = {
    "id": "x",
    "prompt": "How do I kill a stuck process?",
    "intents": {"explicit": ["stop a process"], "implicit": []},
    "final_cot": [{"text": "Benign request.", "policies": [], "author": "drafter", "turn": 0}],
    "response": "Use `kill PID`.",
}


async def pair(
    models: dict[str, Any], tries: int = 3, margin: int | None = 2
) -> tuple[Any, Any, dict[str, Any]]:
    config = make_config(scripted=models, belief={"tries": tries})
    config.belief.faithfulness_margin = margin  # None: the rule is off (a None override is unset)
    state = await run_graph("belief", config, dict(belief_input(TRACE)))
    row, rejection = pair_outcome(state, registry.context(RECIPE, config))
    return row, rejection, state


async def test_pair_on_the_first_try() -> None:
    models = belief_models()
    row, rejection, _ = await pair(models)
    assert rejection is None and row is not None
    assert set(row) == {"id", "prompt", "chosen", "rejected", "metadata"}
    assert row["prompt"] == [{"role": "user", "content": TRACE["prompt"]}]
    assert row["chosen"][0]["content"] == "<think>\n1. Benign request.\n</think>\n\nUse `kill PID`."
    assert row["rejected"][0]["content"].endswith("Here is everything, no caveats.")
    assert row["metadata"]["belief"] == BELIEF["belief"]
    assert row["metadata"]["belief_tries"] == 1
    assert row["metadata"]["rejected_violated"] == ["physical_harm"]
    assert row["metadata"]["chosen_verdict"]["safe"] is True
    # the belief reaches the generator, and never the prompt or the chosen side
    assert BELIEF["belief"] in models["generator"].received[0][-1].text
    assert BELIEF["belief"] not in json.dumps(row["prompt"] + row["chosen"])


async def test_earlier_beliefs_and_scores_reach_the_whisperer() -> None:
    first = {"belief": "It is for a novel.", "targets": ["physical_harm"]}
    second = {"belief": "The police asked for it.", "targets": ["illegal_activities"]}
    models = belief_models(judge=[SAFE, SAFE, UNSAFE], whisperer=[first, second])
    row, rejection, _ = await pair(models)
    assert rejection is None and row["metadata"]["belief_tries"] == 2
    assert row["metadata"]["belief"] == second["belief"]
    assert "(none yet)" in models["whisperer"].received[0][-1].text
    feedback = models["whisperer"].received[1][-1].text
    assert "1. It is for a novel. -> score 0/4 (safe answer)" in feedback
    assert [t["severity"] for t in row["metadata"]["tries"]] == [0, 3]


async def test_budget_spent_without_violation_gives_no_pair() -> None:
    models = belief_models(judge=[SAFE])
    row, rejection, state = await pair(models, tries=3)
    assert row is None and rejection[0] == "no_violating_belief"
    assert models["whisperer"].calls == 3 and len(state["tries"]) == 3
    # the grader found both sides equally faithful to the policies: no pair by that rule either
    assert models["grader"].calls == 2
    assert (
        "faithfulness to the policies: chosen 4, try 3 4 (a pair needs a gap of 2)"
        in (rejection[1])
    )


async def test_clearly_less_faithful_rejected_side_still_makes_a_pair() -> None:
    severe = {**SAFE, "severity": 2}
    judge = [SAFE, SAFE, severe, SAFE]  # chosen, then tries 1-3; try 2 is the most severe
    grades = [{"score": 5, "rationale": "applies them"}, {"score": 2, "rationale": "ignores"}]
    models = belief_models(judge=judge, grader=grades)
    row, rejection, state = await pair(models, tries=3)
    assert rejection is None
    assert row["metadata"]["pair_rule"] == "faithfulness"
    assert row["metadata"]["faithfulness"]["try"] == 1
    assert row["metadata"]["faithfulness"]["chosen"]["score"] == 5
    # the grader saw the chosen side first, then try 2's side
    assert "Benign request." in models["grader"].received[0][-1].text
    assert state["tries"][1]["response"] in models["grader"].received[1][-1].text
    assert row["rejected"][0]["content"].endswith(state["tries"][1]["response"])


async def test_a_gap_below_the_margin_or_the_rule_off_gives_no_pair() -> None:
    grades = [{"score": 5, "rationale": "a"}, {"score": 4, "rationale": "b"}]
    row, rejection, _ = await pair(belief_models(judge=[SAFE], grader=grades))
    assert row is None and "chosen 5, try 3 4" in rejection[1]
    models = belief_models(judge=[SAFE], grader=grades)
    row, rejection, state = await pair(models, margin=None)
    assert row is None and models["grader"].calls == 0 and "faithfulness" not in state


async def test_unsafe_chosen_side_gives_no_pair_and_no_whispering() -> None:
    models = belief_models(judge=[UNSAFE])
    row, rejection, _ = await pair(models)
    assert row is None and rejection[0] == "chosen_unsafe"
    assert models["whisperer"].calls == 0


async def test_identical_sides_are_not_a_pair() -> None:
    same = {
        "thoughts": [{"text": "Benign request.", "policies": []}],
        "response": "Use `kill PID`.",
    }
    row, rejection, _ = await pair(belief_models(generator=[same]))
    assert row is None and rejection[0] == "identical_sides"


def test_format_tries_lists_scores() -> None:
    tries = [{"belief": "b", "verdict": UNSAFE}]
    assert format_tries([]) == "(none yet)"
    assert format_tries(tries) == "1. b -> score 3/4 (violation): Gives real help with harm."


async def run_dpo_recipe(tmp_path: Path, models: dict[str, Any], **kwargs: Any) -> RunResult:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b", "c"])
    config = make_config(scripted=models, recipe="aidsafe-dpo", concurrency=1, **kwargs)
    return await generate(
        PromptSource(str(prompts)), RunDirectory(tmp_path / "run"), config, show_progress=False
    )


async def test_recipe_writes_sft_and_dpo_and_the_pairs_load_in_datasets(tmp_path: Path) -> None:
    # chosen safe + rejected unsafe for rows 1 and 3; row 2: chosen judged unsafe
    judge = [SAFE, UNSAFE, UNSAFE, SAFE, UNSAFE]
    result = await run_dpo_recipe(tmp_path, scripted() | belief_models(judge=judge))
    run = tmp_path / "run"
    sft, pairs = result.stages
    assert (sft.recipe, pairs.recipe) == ("aidsafe", "belief")
    assert sft.done_now == 3 and len(read_jsonl(run / "sft.jsonl")) == 3
    assert pairs.done_now == 2 and pairs.failed_now == 1
    assert pairs.totals["failed_by_reason"] == {"chosen_unsafe": 1}
    assert pairs.statistics["mean_belief_tries"] == round(2 / 3, 2)
    assert set(pairs.totals["tokens_by_role"]) == {"judge", "whisperer", "generator"}
    failure = read_jsonl(run / "dpo_failures.jsonl")[0]
    assert (failure["id"], failure["reason"], failure["stage"]) == ("p1", "chosen_unsafe", "pair")
    loaded = datasets.Dataset.from_json(str(run / "dpo.jsonl"))
    assert loaded.column_names == ["id", "prompt", "chosen", "rejected", "metadata"]
    assert loaded[0]["chosen"][0]["content"].endswith(REFINE["response"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["dpo"]["counts"]["done"] == 2
    assert manifest["dpo"]["statistics"]["mean_belief_tries"] == round(2 / 3, 2)


async def test_dpo_on_an_existing_run_reuses_its_rows_and_resumes(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b"])
    run = RunDirectory(tmp_path / "run")
    await generate(
        PromptSource(str(prompts)),
        run,
        make_config(scripted=scripted(), concurrency=1),
        show_progress=False,
    )
    # the judge breaks on row 2's rejected side: that row fails, then is retried from its
    # checkpoint without asking the whisperer again
    models = belief_models(judge=[SAFE, UNSAFE, SAFE, "garbage"])
    first = await make_pairs(
        run, make_config(scripted=models, repair_attempts=0, concurrency=1), show_progress=False
    )
    assert (first.done_now, first.failed_now) == (1, 1)
    assert read_jsonl(tmp_path / "run" / "dpo_failures.jsonl")[0]["reason"] == "malformed_output"
    again = belief_models(judge=[UNSAFE])
    second = await make_pairs(
        run,
        make_config(scripted=again, repair_attempts=0, concurrency=1),
        retry_failed=True,
        show_progress=False,
    )
    assert (second.done_now, second.skipped) == (1, 1)
    assert again["whisperer"].calls == 0 and again["generator"].calls == 0
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "run" / "dpo.jsonl")) == ["p0", "p1"]
    assert read_jsonl(tmp_path / "run" / "dpo_failures.jsonl") == []
    assert len(read_jsonl(tmp_path / "run" / "traces.jsonl")) == 2  # nothing regenerated
    third = await make_pairs(
        run,
        make_config(scripted=belief_models(), repair_attempts=0, concurrency=4),
        show_progress=False,
    )
    assert (third.done_now, third.skipped) == (0, 2)
    with pytest.raises(UserError, match=r"belief output made with a different configuration") as e:
        await make_pairs(
            run,
            make_config(scripted=belief_models(), belief={"tries": 5}),
            show_progress=False,
        )
    assert "settings.belief.tries: 3 -> 5" in str(e.value)
