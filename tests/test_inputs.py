import csv
import json
from pathlib import Path

import datasets
import pytest

from aidsafe.errors import UserError
from aidsafe.inputs import PromptSource, content_id

ROWS = [{"id": "a", "prompt": "first"}, {"id": "b", "prompt": "second"}]


def jsonl(path: Path, rows: list[dict]) -> str:  # type: ignore[type-arg]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_with_ids(tmp_path: Path) -> None:
    source = PromptSource(jsonl(tmp_path / "p.jsonl", ROWS))
    assert source.check() == 2
    assert [(r.id, r.prompt) for r in source] == [("a", "first"), ("b", "second")]
    assert all(r.has_id for r in source)
    assert source.describe() == {"kind": "jsonl", "split": "train"}  # no path: content counts


def test_ids_are_content_hashes_without_an_id_column(tmp_path: Path) -> None:
    source = PromptSource(jsonl(tmp_path / "p.jsonl", [{"text": "hello"}]), prompt_field="text")
    assert [r.id for r in source] == [content_id("hello")]
    assert [r.has_id for r in source] == [False]
    assert len(content_id("hello")) == 16


def test_csv_and_parquet_and_saved_dataset_and_dataset_folder(tmp_path: Path) -> None:
    with (tmp_path / "p.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "prompt"])
        writer.writeheader()
        writer.writerows(ROWS)
    dataset = datasets.Dataset.from_list(ROWS)
    dataset.to_parquet(str(tmp_path / "p.parquet"))
    dataset.save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "hubstyle").mkdir()
    dataset.to_json(str(tmp_path / "hubstyle" / "train.jsonl"))
    for spec in ("p.csv", "p.parquet", "saved", "hubstyle"):
        source = PromptSource(str(tmp_path / spec))
        assert source.check() == 2, spec
        assert [r.prompt for r in source] == ["first", "second"], spec


def test_bad_prompts_become_problems_not_crashes(tmp_path: Path) -> None:
    rows = [{"prompt": ""}, {"prompt": 42}, {"other": "x"}, {"prompt": "ok"}]
    rows_read = list(PromptSource(jsonl(tmp_path / "p.jsonl", rows)))
    assert [r.prompt for r in rows_read] == [None, None, None, "ok"]
    assert "line 1: field 'prompt' is empty" in (rows_read[0].problem or "")
    assert "is a int, not text" in (rows_read[1].problem or "")
    assert "is missing" in (rows_read[2].problem or "")
    assert rows_read[0].id == "row-0"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text('{"prompt": "a"}\n{broken\n'), "p.jsonl: line 2: not valid JSON"),
        (lambda p: p.write_text('["a list"]\n'), "line 1: expected a JSON object"),
        (lambda p: p.write_text('{"text": "a"}\n'), "no prompt field 'prompt' (fields: text)"),
        (lambda p: p.write_text(""), "holds no rows"),
    ],
)
def test_bad_input_files_give_clear_errors(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "p.jsonl"
    make(path)
    with pytest.raises(UserError) as caught:
        PromptSource(str(path)).check()
    assert message in str(caught.value)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="input file not found"):
        PromptSource(str(tmp_path / "nope.jsonl"))
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(UserError, match=r"unsupported input format \.txt"):
        PromptSource(str(tmp_path / "p.txt"))


def test_missing_csv_column_lists_the_columns(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text("question,id\nhi,1\n")
    with pytest.raises(UserError, match="no prompt field 'prompt' \\(fields: question, id\\)"):
        PromptSource(str(tmp_path / "p.csv")).check()
    assert [r.prompt for r in PromptSource(str(tmp_path / "p.csv"), prompt_field="question")] == [
        "hi"
    ]


def test_explicit_id_field_must_exist(tmp_path: Path) -> None:
    source = PromptSource(jsonl(tmp_path / "p.jsonl", ROWS), id_field="uid", id_field_required=True)
    with pytest.raises(UserError, match="no id field 'uid'"):
        source.check()


def test_unknown_hub_dataset_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="no-such-org/no-such-dataset: cannot load dataset"):
        PromptSource("no-such-org/no-such-dataset").check()


def test_text_and_extra_fields_travel_with_each_row(tmp_path: Path) -> None:
    rows = [
        {"id": "a", "prompt": "p", "response": "r", "group": 1},
        {"id": "b", "prompt": "p", "response": "", "group": 2},
    ]
    source = PromptSource(
        jsonl(tmp_path / "p.jsonl", rows),
        text_fields={"response": "--response-field"},
        extra_fields=("group",),
    )
    assert source.check() == 2
    first, second = list(source)
    assert first.fields == {"response": "r", "group": 1} and first.problem is None
    assert second.prompt is None and "field 'response' is empty" in (second.problem or "")
    assert second.id == "b" and second.has_id
    missing = PromptSource(
        jsonl(tmp_path / "q.jsonl", [{"prompt": "p"}]), text_fields={"answer": "--response-field"}
    )
    with pytest.raises(UserError, match=r"no field 'answer' .*pick one with --response-field"):
        missing.check()
