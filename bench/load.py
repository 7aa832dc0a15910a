"""Gantry under load in its production shape: gunicorn (gunicorn.conf.py: 4 workers × 4 threads) on
PostgreSQL, 1,000 models, 100 pollers and a stream of changes, on loopback.

The pollers are what a team's browsers and scripts do: the model list's live rows and a model's live
partial (both htmx, `hx-trigger="every 2s"`), the API's model list and detail (scripts waiting for a
state). Meanwhile writers post specs (create), scale and delete through the API: the mutating calls,
whose p99 the issue holds under 100 ms. `/healthz` (no database) is polled the same way and is the
baseline of the same run: what the machine, the load generator and gunicorn cost before Gantry does
anything, so figures are read as ratios to it.

Two ways to poll:
- **open** (the default): what "100 concurrent pollers" means in use. Each poller asks one thing on a
  timer — every `--poll-every` s (2 s, as the pages), from a random phase, each tick moved by up to
  ±`--jitter` of the interval — whatever the answers take, as a browser's htmx timer does. Ticks
  that come while the poller's last answer is still out collapse into one request, sent when that
  answer returns (htmx queues the last trigger and drops the older ones): it is counted late, the
  older ticks dropped, and its latency counts from its tick (no coordinated omission: a slow server
  is not let off by the pollers waiting). Writers run on a timer the same way, one change a tick,
  but drop none: a change asked for while the last is out is sent after it, late, its latency
  counted from its tick.
- **closed**: the saturation figure. Each poller runs rounds of all four calls plus `/healthz` back to
  back and pauses `--poll-every` s only after the round; writers do create, scale, delete and pause
  0.5 s. Answered at once that asks for ~250 calls/s, more than two cores serve: the rate is the
  machine's, and the latency is the queue in front of it.

Errors are any status but 2xx (a redirect would be the login page) or a failed connection. Latency is
measured client-side; "server" is each request's time inside gunicorn (its access log's %(D)s), so
the two tell the wait for the machine from Gantry's own time. Queries per request are counted for
each endpoint with 10 and with 1,000 models (Django's test client, an execute wrapper): constant
means no query per row. A 10 s warm-up under the same load is not recorded (each gunicorn worker
imports views and templates on first use); `--timeline` prints the run second by second.

    .venv/bin/python bench/load.py                               # open loop, 60 s, 100 pollers, 16 writers
    .venv/bin/python bench/load.py --mode closed                 # the saturation figure
    .venv/bin/python bench/load.py --seconds 30 --pollers 50 --database-url postgres://postgres@127.0.0.1:5432/gantry_bench_load

It creates (and drops afterwards) its own database on the PostgreSQL it is given, and a scratch
GANTRY_VAR_DIR; it starts and stops only its own gunicorn. No Ray is needed: pages and the API read
Serve's state from the reconciler's snapshot, and the changes it posts are only queued.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/gantry_bench_load"
BASELINE = "healthz (baseline)"
# What polls every 2 s: (name, path, auth, sent as htmx). The pages poll their live parts with htmx.
POLLED = [
    ("list rows (htmx)", "/serving/", "session", True),
    ("detail partial (htmx)", "/serving/{key}", "session", True),
    ("API list", "/api/v2/serve/models", "token", False),
    ("API detail", "/api/v2/serve/models/{key}", "token", False),
]
MUTATING = ["API create (POST spec)", "API scale (PATCH)", "API delete (DELETE)"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recreate_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


def setup(env: dict) -> None:
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def seed(owners: int, models: int, scratch: Path, prefix: str) -> dict:
    """`models` models spread over `owners` users (3 events each), a model folder to post specs at,
    a token and a session per user."""
    from django.contrib.auth import get_user_model
    from django.contrib.sessions.backends.db import SessionStore
    from django.utils import timezone

    from dashboard.models import ApiToken
    from serving.models import ServeEvent, ServeModel
    from tests.serving.factories import bulk_models

    (scratch / "hf" / "tiny-llama").mkdir(parents=True, exist_ok=True)
    (scratch / "hf" / "tiny-llama" / "config.json").write_text("{}")
    users = []
    for k in range(owners):
        user = get_user_model().objects.create_user(f"{prefix}{k}", f"{prefix}{k}@example.test", "load-password-123")
        created = bulk_models(user, models // owners, at=timezone.now(), states=("QUEUED", "DEPLOYING", "RUNNING", "FAILED"))
        ServeEvent.objects.bulk_create(
            [ServeEvent(model=m, model_key=m.model_key, public_id=m.model_id, owner_name=user.username, kind="SERVE_STATUS", message=f"event {i}")
             for m in created for i in range(3)], batch_size=2000)
        _, token = ApiToken.issue(user, "load")
        session = SessionStore()
        session["_auth_user_id"], session["_auth_user_backend"] = str(user.pk), "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.create()
        keys = list(ServeModel.objects.filter(owner=user).values_list("model_key", flat=True))
        users.append({"name": user.username, "token": token, "session": session.session_key, "keys": keys})
    return {"users": users, "models": ServeModel.objects.count()}


def queries_per_request(user: dict) -> dict[str, int]:
    """Queries each endpoint runs for `user`, the mutating ones included (a create, a scale and a
    delete of the model just created)."""
    from django.db import connection
    from django.test import Client

    client = Client()
    session = {"HTTP_COOKIE": f"sessionid={user['session']}"}
    bearer = {"HTTP_AUTHORIZATION": f"Bearer {user['token']}"}
    key = user["keys"][0]
    suffix = f"q{uuid.uuid4().hex[:8]}"
    calls = [(name, "get", path.format(key=key), {**(session if auth == "session" else bearer), **({"HTTP_HX_REQUEST": "true"} if htmx else {})}, {})
             for name, path, auth, htmx in POLLED]
    calls += [
        (MUTATING[0], "post", "/api/v2/serve/models", bearer, {"data": _spec(suffix), "content_type": "application/yaml"}),
        (MUTATING[1], "patch", f"/api/v2/serve/models/{key}", bearer, {"data": json.dumps({"num_replicas": 2}), "content_type": "application/json"}),
        (MUTATING[2], "delete", "/api/v2/serve/models/{created}", bearer, {}),
    ]
    counts, created = {}, None
    for name, method, path, headers, body in calls:
        path = path.format(created=created)
        executed = []

        def count(execute, sql, params, many, context):
            executed.append(sql)
            return execute(sql, params, many, context)

        with connection.execute_wrapper(count):
            response = getattr(client, method)(path, **body, **headers)
        assert response.status_code in (200, 202), (path, response.status_code, response.content[:300])
        counts[name] = len(executed)
        if name == MUTATING[0]:
            created = response.json()["model_key"]
    return counts


def _spec(suffix: str) -> str:
    return f"model_id: {suffix}\nmodel_source: $HOME/common/hf/tiny-llama\n"


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.late: dict[str, int] = defaultdict(int)  # open loop: sent after their tick, when the last answer came
        self.skipped: dict[str, int] = defaultdict(int)  # open loop: ticks dropped while an answer was out
        self.timeline: list[tuple[float, float, str]] = []
        self.recording = False  # off while warming up: each gunicorn worker imports views, templates, Celery on first use

    def dropped(self, name: str, ticks: int) -> None:
        if ticks and self.recording:
            with self.lock:
                self.skipped[name] += ticks

    def call(self, conn: http.client.HTTPConnection, name: str, method: str, path: str, headers: dict,
             body: bytes | None = None, due: float | None = None) -> tuple[int, bytes]:
        """One request; a late open-loop tick (`due` passed while the last answer was still out) counts
        its latency from when it was due."""
        started, recording = time.perf_counter(), self.recording  # a call sent during the warm-up is not counted
        if due is not None and recording:
            with self.lock:
                self.late[name] += 1
        since = min(started, due) if due is not None else started
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            content = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            if recording:
                with self.lock:
                    self.errors[name].append(f"{type(exc).__name__}: {exc}")
            conn.close()
            return 0, b""
        elapsed = (time.perf_counter() - since) * 1000
        if not recording:
            return status, content
        with self.lock:
            self.timings[name].append(elapsed)
            self.timeline.append((since, elapsed, name))
            if status >= 300:  # a redirect here is a lost session or a login page: not an answer
                self.errors[name].append(f"HTTP {status}")
        return status, content


def ticks(stop: threading.Event, every: float, jitter: float, rng: random.Random, collapse: bool = True):
    """An open-loop timer, as htmx's `every 2s`: a tick every `every` s from a random phase, each
    moved by up to ±jitter × every, whatever the answers take. Waits for the next tick and yields
    (None, 0). A tick that passed while the last answer was out yields at once (its due time,
    perf_counter; how many older ticks were dropped). A poller collapses the ticks that passed into
    the newest (htmx queues the last trigger and drops older ones); a writer drops none: each tick is
    a change someone asked for, and its latency counts from then."""
    start = time.perf_counter() + rng.uniform(0, every)
    k = 0
    while not stop.is_set():
        due = start + every * (k + rng.uniform(-jitter, jitter))
        k += 1
        now = time.perf_counter()
        if due > now:
            if stop.wait(due - now):
                return
            yield None, 0
            continue
        dropped = 0
        while collapse and start + every * k <= now:  # later ticks that also passed: only the newest is sent
            due, k, dropped = start + every * k, k + 1, dropped + 1
        yield due, dropped


def _headers(user: dict, auth: str | None, htmx: bool) -> dict:
    headers = {"session": {"Cookie": f"sessionid={user['session']}"}, "token": {"Authorization": f"Bearer {user['token']}"}}.get(auth, {})
    return {**headers, "HX-Request": "true"} if htmx else headers


def open_poller(port: int, user: dict, endpoint: tuple, stop: threading.Event, rec: Recorder, every: float, jitter: float, seed: str) -> None:
    name, path, auth, htmx = endpoint
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers, rng = _headers(user, auth, htmx), random.Random(seed)
    for due, dropped in ticks(stop, every, jitter, rng):
        rec.dropped(name, dropped)
        rec.call(conn, name, "GET", path.format(key=rng.choice(user["keys"])), headers, due=due)


def closed_poller(port: int, user: dict, stop: threading.Event, rec: Recorder, pause_s: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    rng = random.Random(user["name"])
    while not stop.is_set():
        key = rng.choice(user["keys"])
        rec.call(conn, BASELINE, "GET", "/healthz", {})
        for name, path, auth, htmx in POLLED:
            rec.call(conn, name, "GET", path.format(key=key), _headers(user, auth, htmx))
        stop.wait(pause_s)


class Changes:
    """One writer's changes, in turn: create a model, scale one of the seeded ones, delete the one it
    created (so the number of models stays about the same)."""

    def __init__(self, port: int, user: dict, rec: Recorder, seed: str):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.user, self.rec, self.rng = user, rec, random.Random(seed)
        self.bearer = {"Authorization": f"Bearer {user['token']}"}
        self.created: list[str] = []
        self.turn = 0

    def next(self, due: float | None = None) -> None:
        step, self.turn = self.turn % 3, self.turn + 1
        if step == 0:
            status, content = self.rec.call(self.conn, MUTATING[0], "POST", "/api/v2/serve/models",
                                            {**self.bearer, "Content-Type": "application/yaml"}, _spec(f"w{uuid.uuid4().hex[:8]}").encode(), due)
            if status == 202:
                self.created.append(json.loads(content)["model_key"])
        elif step == 1:
            body = json.dumps({"num_replicas": self.rng.randint(1, 3)}).encode()
            self.rec.call(self.conn, MUTATING[1], "PATCH", f"/api/v2/serve/models/{self.rng.choice(self.user['keys'])}",
                          {**self.bearer, "Content-Type": "application/json"}, body, due)
        elif self.created:
            self.rec.call(self.conn, MUTATING[2], "DELETE", f"/api/v2/serve/models/{self.created.pop()}", self.bearer, None, due)


def open_writer(port: int, user: dict, stop: threading.Event, rec: Recorder, every: float, jitter: float, seed: str) -> None:
    changes = Changes(port, user, rec, seed)
    for due, _ in ticks(stop, every, jitter, random.Random(seed), collapse=False):
        changes.next(due)


def closed_writer(port: int, user: dict, stop: threading.Event, rec: Recorder, pause_s: float, seed: str) -> None:
    changes = Changes(port, user, rec, seed)
    while not stop.is_set():
        for _ in range(3):
            changes.next()
        stop.wait(pause_s)


def start_gunicorn(port: int, env: dict, log: Path, access_log: Path) -> subprocess.Popen:
    # The access log gives each request's time inside gunicorn (%(D)s, µs, from the request read to the
    # response sent): the server's share of the latency, without the wait for a worker's thread.
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "dashboard.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--access-logfile", str(access_log), "--access-logformat", "%(m)s %(U)s %(s)s %(D)s"]
    process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180  # a shared machine under load: its workers took 20 s to boot once
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit(f"gunicorn did not answer on {port} within 180 s; see {log}")


def server_times(access_log: Path, start: int, end: int) -> dict[str, list[float]]:
    """Each endpoint's times inside gunicorn (ms), from the access log's lines between two offsets."""
    routes = [("GET", "/healthz", BASELINE), ("GET", "/serving/", POLLED[0][0]), ("GET", "/api/v2/serve/models", POLLED[2][0]),
              ("POST", "/api/v2/serve/models", MUTATING[0])]
    times: dict[str, list[float]] = defaultdict(list)
    with access_log.open("rb") as f:
        f.seek(start)
        lines = f.read(end - start).decode(errors="replace").splitlines()
    for line in lines:
        try:
            method, path, _, micros = line.split()
        except ValueError:
            continue
        name = next((n for m, p, n in routes if (m, p) == (method, path)), None)
        if name is None and path.startswith("/api/v2/serve/models/"):
            name = {"GET": POLLED[3][0], "PATCH": MUTATING[1], "DELETE": MUTATING[2]}.get(method)
        elif name is None and path.startswith("/serving/") and method == "GET":
            name = POLLED[1][0]
        if name:
            times[name].append(int(micros) / 1000)
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def threads_for(args, port: int, users: list[dict], stop: threading.Event, rec: Recorder) -> list[threading.Thread]:
    def thread(target, *a):
        return threading.Thread(target=target, args=(port, *a), daemon=True)

    if args.mode == "closed":
        threads = [thread(closed_poller, users[i % len(users)], stop, rec, args.poll_every) for i in range(args.pollers)]
        return threads + [thread(closed_writer, users[i % len(users)], stop, rec, 0.5, f"w{i}") for i in range(args.writers)]
    # Pollers are spread evenly over the four polled endpoints; the baseline pollers ask /healthz.
    baseline = (BASELINE, "/healthz", None, False)  # no credentials: a bearer token would be a query
    threads = [thread(open_poller, users[i % len(users)], POLLED[i % len(POLLED)], stop, rec, args.poll_every, args.jitter, f"p{i}")
               for i in range(args.pollers)]
    threads += [thread(open_poller, users[i % len(users)], baseline, stop, rec, args.poll_every, args.jitter, f"b{i}") for i in range(args.baseline_pollers)]
    return threads + [thread(open_writer, users[i % len(users)], stop, rec, args.write_every, args.jitter, f"w{i}") for i in range(args.writers)]


def report(rec: Recorder, elapsed: float, queries_small: dict, queries_large: dict, models: int, mode: str, server: dict) -> None:
    base = rec.timings[BASELINE]
    base_p50, base_p99 = statistics.median(base), pct(base, 0.99)
    late = f" {'late':>5} {'dropped':>7}" if mode == "open" else ""
    print(f"\n{'endpoint':24} {'calls':>6} {'errors':>6}{late} {'p50 ms':>8} {'p99 ms':>8} {'p50/base':>9} {'p99/base':>9} "
          f"{'server p50':>11} {'server p99':>11} {'queries @10':>12} {'@' + str(models):>6}")
    for name in [BASELINE, *(e[0] for e in POLLED), *MUTATING]:
        timings = rec.timings.get(name, [])
        if not timings:
            continue
        p50, p99 = statistics.median(timings), pct(timings, 0.99)
        late = f" {rec.late.get(name, 0):>5} {rec.skipped.get(name, 0):>7}" if mode == "open" else ""
        inside = server.get(name) or [float("nan")]
        print(f"{name:24} {len(timings):>6} {len(rec.errors.get(name, [])):>6}{late} {p50:>8.1f} {p99:>8.1f} {p50 / base_p50:>8.2f}× {p99 / base_p99:>8.2f}× "
              f"{statistics.median(inside):>11.1f} {pct(inside, 0.99):>11.1f} {queries_small.get(name, '–'):>12} {queries_large.get(name, '–'):>6}")
    total = sum(len(v) for v in rec.timings.values())
    errors = sum(len(v) for v in rec.errors.values())
    print(f"\n{total} calls in {elapsed:.0f} s ({total / elapsed:.0f}/s); errors: {errors}; server times from gunicorn's access log")
    mutating = [t for name in MUTATING for t in rec.timings.get(name, [])]
    if mutating:
        p99, inside = pct(mutating, 0.99), [t for name in MUTATING for t in server.get(name, [])] or [float("nan")]
        print(f"mutating API (create, scale, delete together, {len(mutating)} calls): p50 {statistics.median(mutating):.1f} ms, p99 {p99:.1f} ms "
              f"(inside gunicorn: p50 {statistics.median(inside):.1f}, p99 {pct(inside, 0.99):.1f}); healthz p99 {base_p99:.1f} ms; "
              f"mutating p99 / healthz p99 = {p99 / base_p99:.2f}×; goal p99 < 100 ms: {'met' if p99 < 100 else 'NOT met'}")
    for name, errs in rec.errors.items():
        if errs:
            print(f"  {name}: {len(errs)}, first: {errs[0]}")


def print_timeline(rec: Recorder) -> None:
    """Per second of the run: calls sent, and how many took over 100 ms and over 1 s; a stall of the
    whole machine shows as every endpoint slow in the same seconds."""
    first = min(t for t, _, _ in rec.timeline)
    seconds: dict[int, list[float]] = defaultdict(list)
    for t, elapsed, _ in rec.timeline:
        seconds[int(t - first)].append(elapsed)
    print("\nsecond  sent  >100ms  >1s  slowest ms")
    for second in sorted(seconds):
        values = seconds[second]
        print(f"{second:>6} {len(values):>5} {sum(v > 100 for v in values):>7} {sum(v > 1000 for v in values):>4} {max(values):>11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--mode", choices=["open", "closed"], default="open", help="open: pollers on a timer (default); closed: back-to-back rounds (saturation)")
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--baseline-pollers", type=int, default=10, help="open mode: pollers of /healthz, on the same timer")
    # Open loop: 16 writers, a change a second each (16/s, as the closed loop's 4 writers at best): each
    # has one connection, so a writer falls behind only when a change takes over a second.
    parser.add_argument("--writers", type=int, default=16, help="writers (the closed loop: 4 unless given)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--timeline", action="store_true", help="also print, second by second, the calls sent and those slower than 100 ms and 1 s")
    parser.add_argument("--warmup", type=float, default=10, help="seconds of the same load before recording starts")
    parser.add_argument("--poll-every", type=float, default=2.0, help="open: each poller's interval; closed: the pause after each round (the pages' 2 s)")
    parser.add_argument("--write-every", type=float, default=1.0, help="open: each writer's interval (one change a tick)")
    parser.add_argument("--jitter", type=float, default=0.05, help="open: each tick moves by up to ± this share of the interval")
    args = parser.parse_args()
    if args.mode == "closed" and "--writers" not in sys.argv:
        args.writers = 4  # as the closed loop has always run: 4 writers, back to back

    scratch = Path(tempfile.mkdtemp(prefix="gantry-load-"))
    env = {
        "DATABASE_URL": args.database_url, "GANTRY_VAR_DIR": str(scratch), "DEBUG": "0",
        "GANTRY_HF_ROOT": str(scratch / "hf"), "GANTRY_USERS_ROOT": str(scratch / "users"), "GANTRY_DATASETS_ROOT": str(scratch / "datasets"),
        "CELERY_BROKER_URL": "filesystem://", "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    recreate_database(args.database_url)
    gunicorn = None
    try:
        setup(env)
        small = seed(1, 10, scratch, "few")["users"][0]
        queries_small = queries_per_request(small)
        seeded = seed(args.owners, args.models - 10, scratch, "load")
        queries_large = queries_per_request(seeded["users"][0])
        if args.mode == "open":
            shape = (f"open loop: {args.pollers} pollers, each one call every {args.poll_every:g} s ±{args.jitter:.0%} ({args.pollers // len(POLLED)} per endpoint), "
                     f"{args.baseline_pollers} on /healthz; {args.writers} writers, one change every {args.write_every:g} s")
        else:
            shape = f"closed loop: {args.pollers} pollers, rounds of 5 calls back to back then {args.poll_every:g} s; {args.writers} writers, create+scale+delete then 0.5 s"
        print(f"{seeded['models']} models, {args.owners + 1} users; gunicorn 4 workers × 4 threads on PostgreSQL; {shape}; {args.seconds:g} s")
        port = free_port()
        access_log = scratch / "access.log"
        gunicorn = start_gunicorn(port, env, scratch / "gunicorn.log", access_log)
        stop, rec = threading.Event(), Recorder()
        threads = threads_for(args, port, seeded["users"], stop, rec)
        for t in threads:
            t.start()
        time.sleep(args.warmup)
        print(f"load average before: {load_average()} (after {args.warmup:g} s of warm-up, not recorded)")
        started, rec.recording, log_start = time.monotonic(), True, access_log.stat().st_size
        time.sleep(args.seconds)
        stop.set()
        rec.recording = False
        log_end = access_log.stat().st_size
        for t in threads:
            t.join(timeout=60)
        elapsed = time.monotonic() - started
        print(f"load average after:  {load_average()}")
        report(rec, elapsed, queries_small, queries_large, seeded["models"], args.mode, server_times(access_log, log_start, log_end))
        if args.timeline:
            print_timeline(rec)
    finally:
        if gunicorn is not None:
            os.killpg(gunicorn.pid, signal.SIGTERM)
            gunicorn.wait(30)
        from django.db import connections

        connections.close_all()
        drop_database(args.database_url)


if __name__ == "__main__":
    main()
