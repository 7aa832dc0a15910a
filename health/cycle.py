"""One probe cycle: every probe of health/probes/ at once, each in its own thread with the same
deadline, so one that hangs (a dead NFS mount, a black-holed port) reads `unknown` after
GANTRY_HEALTH_PROBE_TIMEOUT_S while the others are recorded as usual. Each reading carries the CPU
time its own thread spent.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection

from health.choices import Status
from health.probes import celery, disk, gpu_probe, multinode, progress, serve, tcp, zombies
from health.probes.base import Probe


@dataclass
class Result:
    probe: Probe
    status: str = Status.UNKNOWN
    detail: str = ""
    cost_ms: float = 0.0
    done: bool = False
    fetched: Any = None


def all_probes() -> list[Probe]:
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
    # Looked up in health.models at each cycle, not bound when this module loads: recording is the
    # one write of a cycle, and a test breaks it there to see the cycle say why.
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
