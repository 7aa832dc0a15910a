"""What Gantry costs on top of plain Ray Serve, and what it restarts, timed on the product's own path.

In one run, on a private Ray head, with the real CPU engine and the tiny model (built here, offline):

1. Gantry path, as `make run` runs it. This process is the web side only: it posts, patches and
   deletes through the API (token auth, Django's test client), and the on-commit enqueue goes to the
   real broker. A real Celery worker and beat, started here as subprocesses exactly as bin/gantry-run
   starts them (same environment: scratch SQLite, scratch GANTRY_VAR_DIR, the broker, RAY_ADDRESS),
   do all the reconciling: the enqueued tick applies, follow-ups every GANTRY_RECONCILE_FOLLOWUP_MS
   (500 ms) while the model is DEPLOYING or DELETING, beat every GANTRY_RECONCILE_INTERVAL_S (10 s).
   This process never reconciles. It watches two clocks from its main thread: Gantry's (the model's
   state as the API reports it, its row read every 0.05 s) and Serve's own status of the application
   (every 0.1 s). Per round: POST -> Serve RUNNING, POST -> Gantry RUNNING and the lag between them;
   API DELETE -> Serve no longer lists the application, -> Gantry DELETED, and that lag; and the
   CPU time the worker and beat used while the model deployed (/proc), with the worker's ticks read
   back from its log (how often it looked, how long each look took). Then time to first token (streamed chat completion) and non-stream latency through the gantry-router's /v1.
2. Raw baseline: the same LLM config deployed with plain Serve, `build_llm_deployment(LLMConfig(**config))`
   as application "raw-<n>" (the very application Gantry applies, without Gantry), with
   `serve.run_many(..., wait_for_applications_running=False)` and Serve's status read every 0.1 s until
   RUNNING (`serve.run` polls every 1 s); deleted with `serve.delete(_blocking=False)` and the same
   0.1 s reads until Serve no longer lists it (`serve.delete` polls every 1 s). For the requests, Ray's
   own OpenAiIngress (build_openai_app's front end) is bound to it as a second application on
   /raw-<n> (not timed) and called directly, not through the router.
   Rounds run in ABBA order ending with Gantry (R G G R R G by default), one model at a time; the
   router is the only other application. The worker and beat run throughout (beat ticks during the
   raw rounds too, as it would beside any Serve application).
3. Ratios Gantry/raw of the medians.
4. Restarts: with the last Gantry model (A) RUNNING, add model B, scale B 1 -> 2, delete B, all
   through the API and the worker (this process only polls for the states), and count after each
   step how many replicas of A, of the router, and of Serve's controller and proxy changed (replica
   id, actor id and PID), while a thread keeps calling A through the router.

Before the rounds, untimed: one warm-up model through Gantry, and a second if a worker pool process
has not applied one yet. The first one's enqueued tick starts Serve and the router (as the first tick of
`make run` does) and warms the fresh head (the first engine start is slower); each pool process
imports ray.serve.llm and vLLM for its first apply, once in a long-running worker's life.

    .venv/bin/python bench/serve_overhead.py                  # R G G R R G + restarts: 31 min on 2 cores under load
    .venv/bin/python bench/serve_overhead.py --rounds 1       # R G + restarts: 14-20 min under load
    .venv/bin/python bench/serve_overhead.py --broker redis://127.0.0.1:6379/9   # compose's broker
    GANTRY_RECONCILE_FOLLOWUP_MS=1000 .venv/bin/python bench/serve_overhead.py --no-restarts

It never touches another Ray head: it starts its own on free ports (tests/ray_cluster.py) and stops
only the processes it started. The scratch folder (database, broker, model, worker and beat logs) is
removed after a successful run and kept after a failed one (or with --keep); the head's temp dir is
removed.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ray_cluster import RayHead, process_tree, replicas  # noqa: E402 — after the path; imports no Django

PROMPT = [{"role": "user", "content": "Hello, how are you today?"}]
MAX_TOKENS = 16  # with ignore_eos both paths generate exactly this many tokens
DEPLOY_TIMEOUT_S = 600  # the same deploy took 130-270 s here while other engineers' engine tests ran
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "vllm", "ray", "ray.serve", "ray.llm", "kombu", "celery")


def quiet() -> None:
    """Ray Serve, ray.llm and vLLM (re)configure their loggers when first used in this process and log
    every request at INFO; called again after each such point so the output stays the bench's own."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name in ("kombu", "celery") else logging.WARNING)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_load(head: RayHead) -> str:
    """Load average and Ray heads of other people on this machine: what else competed for the cores."""
    others = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == head.process.pid:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"start" in argv and b"--head" in argv and any(a.endswith(b"/ray") or a == b"ray" for a in argv):
            others += 1
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min) / {five:.1f} (5 min) on {os.cpu_count()} cores; other Ray heads running: {others}"


# --- Setting up: scratch Django, tiny model, private head, the worker and beat ---------------------

def setup_django(scratch: Path, head: RayHead, broker: str) -> None:
    env = {
        "GANTRY_VAR_DIR": str(scratch / "var"),
        # Always a scratch SQLite: a DATABASE_URL left in the shell must not receive bench models.
        "DATABASE_URL": f"sqlite:///{scratch}/bench.sqlite3",
        "DEBUG": "0",
        "GANTRY_ENV": "dev",
        "GANTRY_ENGINE": "cpu",
        "GANTRY_HF_ROOT": str(scratch / "hf"),
        "GANTRY_USERS_ROOT": str(scratch / "users"),
        "GANTRY_DATASETS_ROOT": str(scratch / "datasets"),
        # filesystem:// is make run's broker, in GANTRY_VAR_DIR (here the scratch folder's).
        "CELERY_BROKER_URL": broker,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "GANTRY_SERVE_CLIENT": "serving.cluster.RayServeClient",
        "RAY_ADDRESS": head.address,
        "RAY_DASHBOARD_URL": head.dashboard_url,
        "GANTRY_SERVE_HOST": "127.0.0.1",
        "GANTRY_SERVE_PORT": str(head.serve_port),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    # The worker and beat are started with this process's environment: they see the same.
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("make_tiny_model", str(scratch / "hf" / "tiny-llama"), verbosity=0)


class CeleryProcesses:
    """The worker and beat as bin/gantry-run starts them (same arguments, run from the repository
    root), with this process's environment; each logs to a file in the scratch folder."""

    READY_TIMEOUT_S = 180
    STOP_GRACE_S = 30  # warm shutdown lets a running tick finish; bounded like one tick's Serve calls

    def __init__(self, scratch: Path):
        celery = str(Path(sys.executable).with_name("celery"))
        self.logs = {"worker": scratch / "worker.log", "beat": scratch / "beat.log"}
        self.processes = {
            "worker": self._start("worker", [
                celery, "-A", "dashboard", "worker", "-Q", "serve,gates,health",
                "--concurrency=2", "--loglevel=INFO", "-n", f"gantry-bench-{os.getpid()}@%h",
            ]),
            "beat": self._start("beat", [
                celery, "-A", "dashboard", "beat", "--loglevel=INFO",
                f"--schedule={Path(os.environ['GANTRY_VAR_DIR']) / 'celerybeat-schedule'}",
            ]),
        }

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen:
        # Appending, one descriptor for stdout and stderr: the worker's processes share the file.
        with open(self.logs[name], "ab") as log:
            return subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> float:
        """Until the worker says it is ready (its pool is forked and it consumes the queues)."""
        started = time.monotonic()
        while b" ready." not in self.logs["worker"].read_bytes():
            self.check()
            if time.monotonic() - started > self.READY_TIMEOUT_S:
                raise RuntimeError(f"the Celery worker was not ready within {self.READY_TIMEOUT_S} s; see {self.logs['worker']}")
            time.sleep(0.2)
        self.check()
        return time.monotonic() - started

    def check(self) -> None:
        """A worker or beat that died fails the run now, with its log, rather than at a deadline."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"the Celery {name} exited (code {process.returncode}); see {self.logs[name]}")

    def stop(self) -> None:
        """SIGTERM (the worker finishes its running tick), then SIGKILL whatever of it is left."""
        trees = {name: process_tree(p.pid) for name, p in self.processes.items() if p.poll() is None}
        for name in trees:
            self.processes[name].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.STOP_GRACE_S
        for name in trees:
            try:
                self.processes[name].wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                say(f"the Celery {name} did not stop within {self.STOP_GRACE_S} s of SIGTERM; killing it")
        for pids in trees.values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for process in self.processes.values():
            process.wait()

    def tails(self, lines: int = 15) -> None:
        for name, path in self.logs.items():
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            say(f"last {min(lines, len(text))} lines of the Celery {name}'s log {path}:")
            for line in text[-lines:]:
                print(f"    {line[:300]}")


# Ray's processes by what they run (their title, /proc/<pid>/cmdline); the rest of the head's tree
# (GCS, raylet, dashboard and its agent, idle workers) is "ray head".
RAY_GROUPS = (
    ("replicas", (b"ray::ServeReplica", b"ray::SERVE_REPLICA", b"VLLM::")),  # the model's engine; the router's too
    ("controller", (b"ray::ServeController",)),
    ("proxy", (b"ray::ProxyActor",)),
)
CPU_GROUPS = ("bench", "worker+beat", "controller", "replicas", "proxy", "ray head")


class CpuMeter:
    """CPU time (user + system, from /proc) used while a model deploys, by who used it: this process
    (the API, both clocks' polling, the raw path's driver), the Celery worker and beat, Serve's
    controller, the replicas and their engines, the proxy, and the rest of the Ray head. A process
    that started meanwhile counts from zero, one that ended is missed (none does during a deploy)."""

    def __init__(self, head: RayHead, celery: CeleryProcesses):
        self.head, self.celery = head, celery

    def snapshot(self) -> dict[int, tuple[str, int]]:
        groups = {pid: _ray_group(pid) for pid in process_tree(self.head.process.pid)}
        for process in self.celery.processes.values():
            groups.update((pid, "worker+beat") for pid in process_tree(process.pid))
        groups[os.getpid()] = "bench"
        found = {}
        for pid, group in groups.items():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            found[pid] = (group, int(fields[11]) + int(fields[12]))  # utime + stime, in clock ticks
        return found

    def since(self, before: dict[int, tuple[str, int]]) -> dict[str, float]:
        used = dict.fromkeys(CPU_GROUPS, 0.0)
        for pid, (group, ticks) in self.snapshot().items():
            used[group] += (ticks - before.get(pid, (group, 0))[1]) / os.sysconf("SC_CLK_TCK")
        return used


def _ray_group(pid: int) -> str:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "ray head"
    return next((group for group, prefixes in RAY_GROUPS if title.startswith(prefixes)), "ray head")


# One finished reconcile task, as the worker logs it (celery.app.trace at INFO). Celery's own format
# until the pool process has connected to Ray, which then switches that process's logging to JSON:
# [2026-12-01 09:23:49,442: INFO/ForkPoolWorker-2] Task serving.tasks.reconcile[…] succeeded in 0.12s: {'ran': True, …}
# {"asctime": "2026-12-01 09:35:03,149", "levelname": "INFO", "message": "Task serving.tasks.reconcile[…] succeeded in …", "process": 27881, …}
PLAIN_LINE = re.compile(r"\[(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/(?P<process>[\w-]+)\] (?P<message>.*)")
TICK_MESSAGE = re.compile(r"Task serving\.tasks\.reconcile\[[^\]]+\] succeeded in (?P<seconds>[\d.e-]+)s: (?P<result>\{[^{}]*\})")


class WorkerLog:
    """The worker's reconcile tasks, read back from its log: when each ended (wall clock), how long
    it took, whether it ran a tick (or found the lease held and asked the holder to run once more).
    Evidence for the lag and the cost: how often the worker looked, and how busy it was meanwhile."""

    def __init__(self, path: Path):
        self.tasks: list[dict] = []
        for line in (path.read_text(errors="replace") if path.exists() else "").splitlines():
            record = self._record(line)
            match = TICK_MESSAGE.search(record.get("message", "")) if record else None
            if match is None:
                continue
            try:
                result = ast.literal_eval(match["result"])
            except (ValueError, SyntaxError):
                result = {}
            self.tasks.append({
                "ended": datetime.strptime(record["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp(),
                "seconds": float(match["seconds"]),
                "ran": bool(result.get("ran")),
            })

    @staticmethod
    def _record(line: str) -> dict | None:
        if line.startswith('{"asctime"'):
            try:
                data = json.loads(line)
            except ValueError:
                return None
            return {"at": data.get("asctime", ""), "message": str(data.get("message", ""))}
        match = PLAIN_LINE.match(line)
        return match.groupdict() if match else None

    def between(self, start: float, end: float) -> dict:
        """Tasks that ended in [start, end] (wall clock): how many, how many ran a tick, their p50
        and longest, and the longest stretch in which no tick ran (follow-ups working: about their
        countdown; beat alone: up to GANTRY_RECONCILE_INTERVAL_S)."""
        tasks = [t for t in self.tasks if start <= t["ended"] <= end + 0.2]
        ran = sorted(((t["ended"] - t["seconds"], t["ended"]) for t in tasks if t["ran"]))
        idle, covered = 0.0, start
        for began, ended in ran:
            idle = max(idle, began - covered)
            covered = max(covered, ended)
        return {
            "tasks": len(tasks),
            "ran": len(ran),
            "tick_p50_s": median([b - a for a, b in ran]),
            "tick_max_s": max((b - a for a, b in ran), default=float("nan")),
            "idle_max_s": idle if ran else float("nan"),
        }


class Api:
    """The serving API as a user's script calls it: bearer token, YAML in, JSON out."""

    def __init__(self) -> None:
        from django.contrib.auth import get_user_model
        from django.test import Client

        from dashboard.models import ApiToken

        user = get_user_model().objects.create_user("bench", password="unused-" + os.urandom(8).hex())
        _, raw = ApiToken.issue(user, "bench")
        self.client = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")

    def _check(self, response, expected: int) -> dict:
        body = response.json()
        if response.status_code != expected:
            raise RuntimeError(f"API answered {response.status_code}: {body}")
        return body

    def post_spec(self, suffix: str, replicas_: int = 1) -> dict:
        spec = f"model_id: {suffix}\nmodel_source: $HOME/common/hf/tiny-llama\nnum_replicas: {replicas_}\n"
        return self._check(self.client.post("/api/v2/serve/models", spec, content_type="application/yaml"), 202)

    def scale(self, key: str, n: int) -> dict:
        return self._check(self.client.patch(f"/api/v2/serve/models/{key}", json.dumps({"num_replicas": n}), content_type="application/json"), 202)

    def delete(self, key: str) -> dict:
        return self._check(self.client.delete(f"/api/v2/serve/models/{key}"), 202)

    def state(self, key: str) -> str:
        return self._check(self.client.get(f"/api/v2/serve/models/{key}"), 200)["state"]

    def base_url(self) -> str:
        return self._check(self.client.get("/api/v2/serve/models"), 200)["openai_base_url"]


# --- The two clocks ---------------------------------------------------------------------------------

class GantryView:
    """Gantry's view of one model: the state the API reports (GET /api/v2/serve/models/<key> returns
    the row's state as is), read from its row every 0.05 s — the API itself would add a request's
    CPU to every read. Notes when it is first RUNNING with generation `generation` applied (a
    revision of it exists: so a scale is not taken as done before the worker took it up) and when
    it is first DELETED."""

    EVERY_S = 0.05

    def __init__(self, key: str, since: float, generation: int = 1):
        self.key, self.since, self.generation = key, since, generation
        self.running_at: float | None = None
        self.deleted_at: float | None = None
        self.state = ""

    def poll(self) -> None:
        from serving.models import ServeModel, ServeRevision

        row = ServeModel.objects.filter(model_key=self.key).values("state", "error_summary").first()
        now = time.monotonic()
        self.state = row["state"]
        if self.state == "FAILED":
            raise RuntimeError(f"{self.key} FAILED: {row['error_summary']}")
        if self.state == "DELETED" and self.deleted_at is None:
            self.deleted_at = now
        if self.state == "RUNNING" and self.running_at is None:
            if ServeRevision.objects.filter(model_key=self.key, generation__gte=self.generation).exists():
                self.running_at = now


class ServeView:
    """Serve's own view of one application, read the way serve.run's wait reads it (the controller's
    get_serve_status for that one name: cheap), from the main thread between the bench's own steps.
    Not serve.status() from a second thread: in Ray 2.60 serve.status() builds DeploymentConfigs,
    which register and unregister a module for pickling by value in a process-wide set, so a
    serve.run in another thread at the same moment fails with "... is not registered for pickle by
    value" (seen here). It notes when the LLMServer deployment is first HEALTHY, the application
    first RUNNING, and first NOT_STARTED (Serve no longer lists it; what a delete waits for)."""

    EVERY_S = 0.1

    def __init__(self, app: str, since: float):
        self.app, self.since = app, since
        self.healthy_at: float | None = None
        self.first: dict[str, float] = {}

    @property
    def running_at(self) -> float | None:
        return self.first.get("RUNNING")

    @property
    def gone_at(self) -> float | None:
        return self.first.get("NOT_STARTED")

    def poll(self) -> None:
        import ray
        from ray.serve._private.application_state import StatusOverview
        from ray.serve.context import _get_global_client
        from ray.serve.generated.serve_pb2 import StatusOverview as StatusOverviewProto

        from ray.serve.exceptions import RayServeException

        try:
            controller = _get_global_client()._controller
        except RayServeException:  # before the first tick has started Serve: nothing is listed
            self.first.setdefault("NOT_STARTED", time.monotonic())
            return
        raw = ray.get(controller.get_serve_status.remote(self.app), timeout=30)
        status = StatusOverview.from_proto(StatusOverviewProto.FromString(raw))
        now = time.monotonic()
        servers = [d for d in status.deployment_statuses if d.name.startswith("LLMServer:")]
        if self.healthy_at is None and servers and all(_value(d.status) == "HEALTHY" for d in servers):
            self.healthy_at = now
        app_status = _value(status.app_status.status)
        self.first.setdefault(app_status, now)
        if app_status == "DEPLOY_FAILED":
            raise RuntimeError(f"{self.app}: Serve reports DEPLOY_FAILED: {status.app_status.message}")

    def wait_until(self, seen: Callable[[], float | None], what: str, timeout_s: float = DEPLOY_TIMEOUT_S) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if seen() is not None:
                return seen() - self.since
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.app} not {what} within {timeout_s:g} s (Serve saw {sorted(self.first)})")
            time.sleep(self.EVERY_S)

    def seconds(self, at: float | None) -> float:
        return float("nan") if at is None else at - self.since


def _value(enum_or_str) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


def watch(gantry: GantryView, serve: ServeView | None, done: Callable[[], bool], celery: CeleryProcesses, what: str, timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """Poll both clocks (Gantry every 0.05 s, Serve every 0.1 s) until `done()`; only reads."""
    deadline = time.monotonic() + timeout_s
    next_serve = 0.0
    while True:
        now = time.monotonic()
        gantry.poll()
        if serve is not None and now >= next_serve:
            serve.poll()
            next_serve = now + ServeView.EVERY_S
        if done():
            return
        if now > deadline:
            seen = f"; Serve saw {sorted(serve.first)}" if serve else ""
            raise RuntimeError(f"{gantry.key} not {what} within {timeout_s:g} s (Gantry says {gantry.state}{seen})")
        celery.check()
        time.sleep(GantryView.EVERY_S)


# --- Calling a model --------------------------------------------------------------------------------

def openai_client(base_url: str):
    import openai

    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


def chat(api, model: str) -> tuple[float, int]:
    started = time.perf_counter()
    reply = api.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True}
    )
    return time.perf_counter() - started, reply.usage.completion_tokens


def stream_ttft(api, model: str) -> float:
    started = time.perf_counter()
    first = None
    for chunk in api.chat.completions.create(
        model=model, messages=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True, extra_body={"ignore_eos": True}
    ):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    if first is None:
        raise RuntimeError("the stream carried no content")
    return first


def measure(base_url: str, model: str, n: int) -> dict:
    """The first request right after RUNNING (retried while it fails, at most 60 s), 2 warm-ups, then
    n streamed and n non-streamed chat completions, interleaved."""
    quiet()
    api = openai_client(base_url)
    started = time.monotonic()
    deadline = started + 60
    refused = 0
    while True:
        try:
            _, tokens = chat(api, model)
            break
        except Exception as exc:  # noqa: BLE001
            refused += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"{model} at {base_url} never answered: {exc}") from exc
            time.sleep(0.2)
    first_s = time.monotonic() - started
    stream_ttft(api, model)
    chat(api, model)
    ttft, latency = [], []
    for _ in range(n):
        ttft.append(stream_ttft(api, model))
        seconds, tokens = chat(api, model)
        latency.append(seconds)
    return {"first_s": first_s, "refused": refused, "ttft": ttft, "latency": latency, "tokens": tokens}


# --- The two paths ----------------------------------------------------------------------------------

def gantry_deploy(api: Api, celery: CeleryProcesses, suffix: str, cpu: CpuMeter | None = None) -> dict:
    """POST the spec and watch both clocks until Gantry and Serve both say RUNNING."""
    cpu_before = cpu.snapshot() if cpu else {}
    started, wall = time.monotonic(), time.time()
    created = api.post_spec(suffix)
    api_s = time.monotonic() - started
    key = created["model_key"]
    gantry, serve = GantryView(key, started, created["generation"]), ServeView(key, started)
    watch(gantry, serve, lambda: gantry.running_at is not None and serve.running_at is not None, celery, "RUNNING")
    from serving.models import ServeRevision

    applied = ServeRevision.objects.filter(model_key=key).order_by("number").values_list("applied_at", flat=True).first()
    return {
        "key": key,
        "api_s": api_s,
        "applied_s": applied.timestamp() - wall,  # POST -> the worker recorded its apply to Serve
        "wall": (wall, time.time()),
        "cpu_s": cpu.since(cpu_before) if cpu else {},
        "healthy_s": serve.seconds(serve.healthy_at),
        "serve_running_s": serve.seconds(serve.running_at),
        "to_running_s": gantry.running_at - started,
        "lag_s": gantry.running_at - serve.running_at,
    }


def gantry_delete(api: Api, celery: CeleryProcesses, key: str) -> dict:
    """API DELETE, then both clocks until Gantry says DELETED and Serve no longer lists the app."""
    started, wall = time.monotonic(), time.time()
    api.delete(key)
    gantry, serve = GantryView(key, started), ServeView(key, started)
    watch(gantry, serve, lambda: gantry.deleted_at is not None and serve.gone_at is not None, celery, "DELETED")
    return {
        "delete_wall": (wall, time.time()),
        "serve_gone_s": serve.seconds(serve.gone_at),
        "to_deleted_s": gantry.deleted_at - started,
        "delete_lag_s": gantry.deleted_at - serve.gone_at,
    }


def gantry_round(api: Api, celery: CeleryProcesses, cpu: CpuMeter, suffix: str, n: int, keep: bool) -> dict:
    quiet()
    say(f"gantry: POST spec {suffix!r}; the worker does the rest")
    result = gantry_deploy(api, celery, suffix, cpu)
    key = result["key"]
    say(f"gantry: {key} RUNNING after {result['to_running_s']:.1f} s; Serve said RUNNING at {result['serve_running_s']:.1f} s "
        f"(LLMServer HEALTHY at {result['healthy_s']:.1f} s): Gantry {result['lag_s']:.2f} s behind")
    result.update(measure(api.base_url(), key, n))
    say(f"gantry: TTFT p50 {median(result['ttft']) * 1000:.0f} ms, latency p50 {median(result['latency']) * 1000:.0f} ms")
    if not keep:
        result.update(gantry_delete(api, celery, key))
        say(f"gantry: {key} DELETED after {result['to_deleted_s']:.1f} s; Serve stopped listing it at {result['serve_gone_s']:.1f} s: "
            f"Gantry {result['delete_lag_s']:.2f} s behind")
    return result


def raw_round(name: str, model_source: Path, serve_port: int, n: int, cpu: CpuMeter) -> dict:
    """The same LLM config deployed with plain Serve: build_llm_deployment, the very application Gantry
    applies, timed until Serve reports it RUNNING. serve.run would block until then too but polls only
    every 1 s; serve.run_many(wait_for_applications_running=False) and the same status read every
    0.1 s is the tighter baseline (and the same for serve.delete). A bare LLMServer answers no HTTP
    in Ray 2.60 (no __call__ outside the experimental direct-streaming mode), so for the requests
    Ray's own OpenAiIngress — what build_openai_app puts in front of it — is then deployed as an
    application of its own on /<name>, bound to that LLMServer's handle, and is not timed."""
    from django.conf import settings
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress, make_fastapi_ingress
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from serving.llm_config import build_llm_config

    spec = {"model_id": name, "model_source": str(model_source), "num_replicas": 1, "gpus_per_replica": 0, "engine_kwargs": {}}
    config = build_llm_config(spec, engine="cpu", hf_home=str(settings.GANTRY_HF_ROOT))
    llm_config = LLMConfig(**config)
    app = build_llm_deployment(llm_config)
    quiet()
    say(f"raw: serve.run_many([RunTarget(build_llm_deployment(...), name={name!r})]) + 0.1 s polls")
    cpu_before = cpu.snapshot()
    started = time.monotonic()
    view = ServeView(name, started)
    serve.run_many([serve.RunTarget(app, name=name, route_prefix=None)], wait_for_applications_running=False)
    run_call_s = time.monotonic() - started
    view.wait_until(lambda: view.running_at, "RUNNING")
    result = {
        "key": name,
        "config": config,
        "to_running_s": view.seconds(view.running_at),
        "healthy_s": view.seconds(view.healthy_at),
        "run_call_s": run_call_s,
        "cpu_s": cpu.since(cpu_before),
    }
    say(f"raw: {name} RUNNING after {result['to_running_s']:.1f} s (LLMServer HEALTHY at {result['healthy_s']:.1f} s)")
    ingress_started = time.monotonic()
    ingress = serve.deployment(make_fastapi_ingress(OpenAiIngress), **OpenAiIngress.get_deployment_options([llm_config])).bind(
        llm_deployments={name: serve.get_deployment_handle(f"LLMServer:{name}", app_name=name)},
        model_cards={name: to_model_metadata(name, llm_config)},
    )
    serve.run(ingress, name=f"{name}-http", route_prefix=f"/{name}")
    result["ingress_s"] = time.monotonic() - ingress_started
    say(f"raw: Ray's OpenAiIngress for it RUNNING at /{name} after {result['ingress_s']:.1f} s (not timed above)")
    result.update(measure(f"http://127.0.0.1:{serve_port}/{name}/v1", name, n))
    say(f"raw: TTFT p50 {median(result['ttft']) * 1000:.0f} ms, latency p50 {median(result['latency']) * 1000:.0f} ms")
    serve.delete(f"{name}-http")  # the ingress first, untimed: Gantry has none of its own to delete
    deleting = time.monotonic()
    view = ServeView(name, deleting)
    serve.delete(name, _blocking=False)
    result["delete_s"] = view.wait_until(lambda: view.gone_at, "deleted", timeout_s=120)
    say(f"raw: {name} no longer listed by Serve {result['delete_s']:.1f} s after serve.delete")
    return result


# ray.llm's build_llm_deployment logs this (Ray's own format, with the pid) in the process that applies.
APPLY_LINE = re.compile(r"^INFO \S+ \S+ serve (?P<pid>\d+) -- =+ Deployment Options", re.MULTILINE)
POOL_PROCESSES = 2  # --concurrency=2, as bin/gantry-run


def warm_up(api: Api, celery: CeleryProcesses) -> list[dict]:
    """Untimed models through Gantry first: one, and a second if the first one's apply left a pool
    process of the worker that has never applied. The first one's enqueued tick starts Serve and
    the router (what the first tick of make run does); the first engine start on a fresh head is
    several seconds slower (cold caches); and each pool process imports ray.serve.llm and vLLM for
    its first apply (18-19 s here under load), which a long-running worker has done once already.
    Which process takes the next task is the pool's choice (here the second warm-up went to the
    cold one in two runs of three), so a round can still pay that import: its "applied to Serve
    at" says so. None of the warm-ups is in either path's figures; what they cost is printed."""
    quiet()
    warm: list[dict] = []
    for n in range(1, 3):
        result = gantry_deploy(api, celery, f"warm-up-{n}")
        result.update(gantry_delete(api, celery, result["key"]))
        applied_in = {int(m["pid"]) for m in APPLY_LINE.finditer(celery.logs["worker"].read_text(errors="replace"))}
        result["pool_processes_warm"] = len(applied_in)
        warm.append(result)
        say(f"warm-up {n}: RUNNING after {result['to_running_s']:.1f} s (applied to Serve at {result['applied_s']:.1f} s), "
            f"DELETED {result['to_deleted_s']:.1f} s after its DELETE; pool processes that have applied: {len(applied_in)}")
        if len(applied_in) >= POOL_PROCESSES or not applied_in:
            break
    return warm


# --- Restarts of other models' replicas ---------------------------------------------------------------

def serve_actors(head: RayHead) -> dict[str, tuple[str, str]]:
    """Serve's controller and proxies: actor name -> (actor id, worker id)."""
    with urllib.request.urlopen(f"{head.dashboard_url}/api/serve/applications/", timeout=10) as response:
        details = json.load(response)
    found = {}
    controller = details.get("controller_info") or {}
    if controller.get("actor_id"):
        found["controller"] = (controller["actor_id"], controller.get("worker_id", ""))
    for node, proxy in (details.get("proxies") or {}).items():
        found[f"proxy:{node[:8]}"] = (proxy.get("actor_id", ""), proxy.get("worker_id", ""))
    return found


def changed(before: dict, after: dict) -> int:
    """Replicas (or actors) that are gone, replaced (other actor or PID) or new."""
    return sum(1 for k, v in before.items() if after.get(k) != v) + sum(1 for k in after if k not in before)


class Traffic(threading.Thread):
    """Non-stream chat completions to one model through the router, back to back with a short pause."""

    def __init__(self, base_url: str, model: str):
        super().__init__(daemon=True)
        self.api, self.model = openai_client(base_url), model
        self.ok = self.failed = 0
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                chat(self.api, self.model)
                self.ok += 1
            except Exception as exc:  # noqa: BLE001
                self.failed += 1
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
            time.sleep(0.2)

    def take(self) -> tuple[int, int]:
        counts = (self.ok, self.failed)
        self.ok = self.failed = 0
        return counts

    def stop(self) -> None:
        self._halt.set()
        self.join(70)


def restarts(head: RayHead, api: Api, celery: CeleryProcesses, model_a: str) -> list[dict]:
    """Add B, scale it 1 -> 2, delete it, each through the API, waiting for the state the worker
    reports (this process only polls); Serve's own clock for the add and the delete."""
    from serving.cluster.serve import ROUTER_APP

    def snapshot() -> dict:
        return {"A": replicas(head, model_a), "router": replicas(head, ROUTER_APP), "serve": serve_actors(head)}

    quiet()
    traffic = Traffic(api.base_url(), model_a)
    traffic.start()
    steps: list[dict] = []
    b: dict = {}

    def add_b() -> float:
        result = gantry_deploy(api, celery, "b")
        b["key"] = result["key"]
        b["first"] = replicas(head, b["key"])
        return result["serve_running_s"]

    def scale_b() -> float:
        started = time.monotonic()
        patched = api.scale(b["key"], 2)
        gantry = GantryView(b["key"], started, patched["generation"])
        watch(gantry, None, lambda: gantry.running_at is not None, celery, "RUNNING with 2 replicas")
        b["two"] = replicas(head, b["key"])
        return float("nan")

    def delete_b() -> float:
        return gantry_delete(api, celery, b["key"])["serve_gone_s"]

    try:
        original = snapshot()
        say(f"restarts: A={model_a} has {len(original['A'])} replica(s), router {len(original['router'])}, serve actors {len(original['serve'])}")
        traffic.take()
        for label, action in (("add B (1 replica)", add_b), ("scale B 1 -> 2", scale_b), ("delete B", delete_b)):
            before = snapshot()
            started = time.monotonic()
            serve_s = action()
            seconds = time.monotonic() - started
            after = snapshot()
            ok, failed = traffic.take()
            step = {
                "step": label,
                "seconds": seconds,
                "serve_s": serve_s,
                **{group: changed(before[group], after[group]) for group in ("A", "router", "serve")},
                "since_start": changed(original["A"], after["A"]) + changed(original["router"], after["router"]),
                "calls_ok": ok,
                "calls_failed": failed,
            }
            steps.append(step)
            serve_said = "" if serve_s != serve_s else f" (Serve {serve_s:.1f} s)"
            say(f"restarts: {label} took {seconds:.1f} s{serve_said}; changed A={step['A']} router={step['router']} "
                f"serve={step['serve']}; calls to A {ok} ok, {failed} failed")
        kept = set(b.get("first", {}).items()) <= set(b.get("two", {}).items())
        say(f"restarts: scaling B 1 -> 2 kept B's first replica (same id, actor, PID): {'yes' if kept else 'NO'}")
        steps.append({"b_first_replica_kept": kept})
    finally:
        traffic.stop()
        for error in traffic.errors[:3]:
            say(f"restarts: a call to A failed: {error}")
    return steps


# --- Report -------------------------------------------------------------------------------------------

def report(gantry: list[dict], raw: list[dict], steps: list[dict], order: list[str], warm: list[dict], worker: WorkerLog, n: int) -> None:
    from django.conf import settings

    def pooled(rounds: list[dict], key: str) -> list[float]:
        return [v for r in rounds for v in r[key]]

    def med(rounds: list[dict], key: str) -> float:
        return median([r[key] for r in rounds if key in r])

    deleted = [r for r in gantry if "to_deleted_s" in r]
    lags, delete_lags = [r["lag_s"] for r in gantry], [r["delete_lag_s"] for r in deleted]
    refused = sum(r["refused"] for r in gantry + raw)
    broker = settings.CELERY_BROKER_URL
    print()
    print(f"Order {' '.join(order)} ({len(gantry)} Gantry and {len(raw)} raw rounds, one model at a time besides the router); "
          f"deploy and delete times are medians of the rounds, TTFT and latency medians of all {n * len(gantry)} requests per path "
          f"(chat, {MAX_TOKENS} tokens, ignore_eos, temperature 0).")
    print(f"Gantry: the API (POST / DELETE, token) in this process, the on-commit enqueue to {broker}, a real Celery worker "
          f"(-Q serve,gates,health --concurrency=2) and beat (every GANTRY_RECONCILE_INTERVAL_S={settings.GANTRY_RECONCILE_INTERVAL_S} s) "
          f"as bin/gantry-run starts them; follow-ups GANTRY_RECONCILE_FOLLOWUP_MS={settings.GANTRY_RECONCILE_FOLLOWUP_MS} ms while "
          "DEPLOYING/DELETING. Gantry's clock: the state the API reports (its row, read every 0.05 s); Serve's: get_serve_status "
          "every 0.1 s. Calls through the gantry-router's /v1.")
    print("Raw:    serve.run_many([RunTarget(build_llm_deployment(LLMConfig(**same config)), name='raw-<n>')]) until Serve reports "
          "RUNNING, serve.delete(_blocking=False) until Serve no longer lists it (0.1 s polls; serve.run and serve.delete poll every "
          "1 s); calls through Ray's OpenAiIngress on /raw-<n>, deployed afterwards and not timed.")
    print(f"Before the rounds, not in any figure: {len(warm)} warm-up model(s) through Gantry (a second one if a worker pool "
          "process had not applied one yet; the first tick also started Serve and the router): "
          + "; ".join(f"RUNNING after {w['to_running_s']:.1f} s, applied to Serve at {w['applied_s']:.1f} s" for w in warm)
          + f". Pool processes warm: {warm[-1]['pool_processes_warm']} of {POOL_PROCESSES}.\n")
    rows = [
        ("time to RUNNING (s)", med(gantry, "to_running_s"), med(raw, "to_running_s"), 1.0,
         "goal <= 1.05; Gantry: POST -> API says RUNNING; raw: run_many -> Serve says RUNNING"),
        ("  Serve: app RUNNING (s)", med(gantry, "serve_running_s"), med(raw, "to_running_s"), 1.0,
         "Serve's own clock on both paths (Gantry's: from the POST)"),
        ("  Serve: LLMServer HEALTHY (s)", med(gantry, "healthy_s"), med(raw, "healthy_s"), 1.0, ""),
        ("  Gantry behind Serve (s)", median(lags), None, 1.0, f"goal <= 1; per round {', '.join(f'{v:.2f}' for v in lags)}"),
        *((f"  CPU s: {group}", median([r["cpu_s"][group] for r in gantry]),
           median([r["cpu_s"][group] for r in raw]), 1.0, note)
          for group, note in (
              ("replicas", "the engine starting (same work on both paths)"),
              ("worker+beat", "Gantry's ticks (raw: beat's every 10 s only)"),
              ("controller", "Serve's controller, which each tick's serve.status() calls"),
              ("ray head", "GCS, raylet, dashboard: cluster_resources() and the placement-group table"),
              ("bench", "this process: the API, both clocks' polls (raw: Serve's only), raw's driver"),
          )),
        ("time to DELETED (s)", med(deleted, "to_deleted_s"), med(raw, "delete_s"), 1.0,
         "Gantry: API DELETE -> API says DELETED; raw: serve.delete -> Serve no longer lists it"),
        ("  Serve: no longer listed (s)", med(deleted, "serve_gone_s"), med(raw, "delete_s"), 1.0, "Serve's own clock on both paths"),
        ("  Gantry behind Serve (s)", median(delete_lags), None, 1.0, f"per round {', '.join(f'{v:.2f}' for v in delete_lags)}"),
        ("first request after RUNNING (ms)", med(gantry, "first_s"), med(raw, "first_s"), 1000.0, f"cold; {refused} refused before it (retried)"),
        ("TTFT, streamed (ms)", median(pooled(gantry, "ttft")), median(pooled(raw, "ttft")), 1000.0, ""),
        ("latency, non-stream (ms)", median(pooled(gantry, "latency")), median(pooled(raw, "latency")), 1000.0, ""),
    ]
    print(f"{'figure':<33} {'Gantry':>8} {'raw':>8} {'Gantry/raw':>11}  note")
    for label, g, r, scale, note in rows:
        digits = 2 if label.strip().startswith("Gantry behind") else 1 if scale == 1 else 0
        raw_cell = f"{r * scale:>8.{digits}f}" if r is not None else f"{'-':>8}"
        ratio = f"{g / r:>10.2f}x" if r else f"{'-':>11}"
        print(f"{label:<33} {g * scale:>8.{digits}f} {raw_cell} {ratio}  {note}")
    print()
    print("per round, POST to RUNNING (worker: reconcile tasks that ended meanwhile, those that ran a tick (the others found the "
          "lease held), the ticks' p50 and longest, the longest stretch with no tick running, from the worker's log; CPU seconds "
          "used meanwhile by each group of processes, from /proc):")
    for r in gantry:
        w = worker.between(*r["wall"])
        line = (f"  gantry {r['key']:<28} Serve RUNNING {r['serve_running_s']:5.1f} s, Gantry {r['to_running_s']:5.1f} s (+{r['lag_s']:.2f}; "
                f"API {r['api_s'] * 1000:.0f} ms, applied to Serve at {r['applied_s']:.1f} s; worker: {w['tasks']} tasks, {w['ran']} ticks, "
                f"p50 {w['tick_p50_s'] * 1000:.0f} ms, longest {w['tick_max_s']:.1f} s, longest with no tick {w['idle_max_s']:.2f} s; "
                f"CPU s: {_cpu(r)}) "
                f"TTFT {median(r['ttft']) * 1000:.0f} ms latency {median(r['latency']) * 1000:.0f} ms")
        if "to_deleted_s" in r:
            d = worker.between(*r["delete_wall"])
            line += (f"; delete: Serve {r['serve_gone_s']:.1f} s, Gantry {r['to_deleted_s']:.1f} s (+{r['delete_lag_s']:.2f}; "
                     f"{d['ran']} ticks, longest with no tick {d['idle_max_s']:.2f} s)")
        print(line)
    for r in raw:
        print(f"  raw    {r['key']:<28} Serve RUNNING {r['to_running_s']:5.1f} s (LLMServer HEALTHY {r['healthy_s']:.1f} s; "
              f"run_many returned after {r['run_call_s']:.1f} s; CPU s: {_cpu(r)}) "
              f"ingress {r['ingress_s']:.1f} s TTFT {median(r['ttft']) * 1000:.0f} ms latency {median(r['latency']) * 1000:.0f} ms "
              f"delete {r['delete_s']:.1f} s")
    if steps:
        print()
        print(f"{'with A RUNNING, through Gantry':<32} {'Gantry s':>8} {'Serve s':>8} {'A':>3} {'router':>7} {'serve':>6} {'since start':>12} {'calls to A ok/failed':>21}")
        for s in steps:
            if "step" not in s:
                continue
            serve_cell = "-" if s["serve_s"] != s["serve_s"] else f"{s['serve_s']:.1f}"
            print(f"{s['step']:<32} {s['seconds']:>8.1f} {serve_cell:>8} {s['A']:>3} {s['router']:>7} {s['serve']:>6} {s['since_start']:>12} "
                  f"{str(s['calls_ok']) + '/' + str(s['calls_failed']):>21}")
        kept = next((s["b_first_replica_kept"] for s in steps if "b_first_replica_kept" in s), None)
        print("(replicas changed: gone, replaced or new, by replica id, actor id and PID; goal 0. serve = controller + proxy actors. "
              "Gantry s: API call -> the state the API reports; Serve s: -> Serve RUNNING / no longer listed."
              f" B's own first replica kept when scaled 1 -> 2: {'yes' if kept else 'no'})")


def _cpu(result: dict) -> str:
    return ", ".join(f"{group} {seconds:.1f}" for group, seconds in result["cpu_s"].items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path, ABBA order ending with Gantry (default 3: R G G R R G)")
    parser.add_argument("--requests", type=int, default=10, help="streamed and non-stream requests per round (default 10)")
    parser.add_argument("--broker", default="filesystem://",
                        help="Celery broker (default filesystem://, make run's, in the scratch folder; e.g. redis://127.0.0.1:6379/9, compose's shape)")
    parser.add_argument("--no-restarts", action="store_true", help="skip the add/scale/delete restart check")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (database, worker and beat logs) after a successful run too")
    args = parser.parse_args()
    quiet()

    scratch = Path(tempfile.mkdtemp(prefix="gantry-bench-serve-"))
    head = RayHead()  # starts `ray start --head` in the background; Django and the model meanwhile
    celery: CeleryProcesses | None = None
    ray_connected = succeeded = False
    try:
        setup_django(scratch, head, args.broker)
        model_dir = (scratch / "hf" / "tiny-llama").resolve()
        head.wait_until_up()
        say(f"private Ray head at {head.address}, dashboard {head.dashboard_url}, Serve HTTP on {head.serve_port}; scratch {scratch}")
        load_before = machine_load(head)
        say(load_before)

        celery = CeleryProcesses(scratch)
        ready_s = celery.wait_ready()
        say(f"Celery worker ready after {ready_s:.1f} s, beat started (broker {args.broker}; logs {celery.logs['worker']}, {celery.logs['beat']})")

        import ray

        # This process's own driver: the raw path's serve.run and both paths' ServeView. Gantry's
        # path never uses it; the worker has its own.
        ray.init(address=head.address, namespace="gantry", log_to_driver=False, configure_logging=False)
        ray_connected = True
        api = Api()
        warm = warm_up(api, celery)
        quiet()

        # ABBA pairs that end with Gantry, so the model kept for the restart check runs alone:
        # 1 round: R G; 2: G R R G; 3: R G G R R G.
        order = [p for i in range(args.rounds) for p in (("G", "R") if (args.rounds - 1 - i) % 2 else ("R", "G"))]
        gantry, raw = [], []
        last_g = len(order) - 1 - order[::-1].index("G")
        cpu = CpuMeter(head, celery)
        for i, path in enumerate(order):
            if path == "G":
                gantry.append(gantry_round(api, celery, cpu, f"a{len(gantry) + 1}", args.requests, keep=(i == last_g and not args.no_restarts)))
            else:
                raw.append(raw_round(f"raw-{len(raw) + 1}", model_dir, head.serve_port, args.requests, cpu))
        from serving.models import ServeModel

        # Same work on both paths: the config Gantry applied equals the raw one but for the model id.
        applied = ServeModel.objects.get(model_key=gantry[0]["key"]).revisions.first().config
        expected = json.loads(json.dumps(raw[0]["config"]).replace(raw[0]["key"], gantry[0]["key"]))
        same = applied == expected
        say(f"config Gantry applied == raw config but for the model id: {'yes' if same else 'NO: ' + json.dumps(applied)}")
        tokens = {r["tokens"] for r in gantry + raw}
        say(f"completion tokens per request: {sorted(tokens)}")

        steps: list[dict] = []
        if not args.no_restarts:
            model_a = gantry[-1]["key"]
            steps = restarts(head, api, celery, model_a)
            # Timed like the other rounds' deletes (A alone besides the router again), and counted with them.
            gantry[-1].update(gantry_delete(api, celery, model_a))
            say(f"gantry: {model_a} DELETED after {gantry[-1]['to_deleted_s']:.1f} s; Serve stopped listing it at "
                f"{gantry[-1]['serve_gone_s']:.1f} s: Gantry {gantry[-1]['delete_lag_s']:.2f} s behind")
        say(f"the API says {gantry[0]['key']} is {api.state(gantry[0]['key'])}")
        report(gantry, raw, steps, order, warm, WorkerLog(celery.logs["worker"]), args.requests)
        print(f"machine: at the start {load_before}; at the end {machine_load(head)}")
        succeeded = True
    except BaseException as exc:
        # Printed here, before the head stops: once it is gone Ray's driver threads may end the
        # process before Python gets to print the traceback.
        import traceback

        traceback.print_exc()
        say(f"FAILED: {type(exc).__name__}: {exc}")
        if celery is not None:
            celery.tails()
        raise
    finally:
        if celery is not None:
            celery.stop()  # before the head: a worker whose cluster vanished only logs errors
        if ray_connected:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        head.stop()
        if succeeded and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
            say("stopped the worker, beat and the private Ray head; removed the scratch folder")
        else:
            shutil.rmtree(scratch / "hf", ignore_errors=True)
            say(f"stopped the worker, beat and the private Ray head; kept {scratch} (worker.log, beat.log, bench.sqlite3)")


if __name__ == "__main__":
    main()
