"""Probes: each module lists the checks it reads (`probes()`), one Probe per path, endpoint or queue.

`run_cycle` runs every probe at once, each in its own thread with the same deadline, so one that
hangs (a dead NFS mount, a black-holed port) reads `unknown` after GANTRY_HEALTH_PROBE_TIMEOUT_S
while the others are recorded as usual. Each reading carries the CPU time its own thread spent.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from health.choices import Status

Reading = tuple[str, str]  # (status, detail)


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str
    read: Callable[[], Reading]
    # A probe that writes more than its own check (the GPU probe: a check and samples per GPU) has
    # `read` return (status, detail, fetched) off-thread, and `record(fetched)` -> Reading runs in
    # the cycle's own thread once every probe answered or timed out: its writes happen in one
    # connection, never from a thread left running past its timeout.
    record: Callable[[Any], Reading] | None = None


@dataclass
class Result:
    probe: Probe
    status: str = Status.UNKNOWN
    detail: str = ""
    cost_ms: float = 0.0
    done: bool = False
    fetched: Any = None


def ask_cluster(what: str, read: Callable[[Any], dict]) -> tuple[str, str, dict]:
    """Off the cycle's thread: `read(client)`, the configured ServeClient's per-node readings, as
    a probe's fetched reading (with "nodes" None and why when the cluster cannot be reached: `what`
    says what was therefore not read)."""
    from serving.client import ServeUnavailable, get_client

    try:
        return Status.OK, "", {**read(get_client()), "error": ""}
    except ServeUnavailable as exc:
        why = f"the Ray cluster could not be reached, so {what}: {exc}"
        return Status.UNKNOWN, why, {"nodes": None, "error": why}


def all_probes() -> list[Probe]:
    from health.probes import celery, disk, gpu_probe, multinode, progress, serve, tcp, zombies

    return [
        *disk.probes(), *tcp.probes(), *celery.probes(), *progress.probes(), *serve.probes(), *gpu_probe.probes(),
        *zombies.probes(), *multinode.probes(),
    ]


def _read(result: Result) -> None:
    started = time.thread_time()
    try:
        outcome = result.probe.read()
        result.status, result.detail = outcome[0], outcome[1]
        result.fetched = outcome[2] if len(outcome) > 2 else None
    except Exception as exc:  # noqa: BLE001 — a probe that breaks is a reading too, with its reason
        result.status, result.detail = Status.UNKNOWN, f"the probe failed: {type(exc).__name__}: {exc}"
    finally:
        result.cost_ms = round((time.thread_time() - started) * 1000, 3)
        result.done = True
        connection.close()  # this thread's own connection, if the probe used the database


def _record(result: Result) -> None:
    started = time.thread_time()
    try:
        result.status, result.detail = result.probe.record(result.fetched)
    except Exception as exc:  # noqa: BLE001 — as in _read
        result.status, result.detail = Status.UNKNOWN, f"recording the probe's reading failed: {type(exc).__name__}: {exc}"
    finally:
        result.cost_ms = round(result.cost_ms + (time.thread_time() - started) * 1000, 3)


def run_cycle(probes: list[Probe]) -> list[Result]:
    """Read every probe and record each reading; returns the results (cost included)."""
    # Imported here, not at the top: health/probes/gpu.py runs inside Ray's worker processes,
    # where Django is not set up, and importing it must not pull in the models.
    from health.models import record_reading

    timeout = settings.GANTRY_HEALTH_PROBE_TIMEOUT_S
    results = [Result(probe) for probe in probes]
    threads = [threading.Thread(target=_read, args=(r,), name=f"probe {r.probe.name}", daemon=True) for r in results]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for result in results:
        if not result.done:
            # Its thread keeps running until the probe's own socket timeouts end it; its cost is unknown.
            result.status, result.detail = Status.UNKNOWN, f"the probe did not answer within {timeout} s"
        elif result.probe.record is not None and result.fetched is not None:
            _record(result)
        record_reading(result.probe.name, result.probe.kind, result.status, result.detail, cost_ms=result.cost_ms)
    return results
