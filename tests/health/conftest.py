"""Fixtures of the health tests: a real local HTTP receiver for alert webhooks (http.server in a
thread, recording what it got), FakeServe as the client, and a real child process."""
from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class Receiver:
    def __init__(self) -> None:
        self.received: list[dict] = []
        self.fail_next = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 — http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(503)
                else:
                    receiver.received.append({"content_type": self.headers["Content-Type"], **json.loads(body)})
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kinds(self) -> list[str]:
        return [alert["event"] for alert in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    hook = Receiver()
    settings.GANTRY_HEALTH_WEBHOOK_URL = hook.url
    settings.GANTRY_HEALTH_ALERT_EMAILS = []
    yield hook
    hook.close()


@pytest.fixture
def fake(settings):
    """FakeServe as the configured client; its `gpu_readings` are what node_gpus() reports."""
    from tests.serving.fake_serve import reset_shared

    settings.GANTRY_SERVE_CLIENT = "tests.serving.fake_serve.shared_fake"
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    fake = reset_shared()
    yield fake
    reset_shared()


@pytest.fixture
def child():
    """A real process of this test's own (`sleep 300`), killed after it, for the zombie tests."""
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()
