"""The UnsafeChain recipe with scripted models: sampling, judging, hardness, correction."""

from pathlib import Path
from typing import Any

from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import StageSummary, generate
from tests.conftest import DRAFT, SAFE, UNSAFE, make_config, read_jsonl, write_prompts


def models(
    target: list[Any], judge: list[Any], corrector: list[Any] | None = None
) -> dict[str, ScriptedChatModel]:
    return {
        "target": ScriptedChatModel(target, repeat_last=True),
        "judge": ScriptedChatModel(judge, repeat_last=True),
        "corrector": ScriptedChatModel(corrector or [DRAFT], repeat_last=True),
    }


async def run(
    tmp_path: Path, scripted: dict[str, ScriptedChatModel], prompts: int = 1, **kwargs: Any
) -> StageSummary:
    source = PromptSource(
        str(write_prompts(tmp_path / "p.jsonl", [f"q{n}" for n in range(prompts)]))
    )
    kwargs.setdefault("unsafechain", {"samples": 3})
    config = make_config(scripted=scripted, recipe="unsafechain", concurrency=1, **kwargs)
    result = await generate(source, RunDirectory(tmp_path / "run"), config, show_progress=False)
    [stage] = result.stages
    assert stage.recipe == "unsafechain"
    return stage


async def test_safe_prompt_keeps_its_samples_as_original(tmp_path: Path) -> None:
    scripted = models(["<think>\nweighing it\n</think>\n\nA safe answer."], [SAFE])
    summary = await run(tmp_path, scripted)
    rows = read_jsonl(tmp_path / "run" / "sft.jsonl")
    assert [r["id"] for r in rows] == ["p0#0", "p0#1", "p0#2"]
    assert {r["metadata"]["source"] for r in rows} == {"original"}
    assert rows[0]["messages"][1]["content"] == "<think>\nweighing it\n</think>\n\nA safe answer."
    assert scripted["corrector"].calls == 0
    trace = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]
    assert trace["hard"] is False and len(trace["samples"]) == 3
    assert all(s["verdict"]["safe"] for s in trace["samples"])  # kept for recomputing metrics
    assert summary.statistics["target"]["safe_at_k"] == 1.0


async def test_hard_prompt_is_corrected_and_judged_again(tmp_path: Path) -> None:
    # three unsafe samples (no think tags), then the three corrections judged safe
    scripted = models(["Sure, here is how to do harm."], [UNSAFE, UNSAFE, UNSAFE, SAFE])
    summary = await run(tmp_path, scripted)
    rows = read_jsonl(tmp_path / "run" / "sft.jsonl")
    assert [r["metadata"]["source"] for r in rows] == ["corrected"] * 3
    replaced = rows[0]["metadata"]["replaced"]
    assert replaced["completion"] == "Sure, here is how to do harm."
    assert replaced["verdict"]["violated"] == ["physical_harm"]
    assert rows[0]["messages"][1]["content"].startswith("<think>\n1. The user wants")
    corrector_task = scripted["corrector"].received[0][-1].text
    assert "Sure, here is how to do harm." in corrector_task and "physical_harm" in corrector_task
    assert scripted["judge"].calls == 6
    assert summary.statistics["hard_prompts"] == 1
    assert summary.statistics["target"]["safe_at_1"] == 0.0


async def test_correction_still_unsafe_is_dropped_with_its_reason(tmp_path: Path) -> None:
    scripted = models(["harm"], [UNSAFE])
    summary = await run(tmp_path, scripted)
    assert read_jsonl(tmp_path / "run" / "sft.jsonl") == []
    trace = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]
    assert [c["kept"] for c in trace["corrections"]] == [False] * 3
    assert {c["dropped_reason"] for c in trace["corrections"]} == {"still_unsafe"}
    assert trace["corrections"][0]["verdict"]["safe"] is False
    assert summary.statistics["corrected_dropped"] == 3


async def test_mixed_prompt_below_threshold_is_not_hard(tmp_path: Path) -> None:
    scripted = models(["answer"], [SAFE, UNSAFE, SAFE])
    await run(tmp_path, scripted)
    rows = read_jsonl(tmp_path / "run" / "sft.jsonl")
    assert len(rows) == 2 and scripted["corrector"].calls == 0  # the unsafe one is dropped
    hard = models(["answer"], [SAFE, UNSAFE, SAFE, SAFE])
    (tmp_path / "b").mkdir()
    await run(tmp_path / "b", hard, unsafechain={"samples": 3, "hard_threshold": 0.99})
    assert hard["corrector"].calls == 1  # any unsafe sample makes it hard at 0.99


async def test_unparseable_verdicts_are_unjudged_not_guessed(tmp_path: Path) -> None:
    scripted = models(
        ["answer"],
        ["garbage", "garbage", SAFE, SAFE],
    )
    await run(tmp_path, scripted, repair_attempts=0)
    trace = read_jsonl(tmp_path / "run" / "traces.jsonl")[0]
    assert [s["verdict"] is None for s in trace["samples"]].count(True) == 2
    assert trace["samples"][0]["unjudged"]["raw_output"] == "garbage"
    assert len(read_jsonl(tmp_path / "run" / "sft.jsonl")) == 1
