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


def test_lone_surrogates_make_the_row_unusable_not_a_crash(tmp_path: Path) -> None:
    # valid JSON, but "\ud800" decodes to a lone surrogate that no UTF-8 file can hold
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "ab\\ud800", "response": "r", "group": 1}\n'
        '{"id": "b", "prompt": "fine", "response": "\\udfff", "group": 2}\n'
        '{"id": "c\\ud800", "prompt": "fine", "response": "r", "group": 3}\n'
        '{"id": "d", "prompt": "fine", "response": "r", "group": ["\\ud800"]}\n'
        '{"id": "e", "prompt": "fine", "response": "r", "group": 5}\n'
    )
    source = PromptSource(
        str(path), text_fields={"response": "--response-field"}, extra_fields=("group",)
    )
    assert source.check() == 5
    rows = list(source)
    assert [r.prompt for r in rows] == [None, None, None, None, "fine"]
    problems = [r.problem or "" for r in rows]
    assert (
        "line 1: field 'prompt' holds a lone UTF-16 surrogate (\\ud800 at character 3)"
        in (problems[0])
    )
    assert "line 2: field 'response' holds a lone UTF-16 surrogate" in problems[1]
    assert "line 3: field 'id' holds a lone UTF-16 surrogate" in problems[2]
    assert "line 4: field 'group' holds a lone UTF-16 surrogate" in problems[3]
    assert rows[2].id == "c\\ud800" and rows[1].fields["response"] == "\\udfff"
    for row in rows:  # what a failure row records can be written as UTF-8
        json.dumps([row.id, row.problem, row.fields], ensure_ascii=False).encode("utf-8")


async def test_a_lone_surrogate_is_an_invalid_prompt_failure_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    from aidsafe.run.directory import RunDirectory
    from aidsafe.run.pipeline import generate
    from tests.conftest import make_config, read_jsonl, scripted

    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "bad", "prompt": "x\\ud800"}\n{"id": "ok", "prompt": "fine"}\n')
    config = make_config(scripted=scripted(), concurrency=1)
    result = await generate(
        PromptSource(str(path)), RunDirectory(tmp_path / "run"), config, show_progress=False
    )
    assert (result.stages[0].done_now, result.stages[0].failed_now) == (1, 1)
    (failure,) = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert (failure["id"], failure["reason"]) == ("bad", "invalid_prompt")
    assert "line 1: field 'prompt' holds a lone UTF-16 surrogate" in failure["detail"]


def test_a_json_file_may_hold_one_array_of_objects(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(ROWS, indent=2))
    source = PromptSource(str(tmp_path / "p.json"))
    assert source.check() == 2
    assert [(r.id, r.prompt) for r in source] == [("a", "first"), ("b", "second")]
    assert source.describe() == {"kind": "jsonl", "split": "train"}  # as before: fingerprints hold
    lines = PromptSource(jsonl(tmp_path / "q.json", ROWS))  # JSON lines in a .json file
    assert [r.prompt for r in lines] == ["first", "second"]
    (tmp_path / "r.json").write_text('  \n[{"prompt": "a"}, {"prompt": ""}]')
    assert [r.problem for r in PromptSource(str(tmp_path / "r.json"))] == [
        None,
        "element 2: field 'prompt' is empty",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[{"prompt": "a"}, "b"]',
            "p.json: element 2 of the array: expected a JSON object, got str",
        ),
        ('[{"prompt": "a"},\n {"prompt": }]', "p.json: line 2: not valid JSON"),
        ("[]", "p.json: the input holds no rows"),
    ],
)
def test_bad_json_arrays_give_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(UserError) as caught:
        PromptSource(str(tmp_path / "p.json")).check()
    assert message in str(caught.value)


@pytest.mark.parametrize("name", ["p.jsonl", "p.json", "a.json", "p.csv"])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path, name: str) -> None:
    texts = {
        "p.jsonl": "".join(json.dumps(r) + "\n" for r in ROWS),
        "p.json": "".join(json.dumps(r) + "\n" for r in ROWS),
        "a.json": json.dumps(ROWS),
        "p.csv": "id,prompt\r\na,first\r\nb,second\r\n",
    }
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + texts[name].encode())
    source = PromptSource(str(tmp_path / name))
    assert source.check() == 2
    assert [(r.id, r.prompt) for r in source] == [("a", "first"), ("b", "second")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.csv", "id,prompt\n1,caf\xe9\n".encode("latin-1"), "p.csv: line 2: not UTF-8 text"),
        ("p.csv", "caf\xe9,prompt\n1,x\n".encode("latin-1"), "p.csv: line 1: not UTF-8 text"),
        ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', "p.jsonl: line 2: not UTF-8"),
        ("p.json", b'[{"prompt": "caf\xe9"}]', "p.json: line 1: not UTF-8 text (byte 0xE9)"),
        ("p.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "p.jsonl: line 1: not UTF-8"),
        ("p.parquet", b"PAR1 this is not parquet", "p.parquet: not a readable Parquet file"),
        ("p.csv", b"id,prompt\n1,a\n2," + b"x" * 200_000, "p.csv: line 3: not valid CSV"),
    ],
)
def test_unreadable_files_are_one_error_naming_the_file(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError) as caught:
        PromptSource(str(tmp_path / name)).check()
    assert message in str(caught.value)


def test_a_corrupt_parquet_body_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    datasets.Dataset.from_list([{"prompt": f"prompt {i}" * 50} for i in range(2000)]).to_parquet(
        str(path)
    )
    data = bytearray(path.read_bytes())
    data[100:-2000] = b"\xff" * (len(data) - 2100)  # the pages are garbage, the footer intact
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"p\.parquet: not a readable Parquet file"):
        PromptSource(str(path)).check()
