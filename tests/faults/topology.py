"""The production topology the fault tests run against (bin/gantry-cluster), and what they look at.

Everything goes through the cluster's real pieces: the API of its gunicorn processes, its own
PostgreSQL (read with SQL: the test process is not one of Gantry's), Ray's state API and Serve's
OpenAI endpoint. Nothing here touches the machine's shared PostgreSQL or Redis.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tests.ray_cluster import process_tree, wait_for

ROOT = Path(__file__).resolve().parents[2]
GANTRY_CLUSTER = ROOT / "bin" / "gantry-cluster"
MODELS = "/api/v2/serve/models"
# The topology's bound on each Serve call (set by the cluster fixture), and the reconciler's lease
# TTL that follows from it (serving.reconciler.lease_ttl): how long a dead holder blocks the others.
SERVE_CALL_TIMEOUT_S = 45
LEASE_TTL_S = 2 * SERVE_CALL_TIMEOUT_S + 30


@dataclass
class Response:
    status: int
    body: dict | str

    def json(self) -> dict:
        assert isinstance(self.body, dict), f"not JSON ({self.status}): {self.body!r:.500}"
        return self.body


class Topology:
    def __init__(self, directory: Path, env: dict[str, str]):
        self.dir = directory
        self.env_for_up = env
        self.token = ""

    # --- bin/gantry-cluster ---------------------------------------------------------------------

    def cluster(self, command: str, timeout_s: float = 900) -> str:
        run = subprocess.run(
            [sys.executable, str(GANTRY_CLUSTER), command, "--dir", str(self.dir)],
            env=self.env_for_up, capture_output=True, text=True, timeout=timeout_s,
        )
        assert run.returncode == 0, f"gantry-cluster {command} failed:\n{run.stdout}\n{run.stderr}"
        return run.stdout

    @property
    def info(self) -> dict:
        return json.loads((self.dir / "cluster.json").read_text())

    def pid(self, piece: str) -> int:
        return self.info["pieces"][piece]["pid"]

    @property
    def web(self) -> list[str]:
        return self.info["web_urls"]

    @property
    def serve_url(self) -> str:
        return self.info["serve_url"]

    @property
    def dashboard_url(self) -> str:
        return self.info["ray_dashboard_url"]

    def manage(self, *args: str) -> str:
        """manage.py against the cluster's database, as an operator would run it."""
        env = {**os.environ, **self.info["env"]}
        run = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return run.stdout

    def kill(self, piece: str, sig: int = signal.SIGKILL) -> list[int]:
        """Send `sig` to a piece's whole process tree at once, as a crashed machine would."""
        pids = process_tree(self.pid(piece))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        wait_for(f"{piece}'s processes to be gone", lambda: not any(_alive(pid) for pid in pids), 60, 0.5)
        return pids

    # --- Gantry's API, through one of the gunicorn processes -------------------------------------

    def request(self, method: str, path: str, body: str | dict | None = None, *, web: int = 0, token: bool = True, timeout: float = 30) -> Response:
        data, headers = None, {}
        if token:
            headers["Authorization"] = f"Bearer {self.token}"
        if isinstance(body, dict):
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        elif body is not None:
            data, headers["Content-Type"] = body.encode(), "application/yaml"
        request = urllib.request.Request(self.web[web] + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return Response(status, json.loads(raw))
        except ValueError:
            return Response(status, raw.decode(errors="replace"))

    def model(self, key: str, *, web: int = 1) -> dict:
        response = self.request("GET", f"{MODELS}/{key}", web=web)
        assert response.status == 200, response
        return response.json()

    def scale(self, key: str, replicas: int, *, web: int = 0) -> int:
        """PATCH num_replicas; returns the generation the change was accepted as."""
        response = self.request("PATCH", f"{MODELS}/{key}", {"num_replicas": replicas}, web=web)
        assert response.status == 202, response
        return response.json()["generation"]

    def wait_for_state(self, key: str, state: str, timeout_s: float = 600, **expected) -> dict:
        """Poll the second web process until the model is `state` (and `expected`); a FAILED model
        fails at once, with its reason."""
        deadline = time.monotonic() + timeout_s
        while True:
            model = self.model(key)
            if model["state"] == state and all(model[k] == v for k, v in expected.items()):
                return model
            assert model["state"] != "FAILED", f"{key} FAILED: {model['error_summary']}"
            assert time.monotonic() < deadline, f"{key} not {state} {expected} within {timeout_s:g} s: {model['state']}, {model['events']['items'][:3]}"
            time.sleep(2)

    def settle(self, key: str, generation: int, replicas: int, timeout_s: float = 600) -> dict:
        """Wait until the change made as `generation` is applied and the model RUNNING with `replicas`.
        RUNNING alone is not enough: a RUNNING model being scaled stays RUNNING until it is applied."""
        wait_for(f"generation {generation} of {key} to be applied", lambda: self.applies_per_generation(key).get(generation), timeout_s, 1)
        return self.wait_for_state(key, "RUNNING", timeout_s, num_replicas=replicas, generation=generation)

    # --- What the database says (the cluster's own PostgreSQL) --------------------------------------

    def sql(self, query: str, *params) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.info["env"]["DATABASE_URL"], connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def applies_per_generation(self, key: str) -> dict[int, int]:
        """How many times each generation a user submitted was applied: ServeRevision rows, less the
        reconciler's own drift repairs (a re-apply of what Serve lost is not a user's change)."""
        rows = self.sql(
            "SELECT generation, count(*) FROM serving_serverevision WHERE model_key = %s AND reason NOT LIKE 'drift repair%%' GROUP BY generation",
            key,
        )
        return dict(rows)

    def count_changes(self, key: str, submitted: list[int]) -> dict[str, int]:
        """submitted / applied / lost / duplicated for the generations `submitted`, printed as the
        fault tests report them."""
        applied = self.applies_per_generation(key)
        counts = {
            "submitted": len(submitted),
            "applied": sum(1 for g in submitted if applied.get(g, 0) >= 1),
            "lost": sum(1 for g in submitted if applied.get(g, 0) == 0),
            "duplicated": sum(1 for g in submitted if applied.get(g, 0) > 1),
        }
        print(" ".join(f"{name}={value}" for name, value in counts.items()), f"(generations {submitted}: applies {applied})")
        return counts

    def events(self, key: str, since_id: int = 0) -> list[tuple[int, str, str]]:
        return self.sql("SELECT id, kind, message FROM serving_serveevent WHERE model_key = %s AND id > %s ORDER BY id", key, since_id)

    def printed_events(self, key: str, since_id: int = 0) -> list[tuple[int, str, str]]:
        """events(), each printed on a line: the story a fault test's output tells."""
        events = self.events(key, since_id)
        for _, kind, message in events:
            print(f"  {kind}: {message[:160]}")
        return events

    def last_event_id(self) -> int:
        return self.sql("SELECT coalesce(max(id), 0) FROM serving_serveevent")[0][0]

    # --- Ray ----------------------------------------------------------------------------------------

    def ray_state(self, what: str) -> list[dict]:
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/{what}?limit=1000", timeout=20) as response:
            return json.load(response)["data"]["result"]["result"]

    def serve_target(self, app: str) -> int:
        """The replica count Serve is working towards for the model's deployment (what was applied)."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/serve/applications/", timeout=20) as response:
            deployments = json.load(response)["applications"][app]["deployments"]
        (deployment,) = [d for name, d in deployments.items() if name.startswith("LLMServer:")]
        return deployment["target_num_replicas"]

    def node_names(self) -> dict[str, str]:
        """node id -> node name (gantry-head, ray-node-1) of every ALIVE node."""
        return {n["node_id"]: n["node_name"] for n in self.ray_state("nodes") if n["state"] == "ALIVE"}

    def node_ids(self, name: str) -> set[str]:
        """The ids of the ALIVE nodes called `name` (one, unless a replacement is joining)."""
        return {node_id for node_id, node_name in self.node_names().items() if node_name == name}

    def replica_nodes(self, model_id: str) -> list[str]:
        """The node name each ALIVE replica actor of the model's application runs on."""
        names = self.node_names()
        return sorted(
            names.get(actor["node_id"], actor["node_id"])
            for actor in self.ray_state("actors")
            if actor["state"] == "ALIVE" and actor["class_name"].startswith(f"ServeReplica:{model_id}:")
        )

    def chat(self, model_id: str, text: str = "Hello") -> str:
        import openai

        api = openai.OpenAI(base_url=self.serve_url, api_key="not-needed", max_retries=0, timeout=120)
        reply = api.chat.completions.create(model=model_id, messages=[{"role": "user", "content": text}], max_tokens=8)
        assert reply.model == model_id and reply.usage.completion_tokens > 0, reply
        return reply.choices[0].message.content or ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"
