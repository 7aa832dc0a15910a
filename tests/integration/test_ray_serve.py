"""The Ray client and the gantry-router against a real Ray head, real Serve and the real CPU engine.

One private Ray head for the session (its own ports and temp dir, never another engineer's), the
tiny model built offline, and one deployed model shared by the tests of this module: a real engine
takes about a minute to start on two cores, so each test pins its behaviour on that model instead of
deploying its own. Replica and actor ids come from the Ray dashboard's Serve REST API, never from a
mock: "restarts nothing" means the same actor with the same PID.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from django.conf import settings
from django.core.management import call_command

from serving.client import ROUTER_APP, RayServeClient, ServeUnavailable
from serving.llm_config import build_llm_config

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")
RAY_TEMP_ROOT = Path("/tmp/ray-gantry-test")
SHARED_MEMORY = Path("/dev/shm")
# Model keys look like the real ones (<user>-<YYYYMMDDHHMM>-<suffix>); the dot matters: Serve names
# the deployment "LLMServer:alice-…-tiny_v1", so the router must not derive it from the model id.
MODEL = "alice-202611250000-tiny.v1"
OTHER_MODEL = "bob-202611250000-other"
RUNNING_WITHIN_S = 180


# --- A private Ray head ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], object], timeout_s: float, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # noqa: BLE001 — keep polling, report the last reason
            last = exc
        else:
            if last:
                return last
        time.sleep(every_s)
    raise AssertionError(f"{what} did not happen within {timeout_s:g} s (last: {last!r})")


def process_tree(root: int) -> list[int]:
    """root and all its descendants now. Ray's workers outlive their raylet for a while when it is
    killed, so they are collected before anything is stopped."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def stop_tree(pids: list[int], grace_s: float = 5) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.5)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def engine_shared_memory() -> set[Path]:
    return set(SHARED_MEMORY.glob("psm_*")) | set(SHARED_MEMORY.glob("sem.loky-*"))


def unused_shared_memory(candidates: set[Path]) -> list[Path]:
    """Those of `candidates` that no process maps or holds open."""
    in_use: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            in_use.update(line.split()[-1] for line in (proc / "maps").read_text().splitlines() if "/dev/shm/" in line)
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    in_use.add(os.readlink(fd))
        except OSError:
            continue  # gone, or not ours to read
    return [path for path in candidates if str(path) not in in_use]


class RayHead:
    def __init__(self) -> None:
        RAY_TEMP_ROOT.mkdir(parents=True, exist_ok=True)
        # Short: Ray's socket paths live under it and Unix sockets allow ~107 characters.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="t", dir=RAY_TEMP_ROOT))
        # vLLM's engine leaves its shared-memory ring buffers (~420 MB of RAM per replica, as
        # /dev/shm/psm_*) and a loky semaphore behind when Ray stops a replica; what this session
        # adds is removed after it, so repeated runs do not eat the machine's memory.
        self.shared_memory_before = engine_shared_memory()
        self.gcs_port, self.dashboard_port, self.serve_port = free_port(), free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = open(self.temp_dir / "ray-start.log", "wb")
        self.process = subprocess.Popen(
            [
                str(RAY), "start", "--head", "--block", f"--port={self.gcs_port}",
                "--num-cpus=16", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                # Fixed defaults (10001, 52365) would collide with another head on this machine.
                f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            ],
            # Not the repo: the router must reach the replicas by value, not by importing Gantry.
            cwd=self.temp_dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_until_up(self) -> None:
        def dashboard_answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited: {(self.temp_dir / 'ray-start.log').read_text()[-2000:]}")
            with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=2) as response:
                return response.status == 200

        wait_for("the Ray head's dashboard answering", dashboard_answers, 90)

    def stop(self) -> None:
        stop_tree(process_tree(self.process.pid))
        self.log.close()
        for segment in unused_shared_memory(engine_shared_memory() - self.shared_memory_before):
            segment.unlink(missing_ok=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_head():
    import ray

    head = RayHead()
    saved = {name: getattr(settings, name) for name in ("RAY_ADDRESS", "RAY_DASHBOARD_URL", "GANTRY_SERVE_PORT")}
    try:
        head.wait_until_up()
        settings.RAY_ADDRESS = head.address
        settings.RAY_DASHBOARD_URL = head.dashboard_url
        settings.GANTRY_SERVE_PORT = head.serve_port
        yield head
    finally:
        if ray.is_initialized():
            ray.shutdown()
        head.stop()
        for name, value in saved.items():
            setattr(settings, name, value)


@pytest.fixture(scope="session")
def client(ray_head) -> RayServeClient:
    client = RayServeClient()
    client.ensure_started(http_port=ray_head.serve_port)
    return client


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    call_command("make_tiny_model", str(folder))
    return folder


def llm_config(model_key: str, tiny_model: Path, replicas: int = 1) -> dict:
    spec = {"model_id": model_key, "model_source": str(tiny_model), "num_replicas": replicas, "gpus_per_replica": 0}
    return build_llm_config(spec, engine="cpu", hf_home=str(tiny_model.parent))


def wait_running(client: RayServeClient, model_key: str, replicas: int, timeout_s: float = RUNNING_WITHIN_S):
    def running():
        app = client.status().get(model_key)
        if app is not None and app.status == "DEPLOY_FAILED":
            raise AssertionError(f"Serve reports DEPLOY_FAILED: {app.messages}")
        return app if app is not None and app.status == "RUNNING" and app.running_replicas == replicas else None

    return wait_for(f"{model_key} RUNNING with {replicas} replica(s)", running, timeout_s, every_s=2)


def wait_gone(client: RayServeClient, model_key: str) -> None:
    wait_for(f"{model_key} gone from Serve", lambda: model_key not in client.status(), 60, every_s=0.5)


@pytest.fixture(scope="module")
def deployed(client, tiny_model) -> dict:
    """MODEL, applied once for this module and RUNNING; the tests below change and finally delete it."""
    started = time.monotonic()
    client.apply_model(MODEL, llm_config(MODEL, tiny_model))
    applied = time.monotonic()
    wait_running(client, MODEL, 1)
    print(f"\napply_model returned in {applied - started:.1f} s; RUNNING after {time.monotonic() - started:.1f} s")
    return {"key": MODEL}


# --- What the tests look at -------------------------------------------------------------------------

def replicas(head: RayHead, app: str) -> dict[str, tuple[str, int]]:
    """replica id -> (actor id, pid) of every RUNNING replica of `app`, from the Serve REST API."""
    with urllib.request.urlopen(f"{head.dashboard_url}/api/serve/applications/", timeout=10) as response:
        details = json.load(response)
    found: dict[str, tuple[str, int]] = {}
    for deployment in details["applications"].get(app, {}).get("deployments", {}).values():
        for replica in deployment["replicas"]:
            if replica["state"] == "RUNNING":
                found[replica["replica_id"]] = (replica["actor_id"], replica["pid"])
    return found


def router_url(head: RayHead, path: str) -> str:
    return f"http://127.0.0.1:{head.serve_port}{path}"


def get_json(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def listed_models(head: RayHead) -> list[str]:
    status, body = get_json(router_url(head, "/v1/models"))
    assert status == 200, body
    assert body["object"] == "list"
    return [m["id"] for m in body["data"]]


def openai_client(head: RayHead):
    import openai

    return openai.OpenAI(base_url=router_url(head, "/v1"), api_key="unused", max_retries=0, timeout=60)


def chat(head: RayHead, model: str) -> str:
    reply = openai_client(head).chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    return reply.choices[0].message.content


# --- Tests, in the order a cluster lives them ---------------------------------------------------

def test_an_unreachable_cluster_is_serve_unavailable(settings):
    settings.RAY_ADDRESS = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ServeUnavailable, match="does not accept connections"):
        RayServeClient().status()
    assert time.monotonic() - started < 5


def test_ensure_started_again_leaves_the_router_running_as_it_was(ray_head, client):
    before = replicas(ray_head, ROUTER_APP)
    assert len(before) == 1
    client.ensure_started(http_port=ray_head.serve_port)
    client.ensure_started(http_port=ray_head.serve_port)
    assert replicas(ray_head, ROUTER_APP) == before
    assert client.status()[ROUTER_APP].status == "RUNNING"


def test_models_is_an_empty_list_before_any_model(ray_head, client):
    assert listed_models(ray_head) == []


def test_an_applied_model_runs_and_answers_through_the_router(ray_head, client, deployed):
    app = client.status()[MODEL]
    assert app.status == "RUNNING"
    (deployment,) = app.deployments
    assert deployment.name.startswith("LLMServer:") and deployment.replica_states == {"RUNNING": 1}
    assert listed_models(ray_head) == [MODEL]

    api = openai_client(ray_head)
    assert api.models.retrieve(MODEL).id == MODEL
    started = time.monotonic()
    reply = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    print(f"\nchat completion through the router: {time.monotonic() - started:.3f} s")
    assert reply.model == MODEL
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens > 0

    chunks = list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, stream=True))
    assert len(chunks) > 1
    assert sum(len(c.choices[0].delta.content or "") for c in chunks if c.choices) > 0

    completion = api.completions.create(model=MODEL, prompt="The quick brown", max_tokens=4)
    assert completion.choices[0].text
    streamed = list(api.completions.create(model=MODEL, prompt="The quick brown", max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in streamed)


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_error_keeps_its_status_through_the_router(ray_head, deployed, stream):
    import openai

    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(ray_head).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=100_000, stream=stream
        )
    assert "max_model_len" in raised.value.body["message"]


def test_an_unknown_model_is_an_openai_404(ray_head, deployed):
    import openai

    with pytest.raises(openai.NotFoundError) as raised:
        openai_client(ray_head).chat.completions.create(model="nobody-202611250000-nothing", messages=[{"role": "user", "content": "Hi"}])
    error = raised.value.body  # the openai client unwraps {"error": {...}}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "model", "model_not_found")
    assert "nobody-202611250000-nothing" in error["message"]
    status, body = get_json(router_url(ray_head, "/v1/models/nobody-202611250000-nothing"))
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_scaling_keeps_the_replicas_that_already_run(ray_head, client, tiny_model, deployed):
    one = llm_config(MODEL, tiny_model, replicas=1)
    two = llm_config(MODEL, tiny_model, replicas=2)
    (first,) = replicas(ray_head, MODEL).items()

    client.apply_model(MODEL, two, previous=one)
    wait_running(client, MODEL, 2)
    after_up = replicas(ray_head, MODEL)
    assert len(after_up) == 2
    assert after_up[first[0]] == first[1], "scaling 1 -> 2 replaced the replica that was running"

    client.apply_model(MODEL, one, previous=two)
    wait_running(client, MODEL, 1, timeout_s=60)
    (kept,) = replicas(ray_head, MODEL).items()
    assert kept in after_up.items(), "scaling 2 -> 1 started a new replica instead of keeping one"
    assert chat(ray_head, MODEL)


def test_adding_and_deleting_another_model_restarts_nothing_else(ray_head, client, tiny_model, deployed):
    model_before, router_before = replicas(ray_head, MODEL), replicas(ray_head, ROUTER_APP)

    client.apply_model(OTHER_MODEL, llm_config(OTHER_MODEL, tiny_model))
    wait_running(client, OTHER_MODEL, 1)
    assert sorted(listed_models(ray_head)) == sorted([MODEL, OTHER_MODEL])
    assert chat(ray_head, OTHER_MODEL)
    assert chat(ray_head, MODEL)

    client.delete_model(OTHER_MODEL)
    wait_gone(client, OTHER_MODEL)
    assert listed_models(ray_head) == [MODEL]

    assert replicas(ray_head, MODEL) == model_before
    assert replicas(ray_head, ROUTER_APP) == router_before
    assert chat(ray_head, MODEL)


def test_a_deleted_model_is_gone_from_serve_and_the_router(ray_head, client, deployed):
    assert chat(ray_head, MODEL)  # the router holds a handle to it now
    client.delete_model(MODEL)
    client.delete_model(MODEL)  # deleting twice, or a model Serve never had, is fine
    client.delete_model("nobody-202611250000-nothing")
    wait_gone(client, MODEL)

    assert MODEL not in client.status()
    assert listed_models(ray_head) == []
    assert client.status()[ROUTER_APP].status == "RUNNING"


def test_a_model_deployed_again_under_a_deleted_name_answers_again(ray_head, client, tiny_model, deployed):
    """A user who posts a deleted model's suffix again gets the same model id back (DESIGN), while
    the router may still hold a handle from before the delete."""
    import openai

    client.apply_model(MODEL, llm_config(MODEL, tiny_model))
    wait_running(client, MODEL, 1)
    assert chat(ray_head, MODEL)
    assert listed_models(ray_head) == [MODEL]

    client.delete_model(MODEL)
    wait_gone(client, MODEL)
    with pytest.raises(openai.NotFoundError):
        chat(ray_head, MODEL)
