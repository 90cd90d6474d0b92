"""What an endpoint can do wrong: transient answers are retried (a 200 that is not JSON, 408,
409, 425, 429, 5xx) with the server's Retry-After honoured, and nothing it echoes back (an
Authorization header, the key itself) reaches any file of the run."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aidsafe.inputs import PromptSource
from aidsafe.models.structured import MAX_RETRY_AFTER_S, is_transient, retry_after, scrub
from aidsafe.run.directory import RunDirectory
from aidsafe.run.pipeline import generate
from aidsafe.testing import StubOpenAIServer
from tests.conftest import make_config, read_jsonl, write_prompts

KEY = "sk-test-secret-0123456789abcdef"


def status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://x/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError("error", response=response, body=None)


@pytest.mark.parametrize(("status", "transient"), [(408, True), (409, True), (425, True),
    (429, True), (500, True), (503, True), (400, False), (401, False), (404, False)])  # fmt: skip
def test_which_statuses_are_retried(status: int, transient: bool) -> None:
    assert is_transient(status_error(status)) is transient


def test_retry_after_in_seconds_or_as_a_date_is_honoured_and_capped() -> None:
    assert retry_after(status_error(429, {"Retry-After": "7"})) == 7.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after(status_error(503, {"Retry-After": later})) or 0) <= 30
    assert retry_after(status_error(429, {"Retry-After": "99999"})) == MAX_RETRY_AFTER_S
    assert retry_after(status_error(429)) is None


def test_scrub_removes_keys_and_header_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "plainsecret")
    config = make_config(models={"default": {"api_key_env": "MY_KEY"}}).model_for("x")
    text = scrub(f"got Authorization: Bearer {KEY} and api-key='abc123' and plainsecret", config)
    assert KEY not in text and "abc123" not in text and "plainsecret" not in text
    assert "Authorization: [redacted]" in text


def run_against(stub: StubOpenAIServer, tmp_path: Path, **model: Any) -> Path:
    import asyncio

    prompts = write_prompts(tmp_path / "p.jsonl", ["hello"])
    settings = {"backend": "openai", "base_url": stub.base_url, "model": "stub", **model}
    config = make_config(models={"default": {"retry_wait": 0, **settings}}, concurrency=1)
    out = tmp_path / "run"
    asyncio.run(
        generate(PromptSource(str(prompts)), RunDirectory(out), config, show_progress=False)
    )
    return out


def test_a_200_that_is_not_json_is_retried_and_the_row_finishes(tmp_path: Path) -> None:
    def html(request: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        return 200, "<html>a proxy's error page</html>", {"Content-Type": "text/html"}

    with StubOpenAIServer(fail_first=2, failure=html) as stub:
        out = run_against(stub, tmp_path)
    assert len(read_jsonl(out / "traces.jsonl")) == 1 and not read_jsonl(out / "failures.jsonl")


def test_retry_after_is_waited_for(tmp_path: Path) -> None:
    def busy(request: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        return 429, json.dumps({"error": {"message": "slow down"}}), {"Retry-After": "1"}

    started = time.monotonic()
    with StubOpenAIServer(fail_first=1, failure=busy) as stub:
        out = run_against(stub, tmp_path)  # retry_wait 0: only Retry-After makes it wait
    assert time.monotonic() - started >= 1.0
    assert len(read_jsonl(out / "traces.jsonl")) == 1


def test_an_error_body_echoing_the_key_leaves_no_key_in_any_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECHO_KEY", KEY)

    def echo(request: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        body = {"error": {"message": f"bad request; you sent {headers.get('authorization')}"}}
        return 400, json.dumps(body), {"Content-Type": "application/json"}

    with StubOpenAIServer(fail_first=100, failure=echo) as stub:
        out = run_against(stub, tmp_path, api_key_env="ECHO_KEY")
    (failure,) = read_jsonl(out / "failures.jsonl")
    assert failure["reason"] == "endpoint_error" and "[redacted]" in failure["detail"]
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path
