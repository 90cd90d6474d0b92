"""The command line: real runs against a loopback OpenAI-compatible stub, and every bad-input
path ending in exit code 2 with one readable message."""

import json
import os
import socket
import sys
from pathlib import Path

import datasets
import pytest

from aidsafe.cli import main, render
from aidsafe.recipes import registry
from aidsafe.testing import StubOpenAIServer
from tests.conftest import read_jsonl, write_prompts

ROOT = Path(__file__).parent.parent.parent
EXAMPLES = ROOT / "examples"


def cli(capsys: pytest.CaptureFixture[str], *args: str, raw: bool = False) -> tuple[int, str, str]:
    """Run the CLI in process; output is whitespace-normalised unless `raw`."""
    old = sys.argv
    sys.argv = ["aidsafe", *args]
    try:
        main()
        code = 0
    except SystemExit as exit:
        code = int(exit.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    if raw:
        return code, captured.out, captured.err
    return code, " ".join(captured.out.split()), " ".join(captured.err.split())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_prompts(tmp_path / "p.jsonl", ["How do I kill a process?", "Hello"])


@pytest.mark.parametrize("method", ["function_calling", "json_schema"])
def test_generate_against_an_openai_compatible_endpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompts: Path, method: str
) -> None:
    with StubOpenAIServer(fail_first=2) as stub:  # two 503s: retried, never fatal
        config = tmp_path / "c.yaml"
        config.write_text(
            f"models:\n  default:\n    backend: openai\n    base_url: {stub.base_url}\n"
            f"    model: stub\n    structured_output: {method}\n    retry_wait: 0\n"
        )
        code, out, err = cli(
            capsys,
            "generate",
            str(prompts),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(config),
            "--quiet",
        )
        assert code == 0, err
        assert "done / failed this run │ 2 / 0" in out
        request = stub.requests[-1]
        assert ("tools" in request) == (method == "function_calling")
    traces = read_jsonl(tmp_path / "run" / "traces.jsonl")
    host = stub.base_url.removeprefix("http://").removesuffix("/v1")  # never the URL's path
    assert len(traces) == 2 and traces[0]["models"]["drafter"]["host"] == host
    assert "base_url" not in traces[0]["models"]["drafter"]
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert "OPENAI_API_KEY" not in manifest and "api_key" not in manifest


def test_flags_alone_point_every_role_at_an_endpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompts: Path
) -> None:
    with StubOpenAIServer() as stub:
        code, _, err = cli(
            capsys,
            "generate",
            str(prompts),
            "--out",
            str(tmp_path / "run"),
            "--base-url",
            stub.base_url,
            "--model",
            "stub",
            "--quiet",
            "--limit",
            "1",
        )
    assert code == 0, err
    assert len(read_jsonl(tmp_path / "run" / "sft.jsonl")) == 1


def test_unreachable_endpoint_is_reported_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompts: Path
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    code, _, err = cli(
        capsys,
        "generate",
        str(prompts),
        "--out",
        str(tmp_path / "run"),
        "--base-url",
        url,
        "--model",
        "m",
    )
    assert code == 2
    assert f"models.decomposer.base_url: endpoint {url} is unreachable" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["generate", "{tmp}/missing.jsonl"], "missing.jsonl: input file not found"),
        (
            "rows",
            ["generate", "{tmp}/p.jsonl", "--prompt-field", "question"],
            "no prompt field 'question' (fields: prompt, id)",
        ),
        ("bad_json", ["generate", "{tmp}/p.jsonl"], "p.jsonl: line 2: not valid JSON"),
        (
            "rows",
            ["generate", "{tmp}/p.jsonl", "--policies", "{tmp}/pol.yaml"],
            "pol.yaml: policies[0].title: Field required",
        ),
        (
            "rows",
            ["generate", "{tmp}/p.jsonl", "--config", "{tmp}/c.yaml"],
            "c.yaml: concurency: unknown key",
        ),
        (None, ["policies", "validate", "{tmp}/none.yaml"], "none.yaml: policy file not found"),
        (None, ["export", "{tmp}"], "no sft.jsonl here"),
        ("rows", ["generate", "{tmp}/p.jsonl", "--engine", "spark"], "--engine: expected local"),
        ("rows", ["generate", "{tmp}/p.jsonl", "--workers", "2"], "need --engine ray"),
        (
            "rows",
            ["judge", "{tmp}/p.jsonl", "-o", "{tmp}/j", "--workers", "2"],
            "need --engine ray",
        ),
        (
            "rows",
            ["judge", "{tmp}/p.jsonl", "-o", "{tmp}/j", "--engine", "spark"],
            "expected local",
        ),
        (
            "rows",
            # a dataset whose fields check out, graded with a Ray flag but no --engine ray
            [
                "grade",
                "{tmp}/p.jsonl",
                "-o",
                "{tmp}/g",
                "--cot-field",
                "id",
                "--response-field",
                "prompt",
                "--workers",
                "2",
            ],
            "need --engine ray",
        ),
        (
            "rows",
            ["generate", "{tmp}/p.jsonl", "--engine", "ray", "--ray-address", "127.0.0.1:9"],
            "--ray-address 127.0.0.1:9: nothing answers at 127.0.0.1:9",
        ),
        (
            "rows",
            ["generate", "{tmp}/p.jsonl", "--engine", "ray", "--ray-address", "headnode"],
            "expected auto, host:port or ray://host:port",
        ),
        (
            "rows",
            ["generate", "{tmp}/p.jsonl", "--config", "{tmp}/v.yaml"],
            "v.yaml: models.default.gpu_memory_utilization: Input should be less than or equal",
        ),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    setup: str | None,
    args: list[str],
    message: str,
) -> None:
    (tmp_path / "pol.yaml").write_text(
        "name: n\nversion: 1\ndescription: d\npolicies:\n  - id: a\n    description: x\n"
    )
    (tmp_path / "c.yaml").write_text("concurency: 3\n")
    (tmp_path / "v.yaml").write_text(
        "models:\n  default:\n    backend: vllm\n    gpu_memory_utilization: 2\n"
    )
    if setup == "rows":
        write_prompts(tmp_path / "p.jsonl", ["a"])
    if setup == "bad_json":
        (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{oops}\n')
    argv = [a.format(tmp=tmp_path) for a in args]
    if argv[0] == "generate":
        argv += ["--out", str(tmp_path / "run")]
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_policies_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "policies", "validate", str(EXAMPLES / "custom-policies.yaml"))
    assert code == 0 and "valid: kids-tutor version 0.3, 3 policies" in out
    code, out, _ = cli(capsys, "policies", "show", "default")
    assert code == 0 and "physical_harm" in out and "sha256" in out
    code, out, _ = cli(capsys, "policies", "show", "default", "--as-prompt")
    assert out.startswith("# Safety policies: aidsafe-default")


def test_graph_prints_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "graph")
    assert code == 0
    for edge in ("decompose_intents --> draft", "draft -.-> deliberate", "deliberate -.-> refine"):
        assert edge in out
    code, _, err = cli(capsys, "graph", "--which", "nope")
    assert code == 2 and "unknown recipe 'nope' (recipes: aidsafe, baseline" in err


def test_recipes_lists_recipes_chains_and_roles(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(render.out, "width", 400)  # one line per cell line
    code, out, _ = cli(capsys, "recipes")
    assert code == 0
    for expected in (
        "│ aidsafe │ SFT data",
        "deliberator_N (0.7): deliberation agents",
        "refiner (0): removes",
        "│ baseline │",
        "│ belief │ DPO pairs",
        "rows of aidsafe or baseline",
        "whisperer (0.9)",
        "│ unsafechain │",
        "corrector (0.3)",
        "│ aidsafe-dpo │ chain: aidsafe then belief │",
    ):
        assert expected in out


def test_config_command_shows_resolved_roles(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "config", "--config", str(EXAMPLES / "openai.yaml"))
    assert code == 0 and "resolved_models:" in out and "model: gpt-4.1" in out


@pytest.mark.parametrize("to", ["parquet", "hf", "jsonl"])
def test_export_formats_load_as_datasets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompts: Path, to: str
) -> None:
    with StubOpenAIServer() as stub:
        code, _, err = cli(
            capsys,
            "generate",
            str(prompts),
            "--out",
            str(tmp_path / "run"),
            "--base-url",
            stub.base_url,
            "--model",
            "stub",
            "--quiet",
        )
    assert code == 0, err
    target = tmp_path / f"export-{to}"
    code, out, _ = cli(capsys, "export", str(tmp_path / "run"), "--to", to, "--out", str(target))
    assert code == 0 and "Wrote 2 SFT rows" in out
    if to == "parquet":
        loaded = datasets.Dataset.from_parquet(str(target))
    elif to == "hf":
        loaded = datasets.load_from_disk(str(target))
    else:
        loaded = datasets.Dataset.from_json(str(target))
    assert loaded.column_names == ["id", "messages", "metadata"]
    assert loaded[0]["messages"][1]["content"].startswith("<think>\n")
    # provenance rides along in its own column, as the run wrote it
    written = {row["id"]: row["metadata"] for row in read_jsonl(tmp_path / "run" / "sft.jsonl")}
    metadata = loaded[0]["metadata"]
    assert metadata == written[loaded[0]["id"]]
    assert metadata["recipe"] == "aidsafe" and metadata["policy_set"] == "aidsafe-default"
    assert metadata["models"]["drafter"] == "stub"


@pytest.mark.parametrize(
    "name", ["openai.yaml", "vllm-serve.yaml", "llama-server.yaml", "unsafechain.yaml"]
)
def test_example_configs_are_valid(name: str) -> None:
    config = registry.load_config(EXAMPLES / name)
    roles = [role for step in registry.steps(config.recipe) for role in step.roles(config)]
    assert roles and {config.model_for(role).backend for role in roles} == {"openai"}


@pytest.mark.parametrize("which", ["aidsafe", "belief", "baseline", "unsafechain"])
def test_rendered_diagrams_match_the_graphs(capsys: pytest.CaptureFixture[str], which: str) -> None:
    code, current, _ = cli(capsys, "graph", "--which", which, raw=True)
    assert code == 0
    shipped = (ROOT / "graphs" / f"{which}.mmd").read_text()
    assert current == shipped, (
        f"graph changed: run `aidsafe graph --which {which} > graphs/{which}.mmd`"
    )


def test_dpo_recipe_and_dpo_command_over_http(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompts: Path
) -> None:
    run = tmp_path / "run"
    with StubOpenAIServer() as stub:
        flags = ["--base-url", stub.base_url, "--model", "stub", "--quiet"]
        code, out, err = cli(capsys, "generate", str(prompts), "--out", str(run), *flags)
        assert code == 0, err
        code, out, err = cli(capsys, "dpo", str(run), *flags)
        assert code == 0, err
        # the stub's judge finds every answer safe: no belief ever leads to a violation
        assert "recipe: belief" in out and "done / failed this run │ 0 / 2" in out
        assert "failed: no_violating_belief │ 2" in out and "mean belief tries │ 3.000" in out
        code, out, err = cli(
            capsys, "generate", str(prompts), "--out", str(run), "--recipe", "aidsafe-dpo", *flags
        )
        assert code == 0, err
        # both stages find their work done
        assert "recipe: aidsafe" in out and "recipe: belief" in out
        assert out.count("already finished earlier │ 2") == 2
        assert out.count("done / failed this run │ 0 / 0") == 2
    failures = read_jsonl(run / "dpo_failures.jsonl")
    assert [len(f["tries"]) for f in failures] == [3, 3]
    code, _, err = cli(capsys, "export", str(run), "--format", "dpo")
    assert code == 2 and "no DPO pairs yet (no dpo.jsonl)" in err


def test_dpo_command_needs_a_run_directory(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = cli(capsys, "dpo", str(tmp_path))
    assert code == 2 and "not a run directory (no manifest.json)" in err


def test_baseline_recipe_writes_the_same_formats(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompts: Path
) -> None:
    with StubOpenAIServer() as stub:
        code, _, err = cli(
            capsys,
            "generate",
            str(prompts),
            "--out",
            str(tmp_path / "run"),
            "--recipe",
            "baseline",
            "--base-url",
            stub.base_url,
            "--model",
            "stub",
            "--quiet",
        )
        assert code == 0, err
        assert len(stub.requests) == 2  # one call per prompt
    rows = read_jsonl(tmp_path / "run" / "sft.jsonl")
    assert len(rows) == 2 and rows[0]["metadata"]["recipe"] == "baseline"
    assert rows[0]["messages"][1]["content"].startswith("<think>\n1. ")


def test_judge_command_on_a_small_csv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    samples = tmp_path / "samples.csv"
    samples.write_text(
        "question,answer,prompt_id\n"
        "how to kill a process,Use kill.,1\n"
        "how to kill a process,<think>ok</think>Use kill -9.,1\n"
        "build a bomb,No.,2\n"
    )
    with StubOpenAIServer() as stub:
        args = [
            "judge",
            str(samples),
            "--out",
            str(tmp_path / "j"),
            "--prompt-field",
            "question",
            "--response-field",
            "answer",
            "--group-field",
            "prompt_id",
            "--base-url",
            stub.base_url,
            "--model",
            "judge",
            "--quiet",
        ]
        code, out, err = cli(capsys, *args)
        assert code == 0, err
    assert "overall │ 1.000 │ 1.000 │ 1.000 │ 2" in out  # the stub judge finds all safe
    assert "3 samples judged (K from 1 to 2 per prompt)" in out
    assert len(read_jsonl(tmp_path / "j" / "judgments.jsonl")) == 3
    summary = json.loads((tmp_path / "j" / "summary.json").read_text())
    assert summary["overall"]["safe_at_k"] == 1.0
    code, _, err = cli(capsys, "judge", str(samples), "--out", str(tmp_path / "k"))
    assert code == 2 and "no prompt field 'prompt'" in err
    code, _, err = cli(
        capsys, "judge", str(samples), "--out", str(tmp_path / "k"), "--prompt-field", "question"
    )
    assert code == 2 and "no field 'response'" in err and "--response-field" in err
    # without --prompt-field, the config's input.prompt_field names the column
    config = tmp_path / "c.yaml"
    config.write_text("input:\n  prompt_field: question\n")
    with StubOpenAIServer() as stub:
        code, out, err = cli(
            capsys,
            "judge",
            str(samples),
            "--out",
            str(tmp_path / "c"),
            "--config",
            str(config),
            "--response-field",
            "answer",
            "--base-url",
            stub.base_url,
            "--model",
            "judge",
            "--quiet",
        )
        assert code == 0, err
    assert "3 samples judged" in out
    judged = sorted(read_jsonl(tmp_path / "c" / "judgments.jsonl"), key=lambda j: j["index"])
    assert [j["prompt"] for j in judged] == ["how to kill a process"] * 2 + ["build a bomb"]


def test_unsafechain_recipe_over_http_with_selection(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompts: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("unsafechain:\n  samples: 3\n")
    run = tmp_path / "run"
    with StubOpenAIServer() as stub:
        code, out, err = cli(
            capsys,
            "generate",
            str(prompts),
            "--out",
            str(run),
            "--recipe",
            "unsafechain",
            "--config",
            str(config),
            "--base-url",
            stub.base_url,
            "--model",
            "stub",
            "--select",
            "4",
            "--quiet",
        )
        assert code == 0, err
        # the stub judge finds every answer safe: all 6 samples are kept as they are
        for metric in ("safe at 1", "cons safe at k", "safe at k"):
            assert f"target: {metric} │ 1.000" in out
        assert "target: samples judged │ 6" in out
        assert "original kept │ 6" in out and "Selected 4 rows" in out
        code, _, err = cli(capsys, "dpo", str(run), "--base-url", stub.base_url, "--model", "s")
        assert (
            code == 2
            and "belief takes the finished rows of a run of recipe aidsafe or baseline" in err
        )
        assert "this directory holds a run of recipe 'unsafechain'" in err
    rows = read_jsonl(run / "sft.jsonl")
    assert (
        len(rows) == 6 and rows[0]["messages"][1]["content"] == "<think>\n\n</think>\n\nstub answer"
    )
    assert len(read_jsonl(run / "sft_selected.jsonl")) == 4


def test_guard_judge_over_http(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    samples = tmp_path / "s.jsonl"
    samples.write_text('{"prompt": "p", "response": "r"}\n{"prompt": "p", "response": "r2"}\n')
    with StubOpenAIServer(plain_answer="\n\nunsafe\nS9") as stub:
        code, out, err = cli(
            capsys,
            "judge",
            str(samples),
            "--out",
            str(tmp_path / "j"),
            "--kind",
            "guard",
            "--base-url",
            stub.base_url,
            "--model",
            "guard",
            "--quiet",
        )
        assert code == 0, err
        last_messages = [request["messages"][-1] for request in stub.requests]
        assert {"role": "assistant", "content": "r"} in last_messages
    judgments = read_jsonl(tmp_path / "j" / "judgments.jsonl")
    assert [j["categories"] for j in judgments] == [["S9"], ["S9"]]
    assert judgments[0]["violated"] == ["physical_harm"]
    assert "overall │ 0.000 │ 0.000 │ 0.000 │ 1" in out


def test_grade_compare_filter_over_http(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, prompts: Path
) -> None:
    with StubOpenAIServer() as stub:
        flags = ["--base-url", stub.base_url, "--model", "stub"]
        for recipe in ("baseline", "aidsafe"):
            code, _, err = cli(
                capsys,
                "generate",
                str(prompts),
                "--out",
                str(tmp_path / recipe),
                "--recipe",
                recipe,
                "--quiet",
                *flags,
            )
            assert code == 0, err
        code, out, err = cli(
            capsys, "compare", str(tmp_path / "baseline"), str(tmp_path / "aidsafe")
        )
        assert code == 2 and "not graded yet" in err
        for recipe in ("baseline", "aidsafe"):
            code, out, err = cli(capsys, "grade", str(tmp_path / recipe), *flags)
            assert code == 0, err
            assert "relevance │ 1.000 │ [1.00, 1.00] │ 2 │ 0" in out  # the stub's minimum
        # AIDSAFE's released layout, from a CSV
        released = tmp_path / "released.csv"
        released.write_text("prompt,thoughts,response\nhi,be kind,hello\nbye,be brief,goodbye\n")
        code, out, err = cli(capsys, "grade", str(released), "--out", str(tmp_path / "ext"), *flags)
        assert code == 0, err
        assert "2 rows graded" in out
        code, _, err = cli(capsys, "grade", str(released), *flags)
        assert code == 2 and "give --out to grade a dataset" in err
    report = tmp_path / "report.html"
    code, out, err = cli(
        capsys,
        "compare",
        str(tmp_path / "baseline"),
        str(tmp_path / "aidsafe"),
        "--html",
        str(report),
        "--json",
        str(tmp_path / "c.json"),
    )
    assert code == 0, err
    assert "win 0.50 (n=2)" in out and "ended by agreement" in out
    page = report.read_text()
    for expected in ("baseline", "aidsafe", "faithfulness_cot_response", "<svg"):
        assert expected in page
    assert json.loads((tmp_path / "c.json").read_text())["baseline_run"] == "baseline"
    code, out, _ = cli(capsys, "filter", str(tmp_path / "aidsafe"), "--min", "2")
    assert code == 0 and "Kept 0 rows" in out and "dropped below_min:relevance: 2" in out
    code, out, _ = cli(
        capsys, "filter", str(tmp_path / "aidsafe"), "--min", "1", "--metric", "coherence"
    )
    assert code == 0 and "Kept 2 rows" in out


@pytest.mark.parametrize("where", ["under_a_file", "sysfs", "read_only"])
def test_an_out_that_cannot_be_created_or_written_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, where: str
) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", ["a"])
    if where == "under_a_file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    elif where == "sysfs":  # the kernel refuses any new directory there, root included
        out = Path("/sys/aidsafe-run")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory; the sysfs case covers root")
        (tmp_path / "ro").mkdir(mode=0o555)
        out = tmp_path / "ro" / "run"
    code, _, err = cli(capsys, "generate", str(prompts), "--out", str(out))
    assert code == 2
    assert f"{out}: cannot use this run directory" in err
    assert "Traceback" not in err
    assert not out.exists()
