"""What Gantry costs on top of plain Ray Serve, and what it restarts, on a private Ray head.

In one run, with the real CPU engine and the tiny model (built here, offline):

1. Gantry path: a user posts the spec to the API (token auth, Django's test client); the bench then
   runs one reconcile tick at once (the on-commit enqueue) and one every 0.5 s (beat's real period is
   GANTRY_RECONCILE_INTERVAL_S, 10 s by default) until the model is RUNNING. Then time to first token
   (streamed chat completion) and non-stream latency through the gantry-router's /v1.
2. Raw baseline: the same LLM config deployed with plain Serve, `build_llm_deployment(LLMConfig(**config))`
   as application "raw-<n>" (the very application Gantry applies, without Gantry), timed until Serve
   reports it RUNNING (polled every 0.1 s; `serve.run` itself polls every 1 s).
   Then Ray's own OpenAiIngress (build_openai_app's front end) is bound to it as a second application
   on /raw-<n> (not timed) and called directly, not through the router.
   Rounds run in ABBA order ending with Gantry (R G G R R G by default), one model at a time; the
   router (deployed before the first round) is the only other application.
3. Ratios Gantry/raw of the medians.
4. Restarts: with the last Gantry model (A) RUNNING, add model B, scale B 1 -> 2, delete B, all
   through the API and the reconciler, and count after each step how many replicas of A, of the
   router, and of Serve's controller and proxy changed (replica id, actor id and PID), while a
   thread keeps calling A through the router.

    .venv/bin/python bench/serve_overhead.py                 # ~7.5 min on the 2-core dev machine
    .venv/bin/python bench/serve_overhead.py --rounds 1      # raw once, Gantry once (~5 min)
    .venv/bin/python bench/serve_overhead.py --tick 2 --no-restarts   # fewer ticks, no restart check

It never touches another Ray head: it starts its own on free ports (tests/ray_cluster.py) and stops
only the processes it started. The scratch database, the model and the head's temp dir are removed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.ray_cluster import RayHead, replicas  # noqa: E402 — after the path; imports no Django

TICK_EVERY_S = 0.5
PROMPT = [{"role": "user", "content": "Hello, how are you today?"}]
MAX_TOKENS = 16  # with ignore_eos both paths generate exactly this many tokens
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


NOISY_LOGGERS = ("httpx", "httpx2", "httpcore", "vllm", "ray", "ray.serve", "ray.llm", "kombu")


def quiet() -> None:
    """Ray Serve, ray.llm and vLLM (re)configure their loggers when first used in this process and log
    every request at INFO; called again after each such point so the output stays the bench's own."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if name == "kombu" else logging.WARNING)


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


# --- Setting up: scratch Django, tiny model, private head ------------------------------------------

def setup_django(scratch: Path, head: RayHead) -> None:
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
        # The on-commit enqueue lands in a scratch folder nobody reads: this bench is the worker.
        "CELERY_BROKER_URL": "filesystem://",
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "GANTRY_SERVE_CLIENT": "serving.client.RayServeClient",
        "RAY_ADDRESS": head.address,
        "RAY_DASHBOARD_URL": head.dashboard_url,
        "GANTRY_SERVE_HOST": "127.0.0.1",
        "GANTRY_SERVE_PORT": str(head.serve_port),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("make_tiny_model", str(scratch / "hf" / "tiny-llama"), verbosity=0)


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

    def base_url(self) -> str:
        return self._check(self.client.get("/api/v2/serve/models"), 200)["openai_base_url"]


def drive(key: str, state: str, timeout_s: float = 400, view: "ServeView | None" = None) -> tuple[float, list[float]]:
    """Reconcile now (the on-commit enqueue), then every TICK_EVERY_S, until `key` is in `state`.
    Returns the moment it got there (monotonic) and how long each tick took. `view` is polled
    between the ticks."""
    from serving.client import get_client
    from serving.models import ServeModel
    from serving.reconciler import reconcile

    client = get_client()
    ticks: list[float] = []
    deadline = time.monotonic() + timeout_s
    while True:
        started = time.monotonic()
        reconcile(client)
        ticks.append(time.monotonic() - started)
        model = ServeModel.objects.get(model_key=key)
        if model.state == state:
            return time.monotonic(), ticks
        if model.state == "FAILED":
            raise RuntimeError(f"{key} FAILED: {model.error_summary}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key} not {state} within {timeout_s:g} s (it is {model.state}: {model.last_observation})")
        if view is not None:
            view.wait(TICK_EVERY_S)
        else:
            time.sleep(TICK_EVERY_S)


class ServeView:
    """Serve's own view of one application, read the way serve.run's wait reads it (the controller's
    get_serve_status for that one name: cheap) every 0.1 s, from the main thread between the bench's
    own steps. Not serve.status() from a second thread: in Ray 2.60 serve.status() builds
    DeploymentConfigs, which register and unregister a module for pickling by value in a process-wide
    set, so a serve.run in another thread at the same moment fails with "... is not registered for
    pickle by value" (seen here). It notes when the LLMServer deployment is first HEALTHY and the
    application first RUNNING: the floor both paths are measured against."""

    EVERY_S = 0.1

    def __init__(self, app: str, since: float):
        self.app, self.since = app, since
        self.healthy_at: float | None = None
        self.running_at: float | None = None

    def poll(self) -> None:
        if self.running_at is not None:
            return
        import ray
        from ray.serve._private.application_state import StatusOverview
        from ray.serve.context import _get_global_client
        from ray.serve.generated.serve_pb2 import StatusOverview as StatusOverviewProto

        raw = ray.get(_get_global_client()._controller.get_serve_status.remote(self.app), timeout=30)
        status = StatusOverview.from_proto(StatusOverviewProto.FromString(raw))
        now = time.monotonic()
        servers = [d for d in status.deployment_statuses if d.name.startswith("LLMServer:")]
        if self.healthy_at is None and servers and all(_value(d.status) == "HEALTHY" for d in servers):
            self.healthy_at = now
        if _value(status.app_status.status) == "RUNNING":
            self.running_at = now
        elif _value(status.app_status.status) == "DEPLOY_FAILED":
            raise RuntimeError(f"{self.app}: Serve reports DEPLOY_FAILED: {status.app_status.message}")

    def wait(self, seconds: float) -> None:
        """Sleep `seconds`, polling meanwhile."""
        until = time.monotonic() + seconds
        while True:
            self.poll()
            left = until - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(self.EVERY_S, left))

    def wait_running(self, timeout_s: float = 400) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.poll()
            if self.running_at is not None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.app} not RUNNING within {timeout_s:g} s")
            time.sleep(self.EVERY_S)

    def seconds(self) -> tuple[float, float]:
        """Seconds from `since` to HEALTHY and to RUNNING (nan if not seen)."""
        return tuple(float("nan") if t is None else t - self.since for t in (self.healthy_at, self.running_at))


def _value(enum_or_str) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


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

def gantry_round(api: Api, suffix: str, n: int, keep: bool) -> dict:
    quiet()
    say(f"gantry: POST spec {suffix!r}")
    started = time.monotonic()
    created = api.post_spec(suffix)
    api_s = time.monotonic() - started
    key = created["model_key"]
    view = ServeView(key, started)
    running_at, ticks = drive(key, "RUNNING", view=view)
    view.poll()  # the tick that saw RUNNING may have come before the view's next poll
    healthy_s, serve_running_s = view.seconds()
    result = {
        "key": key,
        "to_running_s": running_at - started,
        "healthy_s": healthy_s,
        "serve_running_s": serve_running_s,
        "api_s": api_s,
        "apply_tick_s": ticks[0],
        "tick_s": median(ticks[1:]),
        "ticks": len(ticks),
        "ticks_busy_s": sum(ticks),
    }
    say(f"gantry: {key} RUNNING after {result['to_running_s']:.1f} s (Serve: LLMServer HEALTHY at {healthy_s:.1f} s, app RUNNING at {serve_running_s:.1f} s; {len(ticks)} ticks)")
    result.update(measure(api.base_url(), key, n))
    say(f"gantry: TTFT p50 {median(result['ttft']) * 1000:.0f} ms, latency p50 {median(result['latency']) * 1000:.0f} ms")
    if not keep:
        deleting = time.monotonic()
        api.delete(key)
        deleted_at, _ = drive(key, "DELETED")
        result["delete_s"] = deleted_at - deleting
        say(f"gantry: {key} DELETED after {result['delete_s']:.1f} s")
    return result


def raw_round(name: str, model_source: Path, serve_port: int, n: int) -> dict:
    """The same LLM config deployed with plain Serve: build_llm_deployment, the very application Gantry
    applies, timed until Serve reports it RUNNING. serve.run would block until then too but polls only
    every 1 s; serve.run_many(wait_for_applications_running=False) and the same status read every
    0.1 s is the tighter baseline. A bare LLMServer answers no HTTP in Ray 2.60 (no __call__ outside
    the experimental direct-streaming mode), so for the requests Ray's own OpenAiIngress — what
    build_openai_app puts in front of it — is then deployed as an application of its own on /<name>,
    bound to that LLMServer's handle, and is not timed."""
    from django.conf import settings
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress, make_fastapi_ingress
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from serving.llm_config import build_llm_config

    spec = {"model_id": name, "model_source": str(model_source), "num_replicas": 1, "gpus_per_replica": 0, "engine_kwargs": {}}
    config = build_llm_config(spec, engine="cpu", hf_home=str(settings.GANTRY_HF_ROOT))
    llm_config = LLMConfig(**config)
    quiet()
    say(f"raw: serve.run_many([RunTarget(build_llm_deployment(...), name={name!r})]) + 0.1 s polls")
    started = time.monotonic()
    view = ServeView(name, started)
    serve.run_many([serve.RunTarget(build_llm_deployment(llm_config), name=name, route_prefix=None)], wait_for_applications_running=False)
    view.wait_running()
    healthy_s, serve_running_s = view.seconds()
    result = {
        "key": name,
        "config": config,
        "to_running_s": serve_running_s,
        "healthy_s": healthy_s,
        "serve_running_s": serve_running_s,
    }
    say(f"raw: {name} RUNNING after {result['to_running_s']:.1f} s (Serve: LLMServer HEALTHY at {healthy_s:.1f} s, app RUNNING at {serve_running_s:.1f} s)")
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
    deleting = time.monotonic()
    serve.delete(f"{name}-http")
    serve.delete(name)
    result["delete_s"] = time.monotonic() - deleting
    say(f"raw: {name} and its ingress deleted after {result['delete_s']:.1f} s")
    return result


def warm_up(model_source: Path) -> float:
    """One untimed deploy first: the first engine start on a fresh head is several seconds slower
    (cold caches), and the first apply in a fresh process imports ray.serve.llm and vLLM (~3 s), which
    a long-running Celery worker has done once already. Neither belongs to either path's figures."""
    from django.conf import settings
    from ray import serve
    from ray.serve.llm import LLMConfig, build_llm_deployment

    from serving.llm_config import build_llm_config

    spec = {"model_id": "warm-up", "model_source": str(model_source), "num_replicas": 1, "gpus_per_replica": 0, "engine_kwargs": {}}
    config = build_llm_config(spec, engine="cpu", hf_home=str(settings.GANTRY_HF_ROOT))
    quiet()
    started = time.monotonic()
    serve.run(build_llm_deployment(LLMConfig(**config)), name="warm-up", route_prefix=None)
    seconds = time.monotonic() - started
    serve.delete("warm-up")
    return seconds


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


def restarts(head: RayHead, api: Api, model_a: str) -> list[dict]:
    from serving.client import ROUTER_APP

    def snapshot() -> dict:
        return {"A": replicas(head, model_a), "router": replicas(head, ROUTER_APP), "serve": serve_actors(head)}

    quiet()
    traffic = Traffic(api.base_url(), model_a)
    traffic.start()
    steps: list[dict] = []
    b_key: dict = {}

    def add_b():
        b_key["key"] = api.post_spec("b")["model_key"]
        drive(b_key["key"], "RUNNING")
        b_key["first"] = replicas(head, b_key["key"])

    def scale_b():
        api.scale(b_key["key"], 2)
        drive(b_key["key"], "RUNNING")
        b_key["two"] = replicas(head, b_key["key"])

    def delete_b():
        api.delete(b_key["key"])
        drive(b_key["key"], "DELETED")

    try:
        original = snapshot()
        say(f"restarts: A={model_a} has {len(original['A'])} replica(s), router {len(original['router'])}, serve actors {len(original['serve'])}")
        traffic.take()
        for label, action in (("add B (1 replica)", add_b), ("scale B 1 -> 2", scale_b), ("delete B", delete_b)):
            before = snapshot()
            started = time.monotonic()
            action()
            seconds = time.monotonic() - started
            after = snapshot()
            ok, failed = traffic.take()
            step = {
                "step": label,
                "seconds": seconds,
                **{group: changed(before[group], after[group]) for group in ("A", "router", "serve")},
                "since_start": changed(original["A"], after["A"]) + changed(original["router"], after["router"]),
                "calls_ok": ok,
                "calls_failed": failed,
            }
            steps.append(step)
            say(f"restarts: {label} took {seconds:.1f} s; changed A={step['A']} router={step['router']} serve={step['serve']}; calls to A {ok} ok, {failed} failed")
        kept = set(b_key.get("first", {}).items()) <= set(b_key.get("two", {}).items())
        say(f"restarts: scaling B 1 -> 2 kept B's first replica (same id, actor, PID): {'yes' if kept else 'NO'}")
        steps.append({"b_first_replica_kept": kept})
    finally:
        traffic.stop()
        for error in traffic.errors[:3]:
            say(f"restarts: a call to A failed: {error}")
    return steps


# --- Report -------------------------------------------------------------------------------------------

def report(gantry: list[dict], raw: list[dict], steps: list[dict], order: list[str], router_s: float, warm_s: float, n: int) -> None:
    def pooled(rounds: list[dict], key: str) -> list[float]:
        return [v for r in rounds for v in r[key]]

    g_run, r_run = median([r["to_running_s"] for r in gantry]), median([r["to_running_s"] for r in raw])
    g_ok, r_ok = median([r["healthy_s"] for r in gantry]), median([r["healthy_s"] for r in raw])
    g_serve, r_serve = median([r["serve_running_s"] for r in gantry]), median([r["serve_running_s"] for r in raw])
    g_first, r_first = median([r["first_s"] for r in gantry]), median([r["first_s"] for r in raw])
    refused = sum(r["refused"] for r in gantry + raw)
    g_ttft, r_ttft = median(pooled(gantry, "ttft")), median(pooled(raw, "ttft"))
    g_lat, r_lat = median(pooled(gantry, "latency")), median(pooled(raw, "latency"))
    lag = median([r["to_running_s"] - r["serve_running_s"] for r in gantry])

    print()
    print(f"Order {' '.join(order)} ({len(gantry)} Gantry and {len(raw)} raw rounds, one model at a time besides the router); "
          f"deploy times are medians of the rounds, TTFT and latency medians of all {n * len(gantry)} requests per path "
          f"(chat, {MAX_TOKENS} tokens, ignore_eos, temperature 0).")
    print(f"Gantry: POST /api/v2/serve/models, then a reconcile tick at once and every {TICK_EVERY_S} s (beat's real period is "
          "GANTRY_RECONCILE_INTERVAL_S=10 s, plus the on-commit enqueue); calls through the gantry-router's /v1.")
    print("Raw:    serve.run_many([RunTarget(build_llm_deployment(LLMConfig(**same config)), name='raw-<n>')]) until Serve reports "
          "RUNNING (polled every 0.1 s; serve.run polls every 1 s); calls through Ray's OpenAiIngress (build_openai_app's "
          "front end) on /raw-<n>, deployed afterwards and not timed.")
    print(f"Before the rounds, not in any figure: Serve + router start {router_s:.1f} s; one warm-up deploy {warm_s:.1f} s (cold head).\n")
    rows = [
        ("time to RUNNING (s)", g_run, r_run, 1.0, "goal <= 1.10; Gantry: POST -> API state RUNNING; raw: Serve says RUNNING"),
        ("  Serve: LLMServer HEALTHY (s)", g_ok, r_ok, 1.0, "Serve's own view, polled every 0.1 s on both paths"),
        ("  Serve: app RUNNING (s)", g_serve, r_serve, 1.0, f"Gantry says RUNNING {lag:.1f} s after Serve does (median)"),
        ("first request after RUNNING (ms)", g_first, r_first, 1000.0, f"cold; {refused} refused before it (retried)"),
        ("TTFT, streamed (ms)", g_ttft, r_ttft, 1000.0, ""),
        ("latency, non-stream (ms)", g_lat, r_lat, 1000.0, ""),
    ]
    print(f"{'figure':<31} {'Gantry':>8} {'raw':>8} {'Gantry/raw':>11}  note")
    for label, g, r, scale, note in rows:
        digits = 1 if scale == 1 else 0
        print(f"{label:<31} {g * scale:>8.{digits}f} {r * scale:>8.{digits}f} {g / r:>10.2f}x  {note}")
    print()
    print("per round (Serve: LLMServer HEALTHY / app RUNNING):")
    for r in gantry:
        print(f"  gantry {r['key']:<28} RUNNING {r['to_running_s']:5.1f} s (Serve {r['healthy_s']:.1f}/{r['serve_running_s']:.1f} s; API {r['api_s'] * 1000:.0f} ms, "
              f"apply tick {r['apply_tick_s'] * 1000:.0f} ms, {r['ticks']} ticks, p50 {r['tick_s'] * 1000:.0f} ms, "
              f"busy {r['ticks_busy_s']:.1f} s = {r['ticks_busy_s'] / r['to_running_s']:.0%}) "
              f"TTFT {median(r['ttft']) * 1000:.0f} ms latency {median(r['latency']) * 1000:.0f} ms"
              + (f" delete {r['delete_s']:.1f} s" if "delete_s" in r else ""))
    for r in raw:
        print(f"  raw    {r['key']:<28} RUNNING {r['to_running_s']:5.1f} s (Serve {r['healthy_s']:.1f}/{r['serve_running_s']:.1f} s) "
              f"ingress {r['ingress_s']:.1f} s TTFT {median(r['ttft']) * 1000:.0f} ms latency {median(r['latency']) * 1000:.0f} ms delete {r['delete_s']:.1f} s")
    if steps:
        print()
        print(f"{'with A RUNNING, through Gantry':<32} {'seconds':>8} {'A':>3} {'router':>7} {'serve':>6} {'since start':>12} {'calls to A ok/failed':>21}")
        for s in steps:
            if "step" not in s:
                continue
            print(f"{s['step']:<32} {s['seconds']:>8.1f} {s['A']:>3} {s['router']:>7} {s['serve']:>6} {s['since_start']:>12} {str(s['calls_ok']) + '/' + str(s['calls_failed']):>21}")
        kept = next((s["b_first_replica_kept"] for s in steps if "b_first_replica_kept" in s), None)
        print("(replicas changed: gone, replaced or new, by replica id, actor id and PID; goal 0. serve = controller + proxy actors."
              f" B's own first replica kept when scaled 1 -> 2: {'yes' if kept else 'no'})")


def main() -> None:
    global TICK_EVERY_S
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path, ABBA order ending with Gantry (default 3: R G G R R G)")
    parser.add_argument("--tick", type=float, default=TICK_EVERY_S, help=f"seconds between reconcile ticks (default {TICK_EVERY_S})")
    parser.add_argument("--requests", type=int, default=10, help="streamed and non-stream requests per round (default 10)")
    parser.add_argument("--no-restarts", action="store_true", help="skip the add/scale/delete restart check")
    args = parser.parse_args()
    TICK_EVERY_S = args.tick
    quiet()

    scratch = Path(tempfile.mkdtemp(prefix="gantry-bench-serve-"))
    head = RayHead()  # starts `ray start --head` in the background; Django and the model meanwhile
    ray_connected = False
    try:
        setup_django(scratch, head)
        model_dir = (scratch / "hf" / "tiny-llama").resolve()
        head.wait_until_up()
        say(f"private Ray head at {head.address}, dashboard {head.dashboard_url}, Serve HTTP on {head.serve_port}; scratch {scratch}")
        load_before = machine_load(head)
        say(load_before)

        from serving.client import get_client

        started = time.monotonic()
        ray_connected = True
        get_client().ensure_started(head.serve_port, wait=True)  # Serve + router, as the first tick would
        router_s = time.monotonic() - started
        quiet()
        say(f"Serve and the gantry-router RUNNING after {router_s:.1f} s")

        warm_s = warm_up(model_dir)
        say(f"warm-up deploy (untimed, not in any figure) RUNNING after {warm_s:.1f} s; deleted")

        api = Api()
        # ABBA pairs that end with Gantry, so the model kept for the restart check runs alone:
        # 1 round: R G; 2: G R R G; 3: R G G R R G.
        order = [p for i in range(args.rounds) for p in (("G", "R") if (args.rounds - 1 - i) % 2 else ("R", "G"))]
        gantry, raw = [], []
        last_g = len(order) - 1 - order[::-1].index("G")
        for i, path in enumerate(order):
            if path == "G":
                gantry.append(gantry_round(api, f"a{len(gantry) + 1}", args.requests, keep=(i == last_g and not args.no_restarts)))
            else:
                raw.append(raw_round(f"raw-{len(raw) + 1}", model_dir, head.serve_port, args.requests))
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
            steps = restarts(head, api, model_a)
            deleting = time.monotonic()
            api.delete(model_a)
            drive(model_a, "DELETED")
            say(f"cleanup: {model_a} DELETED through Gantry in {time.monotonic() - deleting:.1f} s")
        report(gantry, raw, steps, order, router_s, warm_s, args.requests)
        print(f"machine: at the start {load_before}; at the end {machine_load(head)}")
    except BaseException as exc:
        # Printed here, before the head stops: once it is gone Ray's driver threads may end the
        # process before Python gets to print the traceback.
        import traceback

        traceback.print_exc()
        say(f"FAILED: {type(exc).__name__}: {exc}")
        raise
    finally:
        if ray_connected:
            import ray

            if ray.is_initialized():
                ray.shutdown()
        head.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        say("stopped the private Ray head and removed the scratch folder")


if __name__ == "__main__":
    main()
