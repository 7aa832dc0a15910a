"""gunicorn as Gantry runs it keeps an idle connection open longer than a client's poll interval and a
load balancer's idle timeout. Its default (2 s) reset clients that polled every 2 s on a kept-alive
connection (Python `requests`): 2 of 15 requests in a measured run."""
from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.ray_cluster import free_port, wait_for

pytestmark = pytest.mark.slow

CONFIG = ROOT / "gunicorn.conf.py"


@contextlib.contextmanager
def running_gunicorn(*args: str):
    """gunicorn on a free loopback port with the test's own settings (DATABASE_URL, GANTRY_VAR_DIR, …)."""
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    environment.update(GANTRY_BIND="127.0.0.1", GANTRY_PORT=str(port))
    command = [str(Path(sys.executable).parent / "gunicorn"), *args, "--workers", "1", "dashboard.wsgi:application"]
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for("gunicorn to answer /healthz", lambda: _healthy(port, process), timeout_s=30, every_s=0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _healthy(port: int, process: subprocess.Popen) -> bool:
    assert process.poll() is None, f"gunicorn exited: {process.stderr.read()[-2000:] if process.stderr else ''}"
    with contextlib.suppress(OSError):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    return False


def test_a_kept_alive_connection_survives_a_3_second_pause():
    with running_gunicorn("-c", str(CONFIG)) as port:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("Connection", "").lower() != "close"
        socket_before = connection.sock
        time.sleep(3)
        connection.request("GET", "/healthz")  # http.client reconnects only when it knows the socket is gone
        second = connection.getresponse()
        second.read()
        assert second.status == 200
        assert connection.sock is socket_before, "the same TCP connection carried both requests"
        connection.close()


def test_the_config_keeps_todays_shape_with_a_long_keepalive(monkeypatch):
    monkeypatch.delenv("GANTRY_BIND", raising=False)
    monkeypatch.delenv("GANTRY_PORT", raising=False)
    namespace: dict = {}
    exec(compile(CONFIG.read_text(), str(CONFIG), "exec"), namespace)
    assert namespace["keepalive"] > 60  # longer than a load balancer's usual 60 s idle timeout
    assert (namespace["timeout"], namespace["workers"], namespace["threads"]) == (60, 4, 4)
    assert namespace["bind"] == ["0.0.0.0:8080"]


@pytest.mark.parametrize("path", ["bin/gantry-run", "Dockerfile", "compose.yaml"])
def test_make_run_the_image_and_compose_start_gunicorn_with_the_config(path):
    gunicorn_lines = [line for line in (ROOT / path).read_text().splitlines() if "gunicorn" in line and "dashboard.wsgi" in line]
    assert gunicorn_lines, f"{path} does not start gunicorn"
    assert all("gunicorn.conf.py" in line for line in gunicorn_lines), gunicorn_lines
