"""A loopback OpenAI-compatible server for tests and benchmarks: it answers every structured
request with the smallest schema-valid instance."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any


def example_instance(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """The smallest value that satisfies a JSON schema (as pydantic writes them)."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return example_instance(root["$defs"][name], root)
    if "enum" in schema:
        return schema["enum"][0]
    if "anyOf" in schema:
        return example_instance(schema["anyOf"][0], root)
    kind = schema.get("type")
    if kind == "object":
        return {
            name: example_instance(sub, root) for name, sub in schema.get("properties", {}).items()
        }
    if kind == "array":
        return [example_instance(schema["items"], root) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        return "stub text"
    if kind == "integer":
        return int(schema.get("minimum", 1))
    if kind == "number":
        return float(schema.get("minimum", 0))
    if kind == "boolean":
        return True
    return None


class StubOpenAIServer:
    """A loopback OpenAI-compatible chat server that answers every structured request (tool call
    or json_schema response_format) with a schema-valid instance, and any other request with
    `plain_answer`. For tests and benchmarks only:
    `latency` delays every answer; `fail_first` answers the first N requests with `failure`
    (default: HTTP 503 with a JSON error; a function of the request and its lower-cased
    headers gives status, body, headers);
    `keep_alive` speaks HTTP/1.1 and keeps connections open, as real servers do (the
    benchmarks use it; tests keep HTTP/1.0, whose closed connections make shutdown clean);
    `answers` replaces the answer to a schema by name (e.g. an unsafe `Verdict`);
    `choice`, a function of the request and the answer's choice, returns the choice to send
    (a `finish_reason` of `length` or `content_filter`, a `refusal`, other text);
    `capacity` answers HTTP 429 at once to a request that finds that many already in flight
    (`overloads` counts them; `arrivals` and `loads` note each accepted request's arrival time
    and the requests then in flight)."""

    def __init__(
        self,
        latency: float = 0.0,
        fail_first: int = 0,
        plain_answer: str = "stub answer",
        port: int = 0,
        keep_alive: bool = False,
        answers: dict[str, dict[str, Any]] | None = None,
        failure: Callable[[dict[str, Any], dict[str, str]], tuple[int, str, dict[str, str]]]
        | None = None,
        choice: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
        capacity: int | None = None,
    ) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stub = self
        self.latency = latency
        self.fail_first = fail_first
        self.failure = failure or (
            lambda request, headers: (503, json.dumps({"error": {"message": "overloaded"}}), {})
        )
        self.plain_answer = plain_answer  # the text of answers to unstructured requests
        self.choice = choice
        self.capacity = capacity
        self.in_flight = 0
        self.overloads = 0
        self.loads: list[tuple[float, int]] = []
        self.answers = answers or {}  # schema name -> the answer to give instead of the smallest
        self.requests: list[dict[str, Any]] = []
        self.arrivals: list[float] = []  # time.monotonic() of each request's arrival
        self.embedded = 0  # texts embedded by /v1/embeddings
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"
            # headers and body go out in two writes: without this, Nagle's algorithm and the
            # client's delayed ACK hold the body back ~40 ms on a kept-alive connection
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                if self.path.endswith("/embeddings"):
                    self._send(200, stub.embed(request))
                    return
                with stub._lock:
                    over = stub.capacity is not None and stub.in_flight >= stub.capacity
                    if over:
                        stub.overloads += 1
                    else:
                        stub.in_flight += 1
                if over:
                    self._send(429, {"error": {"message": "over capacity"}})
                    return
                with stub._lock:
                    stub.loads.append((time.monotonic(), stub.in_flight))
                    stub.arrivals.append(time.monotonic())
                    stub.requests.append(request)
                    failing = len(stub.requests) <= stub.fail_first
                try:
                    self._answer(request, failing)
                finally:
                    with stub._lock:
                        stub.in_flight -= 1

            def _answer(self, request: dict[str, Any], failing: bool) -> None:
                if stub.latency:
                    time.sleep(stub.latency)
                if failing:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    status, body, extra = stub.failure(request, headers)
                    data = body.encode()
                    self.send_response(status)
                    for name, value in {"Content-Length": str(len(data)), **extra}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self._send(200, stub.answer(request))

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024  # hundreds of requests in flight must not be refused

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up mid-answer (an interrupted run) is no error here

        self.server = Server(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def embed(self, request: dict[str, Any]) -> dict[str, Any]:
        """`/v1/embeddings`: a bag of words hashed into 64 dimensions per input, so texts
        sharing most of their words are near (cosine) and others are not."""
        texts = request["input"] if isinstance(request["input"], list) else [request["input"]]
        self.embedded += len(texts)
        data = []
        for n, text in enumerate(texts):
            vector = [0.0] * 64
            for word in "".join(c if c.isalnum() else " " for c in text.lower()).split():
                vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % 64] += 1.0
            data.append({"object": "embedding", "index": n, "embedding": vector})
        return {"object": "list", "data": data, "model": request.get("model", "stub")}

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.plain_answer}
        tools = request.get("tools") or []
        response_format = request.get("response_format") or {}
        if tools:
            function = tools[0]["function"]
            answer = self.answers.get(function["name"]) or example_instance(function["parameters"])
            arguments = json.dumps(answer)
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_stub",
                        "type": "function",
                        "function": {"name": function["name"], "arguments": arguments},
                    }
                ],
            }
        elif response_format.get("type") == "json_schema":
            spec = response_format["json_schema"]
            answer = self.answers.get(spec["name"]) or example_instance(spec["schema"])
            message["content"] = json.dumps(answer)
        prompt_tokens = sum(len(str(m.get("content") or "")) for m in request["messages"]) // 4
        completion_tokens = len(json.dumps(message)) // 4
        sent = {"index": 0, "message": message, "finish_reason": "stop"}
        if self.choice is not None:
            sent = self.choice(request, sent)
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 0,
            "model": request.get("model", "stub"),
            "choices": [sent],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def __enter__(self) -> StubOpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_stub(port: int = 0, latency: float = 0.0, keep_alive: bool = True) -> None:
    """Run the stub server in this process until killed; prints its base URL first.
    `python -c "from aidsafe.testing import serve_stub; serve_stub(8000, 0.2)"`"""
    stub = StubOpenAIServer(latency=latency, port=port, keep_alive=keep_alive)
    print(stub.base_url, flush=True)
    stub.server.serve_forever()
