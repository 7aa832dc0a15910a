"""A private Ray head for the tests that need a real cluster, and what they look at on it.

One head per test session (its own ports and temp dir, never another engineer's or `make run`'s),
started only when a test asks for the `ray_head` fixture, and stopped with everything it started.
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

RAY = Path(sys.executable).with_name("ray")
RAY_TEMP_ROOT = Path("/tmp/ray-gantry-test")
SHARED_MEMORY = Path("/dev/shm")


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
    def __init__(self, *, gcs_port: int | None = None, dashboard_port: int | None = None, serve_port: int | None = None) -> None:
        RAY_TEMP_ROOT.mkdir(parents=True, exist_ok=True)
        # Short: Ray's socket paths live under it and Unix sockets allow ~107 characters.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="t", dir=RAY_TEMP_ROOT))
        # vLLM's engine leaves its shared-memory ring buffers (~420 MB of RAM per replica, as
        # /dev/shm/psm_*) and a loky semaphore behind when Ray stops a replica; what this session
        # adds is removed after it, so repeated runs do not eat the machine's memory.
        self.shared_memory_before = engine_shared_memory()
        self.gcs_port = gcs_port or free_port()
        self.dashboard_port = dashboard_port or free_port()
        self.serve_port = serve_port or free_port()
        # The node's Prometheus export, where vLLM's engine metrics come out: fixed (Ray picks one at
        # random otherwise) so tests can check that Gantry finds it, and kept across restart().
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.log = open(self.temp_dir / "ray-start.log", "ab")
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [
                str(RAY), "start", "--head", "--block", f"--port={self.gcs_port}",
                "--num-cpus=16", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                # Fixed defaults (10001, 52365) would collide with another head on this machine.
                f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--metrics-export-port={self.metrics_port}",
            ],
            # Not the repo: the router must reach the replicas by value, not by importing Gantry.
            cwd=self.temp_dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def crash(self) -> list[int]:
        """SIGKILL the head's whole process tree at once, as a crashed or lost machine would, and
        wait until every process of it is gone. Returns the pids it killed."""
        pids = process_tree(self.process.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        wait_for("the crashed head's processes to be gone", lambda: not any(_alive(pid) for pid in pids), 60, 0.5)
        return pids

    def restart(self) -> None:
        """Start a fresh head (a new cluster, empty GCS) on the SAME GCS, dashboard and Serve ports,
        as an operator or a supervisor would after a crash; call wait_until_up() after it."""
        if self.process.poll() is None:
            stop_tree(process_tree(self.process.pid))
        self.process = self._start()

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


def _alive(pid: int) -> bool:
    """Still a process (a zombie counts as gone: it holds no port and runs nothing)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return False


# --- What tests look at ---------------------------------------------------------------------------

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


class ChatLoad:
    """`clients` threads that each keep one chat completion to `model` in flight through the router
    until stopped: a load of exactly that many ongoing requests. Counts answers and every failure."""

    def __init__(self, head: RayHead, model: str, clients: int, *, max_tokens: int = 48) -> None:
        import openai
        import threading

        self.client = openai.OpenAI(base_url=router_url(head, "/v1"), api_key="unused", max_retries=0, timeout=180)
        self.model, self.max_tokens = model, max_tokens
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                reply = self.client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": "Count to a hundred"}], max_tokens=self.max_tokens
                )
                if reply.choices[0].message.content is None:
                    raise AssertionError("an answer with no content")
                with self.lock:
                    self.ok += 1
            except Exception as exc:  # noqa: BLE001 — every failure is counted and shown
                with self.lock:
                    self.failed.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> "ChatLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=240)
