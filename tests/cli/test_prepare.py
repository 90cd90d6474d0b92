"""`aidsafe prepare` on the command line: the summary it prints, the files it writes, and bad
input ending in exit code 2 with one message naming the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_app import cli
from tests.conftest import read_jsonl, write_prompts


def test_prepare_writes_the_pool_and_the_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = write_prompts(tmp_path / "a.jsonl", ["How do I bake bread?", "Is the sky blue?"])
    second = write_prompts(tmp_path / "b.jsonl", ["how do i BAKE bread", "Name a bird."])
    code, out, err = cli(
        capsys, "prepare", str(first), f"extra={second}", "--out", str(tmp_path / "pool")
    )
    assert code == 0, err
    assert "a.jsonl │ 2 │ 2" in out and "extra │ 2 │ 1" in out and "all │ 4 │ 3" in out
    assert "dropped exact duplicate: 1" in out
    rows = read_jsonl(tmp_path / "pool" / "prompts.jsonl")
    assert [row["id"] for row in rows] == ["p0", "a.jsonl:p1", "extra:p1"]
    report = json.loads((tmp_path / "pool" / "report.json").read_text())
    assert [entry["duplicate_of"]["id"] for entry in report["dropped"]] == ["p0"]
    assert (tmp_path / "pool" / "report.html").exists()


def test_prepare_against_an_eval_set(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pool = write_prompts(tmp_path / "a.jsonl", ["Tell me: is the sky blue?", "Name a bird."])
    evals = tmp_path / "evals.csv"
    evals.write_text("question,label\nIs the sky blue?,safe\n", encoding="utf-8")
    code, out, err = cli(
        capsys, "prepare", str(pool), "--against", f"{evals}:question", "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    assert "dropped contaminated: 1" in out
    assert "evals.csv (1 items): 1 pool prompts matched" in out
    assert [row["prompt"] for row in read_jsonl(tmp_path / "o" / "prompts.jsonl")] == [
        "Name a bird."
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl"], "missing.jsonl: input file not found"),
        (
            ["p.jsonl", "--prompt-field", "text"],
            "p.jsonl: no prompt field 'text' (fields: prompt, id)",
        ),
        (["p.jsonl", "--near-threshold", "1.2"], "--near-threshold: expected a number in (0, 1]"),
        (["p.jsonl", "--shingle", "0"], "--shingle: expected a whole number of words >= 1"),
        (["p.jsonl", "--against", "gone.csv:prompt"], "gone.csv: input file not found"),
        (
            ["p.jsonl", "--against", "p.jsonl:text"],
            "p.jsonl: no prompt field 'text' (fields: prompt, id); pick one with --against "
            "p.jsonl:FIELD",
        ),
        (
            ["p.jsonl", "--against", "p.jsonl", "--against-threshold", "0"],
            "--against-threshold: expected a number in (0, 1], got 0.0",
        ),
        (
            ["p.jsonl", "--category-field", "kind"],
            "p.jsonl: no field 'kind' (fields: prompt, id); pick one with --category-field",
        ),
        (
            ["p.jsonl", "--category-field", "other=kind"],
            "--category-field other=kind: expected SOURCE=FIELD with SOURCE one of p.jsonl",
        ),
        (
            ["p.jsonl", "--category-field", "a", "--category-field", "b"],
            "--category-field b: a field for every input is given twice",
        ),
        (["p.jsonl", "--embedding-dedup"], "--embedding-dedup needs --embeddings-url"),
        (
            ["p.jsonl", "--category-field", "p.jsonl=a", "--category-field", "p.jsonl=b"],
            "--category-field p.jsonl=b: p.jsonl is given a field twice",
        ),
    ],
)
def test_bad_input_exits_2_naming_the_file_and_field(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    write_prompts(tmp_path / "p.jsonl", ["Hello"])
    code, _, err = cli(capsys, "prepare", *args, "--out", "pool")
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "pool").exists()


def test_prepare_selects_a_balanced_subset(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rows = [
        {"prompt": f"Tell me about {animal}.", "kind": kind}
        for animal, kind in [
            ("cats", "pets"),
            ("dogs", "pets"),
            ("owls", "birds"),
            ("hens", "birds"),
            ("eels", "fish"),
        ]
    ]
    pool = tmp_path / "p.jsonl"
    pool.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    args = ["prepare", str(pool), "--category-field", "kind", "--select", "3", "--seed", "4"]
    code, out, err = cli(capsys, *args, "--near-threshold", "1", "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "p.jsonl / pets │ 2 │ 1" in out and "p.jsonl / fish │ 1 │ 1" in out
    assert "dropped not selected: 2" in out
    kept = read_jsonl(tmp_path / "o" / "prompts.jsonl")
    assert sorted(row["metadata"]["categories"][0] for row in kept) == ["birds", "fish", "pets"]


def test_prepare_classify_on_the_stub_and_its_options(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import yaml

    from aidsafe.testing import StubOpenAIServer

    prompts = write_prompts(tmp_path / "p.jsonl", ["how to sharpen a knife", "a cake recipe"])
    code, _, err = cli(
        capsys, "prepare", str(prompts), "--out", str(tmp_path / "a"), "--policies", "default"
    )
    assert code == 2 and "--config and --policies of prepare need --classify or --contrast" in err
    with StubOpenAIServer(
        answers={"PolicyTags": {"policies": ["physical_harm"], "rationale": "r"}}
    ) as stub:
        model = {"backend": "openai", "base_url": stub.base_url, "model": "stub"}
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"models": {"classifier": model}}))
        code, out, _ = cli(
            capsys,
            "prepare",
            str(prompts),
            "--out",
            str(tmp_path / "b"),
            "--classify",
            "--config",
            str(config),
            "-q",
        )
    assert code == 0 and "policy tags (before selection): physical_harm 2" in out
    rows = read_jsonl(tmp_path / "b" / "prompts.jsonl")
    assert [row["metadata"]["policies"] for row in rows] == [["physical_harm"], ["physical_harm"]]


def test_each_source_names_its_own_category_field(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Public sets name categories differently (BeaverTails a mapping under `category`, XSTest
    text under `type`); a third source has none. Each pass shows a progress line on stderr."""
    beaver = tmp_path / "beaver.jsonl"
    rows = [{"prompt": "How do I pick a lock?", "category": {"theft": True, "violence": False}}]
    beaver.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    xstest = tmp_path / "xstest.csv"
    xstest.write_text("prompt,type\nHow do I kill a Python process?,homonyms\n", encoding="utf-8")
    plain = write_prompts(tmp_path / "plain.jsonl", ["Name a bird."])
    against = write_prompts(tmp_path / "eval.jsonl", ["What is the capital of France?"])
    code, _out, err = cli(
        capsys,
        "prepare",
        f"beaver={beaver}",
        f"xstest={xstest}",
        str(plain),
        "--category-field",
        "beaver=category",
        "--category-field",
        "xstest=type",
        "--against",
        str(against),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 0, err
    kept = {row["metadata"]["source"]: row for row in read_jsonl(tmp_path / "o" / "prompts.jsonl")}
    assert kept["beaver"]["metadata"]["categories"] == ["theft"]
    assert kept["xstest"]["metadata"]["categories"] == ["homonyms"]
    assert kept["plain.jsonl"]["metadata"]["categories"] == []
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["settings"]["category_field"] == {"beaver": "category", "xstest": "type"}
    assert "dedup pool" in err and "3/3" in err
    assert "decontaminate pool: n-grams, MinHash" in err
