"""TCP reachability of the services Gantry depends on, as its settings name them."""
from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

from dashboard.readiness import check_tcp
from serving.cluster.address import ray_gcs_endpoint
from health.choices import Status
from health.probes.base import Probe, Reading

Endpoint = tuple[str, int]


def read_endpoint(host: str, port: int) -> Reading:
    reach = check_tcp(f"{host}:{port}", host, port)
    if reach.ok:
        return Status.OK, f"{reach.detail} ({reach.elapsed_ms} ms)"
    return Status.CRITICAL, f"{host}:{port} does not accept connections: {reach.detail}"


def database_endpoint(config: dict) -> Endpoint | None:
    host = config.get("HOST") or ""
    # SQLite, no host or a socket directory (a Unix socket): nothing to reach over TCP.
    if config["ENGINE"].endswith("sqlite3") or not host or host.startswith("/"):
        return None
    return host, int(config.get("PORT") or 5432)


def endpoints() -> list[tuple[str, Endpoint]]:
    found: list[tuple[str, Endpoint]] = []
    database = database_endpoint(settings.DATABASES["default"])
    if database is not None:
        found.append(("tcp:postgresql", database))
    broker = urlsplit(settings.CELERY_BROKER_URL)
    if broker.scheme in ("redis", "rediss"):
        found.append(("tcp:redis", (broker.hostname or "localhost", broker.port or 6379)))
    ray = ray_gcs_endpoint(settings.RAY_ADDRESS)
    if ray is not None:
        found.append(("tcp:ray-gcs", ray))
    found.append(("tcp:serve", (settings.GANTRY_SERVE_HOST, int(settings.GANTRY_SERVE_PORT))))
    mlflow = urlsplit(settings.MLFLOW_TRACKING_URI)
    if mlflow.scheme in ("http", "https") and mlflow.hostname:
        found.append(("tcp:mlflow", (mlflow.hostname, mlflow.port or (443 if mlflow.scheme == "https" else 80))))
    return found


def probes() -> list[Probe]:
    return [Probe(name, "tcp", lambda endpoint=endpoint: read_endpoint(*endpoint)) for name, endpoint in endpoints()]
