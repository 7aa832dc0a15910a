"""The call examples on a model's page run as printed: copied into a file (or a shell) unchanged, they
reach the base URL the page names, ask for the page's model id and print the answer.

The server here speaks just enough of OpenAI's chat API to answer them, and records what it was
sent; whether Ray Serve answers such a request is the integration tests' job.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.serving.factories import create_model
from tests.serving.test_pages import text_of

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]


class ChatServer(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.requests: list[dict] = []


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args) -> None:  # keep pytest's output for failures
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body, "authorization": self.headers.get("Authorization")})
        if self.path != "/v1/chat/completions":
            return self._send(404, "application/json", json.dumps({"error": {"message": "not found"}}).encode())
        model = body["model"]
        if not body.get("stream"):
            reply = {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Hello from {model}."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
            }
            return self._send(200, "application/json", json.dumps(reply).encode())
        chunks = [{"role": "assistant", "content": ""}, {"content": "1 2 "}, {"content": "3"}, {}]
        events = b""
        for delta in chunks:
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None if delta else "stop"}]}
            events += f"data: {json.dumps(chunk)}\n\n".encode()
        self._send(200, "text/event-stream", events + b"data: [DONE]\n\n")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def chat_server(settings):
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    settings.GANTRY_SERVE_HOST, settings.GANTRY_SERVE_PORT = server.server_address
    yield server
    server.shutdown()
    server.server_close()


def example(client, model, name: str) -> str:
    page = client.get(f"/serving/{model.model_key}").text
    return unescape(text_of(page, f"example-{name}"))


def run_python(code: str, tmp_path) -> str:
    path = tmp_path / "example.py"
    path.write_text(code)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_python_example_runs_as_printed(alice_client, alice, chat_server, tmp_path):
    model = create_model(alice, "demo")
    output = run_python(example(alice_client, model, "python"), tmp_path)
    assert output == f"Hello from {model.model_id}.\n"
    [request] = chat_server.requests
    assert request["body"]["model"] == model.model_id and request["body"]["messages"][0]["role"] == "user"


def test_the_streaming_example_prints_the_chunks_as_they_come(alice_client, alice, chat_server, tmp_path):
    model = create_model(alice, "demo")
    assert run_python(example(alice_client, model, "stream"), tmp_path) == "1 2 3\n"
    [request] = chat_server.requests
    assert request["body"]["stream"] is True and request["body"]["model"] == model.model_id


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_curl_example_runs_as_printed(alice_client, alice, chat_server):
    model = create_model(alice, "demo")
    done = subprocess.run(["bash", "-c", example(alice_client, model, "curl")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == f"Hello from {model.model_id}."
    [request] = chat_server.requests
    assert request["authorization"] is None  # the endpoint needs none, as the page says
