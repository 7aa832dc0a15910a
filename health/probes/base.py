"""What every probe is: a named check that reads (status, detail), and the way a probe asks the
cluster for its nodes' readings. Each module of this package lists its checks (`probes()`);
health/cycle.py reads them all at once."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from health.choices import Status
from serving.cluster import get_client
from serving.cluster.connection import ServeUnavailable

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


def ask_cluster(what: str, read: Callable[[Any], dict]) -> tuple[str, str, dict]:
    """Off the cycle's thread: `read(client)`, the configured cluster client's per-node readings, as
    a probe's fetched reading (with "nodes" None and why when the cluster cannot be reached: `what`
    says what was therefore not read)."""
    try:
        return Status.OK, "", {**read(get_client()), "error": ""}
    except ServeUnavailable as exc:
        why = f"the Ray cluster could not be reached, so {what}: {exc}"
        return Status.UNKNOWN, why, {"nodes": None, "error": why}
