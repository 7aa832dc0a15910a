"""Gantry under load in its production shape: gunicorn (gunicorn.conf.py: 4 workers × 4 threads) on
PostgreSQL, 1,000 models, 100 concurrent pollers and a stream of changes, on loopback.

The pollers are what a team's browsers and scripts do: the model list (page and API), a model's
page and its 2-second live partial (htmx), the API's model detail. Meanwhile writers post specs
(create), scale and delete through the API: the mutating calls, whose p99 the issue holds under
100 ms. Every call's latency is recorded client-side; errors are any status but 2xx (a redirect would be a
login page) or a failed connection. `/healthz` (no database) is polled the same way and is the baseline in the same run:
what the machine and gunicorn cost before Gantry does anything. Queries per request are counted for
each endpoint with 10 and with 1,000 models (Django's test client, an execute wrapper): constant
means the lists page and do not query per row.

    .venv/bin/python bench/load.py                               # 60 s, 100 pollers, 4 writers
    .venv/bin/python bench/load.py --seconds 30 --pollers 50
    .venv/bin/python bench/load.py --database-url postgres://postgres@127.0.0.1:5432/gantry_bench_load

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


def queries_per_request(paths: dict[str, str], user: dict) -> dict[str, int]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username=user["name"]))
    counts = {}
    for name, path in paths.items():
        executed = []

        def count(execute, sql, params, many, context):
            executed.append(sql)
            return execute(sql, params, many, context)

        headers = {"HTTP_HX_REQUEST": "true"} if name == "detail partial (htmx)" else {}
        with connection.execute_wrapper(count):
            assert client.get(path, **headers).status_code == 200, path
        counts[name] = len(executed)
    return counts


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.timings: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)

    def call(self, conn: http.client.HTTPConnection, name: str, method: str, path: str, headers: dict, body: bytes | None = None) -> int:
        started = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            with self.lock:
                self.errors[name].append(f"{type(exc).__name__}: {exc}")
            conn.close()
            return 0
        elapsed = (time.perf_counter() - started) * 1000
        with self.lock:
            self.timings[name].append(elapsed)
            if status >= 300:  # a redirect here is a lost session or a login page: not an answer
                self.errors[name].append(f"HTTP {status}")
        return status


def poller(port: int, user: dict, stop: threading.Event, rec: Recorder, pace_s: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cookie = {"Cookie": f"sessionid={user['session']}"}
    bearer = {"Authorization": f"Bearer {user['token']}"}
    rng = random.Random(user["name"])
    while not stop.is_set():
        key = rng.choice(user["keys"])
        rec.call(conn, "healthz (baseline)", "GET", "/healthz", {})
        rec.call(conn, "list page", "GET", "/serving/", cookie)
        rec.call(conn, "detail partial (htmx)", "GET", f"/serving/{key}", {**cookie, "HX-Request": "true"})
        rec.call(conn, "API list", "GET", "/api/v2/serve/models", bearer)
        rec.call(conn, "API detail", "GET", f"/api/v2/serve/models/{key}", bearer)
        stop.wait(pace_s)


def writer(port: int, user: dict, stop: threading.Event, rec: Recorder, pace_s: float) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bearer = {"Authorization": f"Bearer {user['token']}"}
    rng = random.Random("w" + user["name"])
    while not stop.is_set():
        suffix = f"w{uuid.uuid4().hex[:8]}"
        spec = f"model_id: {suffix}\nmodel_source: $HOME/common/hf/tiny-llama\n".encode()
        rec.call(conn, "API create (POST spec)", "POST", "/api/v2/serve/models", {**bearer, "Content-Type": "application/yaml"}, spec)
        key = rng.choice(user["keys"])
        body = json.dumps({"num_replicas": rng.randint(1, 3)}).encode()
        rec.call(conn, "API scale (PATCH)", "PATCH", f"/api/v2/serve/models/{key}", {**bearer, "Content-Type": "application/json"}, body)
        stop.wait(pace_s)


def start_gunicorn(port: int, env: dict, log: Path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "dashboard.wsgi:application", "--bind", f"127.0.0.1:{port}", "--access-logfile", "/dev/null"]
    process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    raise SystemExit(f"gunicorn did not answer on {port} within 60 s; see {log}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--pollers", type=int, default=100)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--poll-every", type=float, default=2.0, help="each poller's pause between rounds, as the live partial's 2 s")
    args = parser.parse_args()

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
        paths = lambda u: {  # noqa: E731
            "list page": "/serving/", "detail partial (htmx)": f"/serving/{u['keys'][0]}",
            "API list": "/api/v2/serve/models", "API detail": f"/api/v2/serve/models/{u['keys'][0]}",
        }
        queries_small = queries_per_request(paths(small), small)
        seeded = seed(args.owners, args.models - 10, scratch, "load")
        queries_large = queries_per_request(paths(seeded["users"][0]), seeded["users"][0])
        print(f"{seeded['models']} models, {args.owners + 1} users; gunicorn 4 workers × 4 threads on PostgreSQL; "
              f"{args.pollers} pollers (a round of 5 calls every {args.poll_every:g} s), {args.writers} writers; {args.seconds:g} s")
        port = free_port()
        gunicorn = start_gunicorn(port, env, scratch / "gunicorn.log")
        stop, rec = threading.Event(), Recorder()
        users = seeded["users"]
        threads = [threading.Thread(target=poller, args=(port, users[i % len(users)], stop, rec, args.poll_every), daemon=True) for i in range(args.pollers)]
        threads += [threading.Thread(target=writer, args=(port, users[i % len(users)], stop, rec, 0.5), daemon=True) for i in range(args.writers)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        elapsed = time.monotonic() - started
        base = statistics.median(rec.timings["healthz (baseline)"])
        print(f"\n{'endpoint':26} {'calls':>7} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'p50/baseline':>13} {'queries @10':>12} {'@' + str(seeded['models']):>6}")
        for name in ["healthz (baseline)", "list page", "detail partial (htmx)", "API list", "API detail", "API create (POST spec)", "API scale (PATCH)"]:
            timings = rec.timings.get(name, [])
            if not timings:
                continue
            p50, p99 = statistics.median(timings), pct(timings, 0.99)
            print(f"{name:26} {len(timings):>7} {len(rec.errors.get(name, [])):>6} {p50:>8.1f} {p99:>8.1f} {p50 / base:>12.1f}× "
                  f"{queries_small.get(name, ''):>12} {queries_large.get(name, ''):>6}")
        total = sum(len(v) for v in rec.timings.values())
        print(f"\n{total} calls in {elapsed:.0f} s ({total / elapsed:.0f}/s); errors: {sum(len(v) for v in rec.errors.values())}")
        for name, errors in rec.errors.items():
            if errors:
                print(f"  {name}: {len(errors)}, first: {errors[0]}")
    finally:
        if gunicorn is not None:
            os.killpg(gunicorn.pid, signal.SIGTERM)
            gunicorn.wait(30)
        from django.db import connections

        connections.close_all()
        drop_database(args.database_url)


if __name__ == "__main__":
    main()
