"""A Ray node inside a container (its own PID namespace, as in KubeRay without hostPID): NVML lists the
host's PIDs, which that node's /proc does not show. The node must say it cannot see them, never call a
live replica's process "ended … reset the GPU" nor offer to reap a number that is another process there.

The reading runs for real inside a child PID namespace (unshare --pid --mount-proc, as a container
runtime makes one, in a user namespace of its own), asked about this test's own PID: a live host process that namespace cannot see."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from health.choices import Status
from health.models import HealthCheck
from health.probes import gpu
from tests.health.test_zombies import node_check, node_reading, probe_cycle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IN_NAMESPACE = (
    "import json, sys; sys.path.insert(0, {root!r}); from health.probes import gpu; "
    "print(json.dumps({{'own': gpu.in_own_pid_namespace(), 'facts': gpu.process_facts({pid})}}))"
)


def facts_inside_a_container(pid: int) -> dict:
    # A user namespace too (--map-root-user), so no root is needed where user namespaces are allowed;
    # unshare(1) is util-linux's, on every Debian.
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", sys.executable, "-c", IN_NAMESPACE.format(root=ROOT, pid=pid)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, f"could not read from a child PID namespace: {done.stderr[-500:]}"
    return json.loads(done.stdout)


def test_on_the_host_the_initial_pid_namespace_sees_a_live_process():
    assert not gpu.in_own_pid_namespace()
    assert gpu.process_facts(os.getpid())["alive"] is True


def test_inside_a_pid_namespace_a_live_host_process_is_not_seen_and_not_called_ended():
    inside = facts_inside_a_container(os.getpid())  # this test's process: alive, on the host
    assert inside["own"] is True
    assert inside["facts"]["visible"] is False and inside["facts"]["alive"] is None


@pytest.mark.django_db
def test_the_zombies_check_of_such_a_node_says_it_cannot_see_the_hosts_processes(fake):
    inside = facts_inside_a_container(os.getpid())["facts"]
    reading = {"pid": os.getpid(), "name": "VLLM::EngineCore", "used_bytes": 70 * 1024**3, "kind": "compute", **inside}
    fake.process_readings = [node_reading(reading)]

    probe_cycle()

    check = node_check()
    assert check.status == Status.UNKNOWN
    assert "cannot see the host's processes" in check.detail and "hostPID" in check.detail
    assert "ended" not in check.detail and check.findings["zombies"] == []  # nothing to reap
    assert HealthCheck.objects.filter(status=Status.WARN).count() == 0
