"""`make run` on embedded defaults brings up a Gantry a person can log into, and Ctrl-C stops it all.

Runs bin/gantry-run (what `make run` calls) with its install step skipped — `make test` has just
installed the same requirements — in a var/ of its own and on free ports, so it cannot meet a Gantry
someone is already running here.
"""
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from playwright.sync_api import expect

from tests.conftest import ROOT

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def running_gantry(tmp_path, test_output):
    web, ray, dashboard = free_port(), free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_URL", "CELERY_", "RAY_"))}
    env.update(
        GANTRY_SKIP_INSTALL="1",
        GANTRY_VAR_DIR=str(tmp_path / "var"),
        GANTRY_PORT=str(web),
        GANTRY_RAY_PORT=str(ray),
        GANTRY_RAY_DASHBOARD_PORT=str(dashboard),
        GANTRY_RAY_CPUS="2",
    )
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    log_path = test_output / "make-run.log"
    log = log_path.open("w")
    process = subprocess.Popen(["bin/gantry-run"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and "Gantry is running at" not in log_path.read_text():
        assert process.poll() is None, f"gantry-run exited early:\n{log_path.read_text()}"
        time.sleep(1)
    output = log_path.read_text()
    assert "Gantry is running at" in output, output
    yield {"process": process, "web": web, "ray": ray, "output": output, "log": log_path}
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()


def test_make_run_serves_a_login_page_and_ctrl_c_stops_everything(running_gantry, page, test_output):
    base = f"http://127.0.0.1:{running_gantry['web']}"
    # The admin: /readyz below shows why a check failed only to staff.
    password = re.search(r"admin\s+admin\s+password: (\S+)", running_gantry["output"]).group(1)
    page.goto(f"{base}/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Welcome, admin")).to_be_visible()
    expect(page.locator("#ray-banner")).to_have_count(0)  # the local Ray head was up before the web app
    page.screenshot(path=test_output / "make-run-logged-in.png", full_page=True)

    # The embedded defaults: SQLite, the filesystem broker and the local Ray head all answer.
    ready = page.request.get(f"{base}/readyz").json()
    assert ready["status"] == "ready", ready
    assert ready["checks"]["database"]["detail"] == "sqlite reachable"
    assert "filesystem" in ready["checks"]["broker"]["detail"]
    deadline = time.monotonic() + 60
    while not port_open(running_gantry["ray"]) and time.monotonic() < deadline:
        time.sleep(1)
    assert port_open(running_gantry["ray"]), "the local Ray head did not come up"

    process = running_gantry["process"]
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    process.wait(timeout=120)  # everything it started has stopped by the time it exits
    assert not port_open(running_gantry["web"])
    deadline = time.monotonic() + 30
    while port_open(running_gantry["ray"]) and time.monotonic() < deadline:
        time.sleep(1)
    assert not port_open(running_gantry["ray"]), "Ctrl-C left the Ray head it started running"
    assert "stopped" in running_gantry["log"].read_text()
