"""`generate --select N`: a balanced, reproducible subset of a run's SFT rows."""

from pathlib import Path
from typing import Any

from aidsafe.inputs import PromptSource
from aidsafe.models.scripted import ScriptedChatModel
from aidsafe.run.directory import SFT_SELECTED, RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.run.select import select_subset
from tests.conftest import DRAFT, SAFE, make_config, read_jsonl, write_prompts


async def test_select_writes_a_balanced_reproducible_subset(tmp_path: Path) -> None:
    source = PromptSource(str(write_prompts(tmp_path / "p.jsonl", ["q0", "q1", "q2"])))
    models = {
        "target": ScriptedChatModel(["answer"], repeat_last=True),
        "judge": ScriptedChatModel([SAFE], repeat_last=True),
        "corrector": ScriptedChatModel([DRAFT], repeat_last=True),
    }
    config = make_config(
        scripted=models, recipe="unsafechain", concurrency=1, unsafechain={"samples": 3}
    )
    result = await generate(
        source, RunDirectory(tmp_path / "run"), config, show_progress=False, select=4
    )
    rows = read_jsonl(tmp_path / "run" / "sft.jsonl")
    selected = read_jsonl(tmp_path / "run" / SFT_SELECTED)
    assert len(rows) == 9 and len(selected) == 4
    assert result.selected == (4, str(tmp_path / "run" / "sft_selected.jsonl"))
    # the rule depends on the rows, not on their order
    again = select_subset(list(reversed(rows)), 4)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in selected)


def test_selection_trims_the_largest_buckets_first() -> None:
    def row(i: int, source: str, policy: str | None) -> dict[str, Any]:
        replaced = {"verdict": {"violated": [policy]}} if policy else None
        meta = {"source": source, "recipe": "unsafechain", "replaced": replaced}
        return {"id": f"r{i}", "metadata": meta}

    def bucket(r: dict[str, Any]) -> tuple[str, str]:
        replaced = r["metadata"]["replaced"]
        return r["metadata"]["source"], replaced["verdict"]["violated"][0] if replaced else "none"

    rows = [row(i, "original", None) for i in range(6)]
    rows += [row(10 + i, "corrected", "fraud") for i in range(3)]
    rows += [row(20, "corrected", "harm")]
    buckets = [bucket(r) for r in select_subset(rows, 5)]
    assert buckets.count(("original", "none")) == 2
    assert buckets.count(("corrected", "fraud")) == 2
    assert buckets.count(("corrected", "harm")) == 1


def test_the_heap_trims_as_one_removal_at_a_time_would() -> None:
    import hashlib
    import random

    from aidsafe.run.select import balanced_subset

    def one_at_a_time(items: list[tuple[str, str, int]], n: int) -> list[tuple[str, str, int]]:
        # the rule as stated: find the largest bucket (first in sort order), drop its last item
        buckets: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
        for item in items:
            buckets.setdefault(item[:2], []).append(item)
        for members in buckets.values():
            members.sort(key=lambda i: hashlib.sha256(f"7:{i[2]}".encode()).hexdigest())
        while sum(len(m) for m in buckets.values()) > n:
            key = max(sorted(buckets), key=lambda k: len(buckets[k]))
            buckets[key].pop()
        kept = {item for members in buckets.values() for item in members}
        return [item for item in items if item in kept]

    chance = random.Random(3)
    items = [(chance.choice("abc"), chance.choice("xyz"), i) for i in range(300)]
    for n in (0, 1, 17, 100, 299, 300, 400):
        picked = balanced_subset(items, n, lambda i: i[:2], lambda i: str(i[2]), seed=7)
        assert picked == one_at_a_time(items, n)
