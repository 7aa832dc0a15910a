"""Two Ray nodes on this machine, started with different NCCL settings, are reported as a mismatch.

A private head (not the session's: its environment is this module's) plus a second node joined with
`ray start --address`, each started with its own NCCL_SOCKET_IFNAME and NCCL_IB_DISABLE. The agent
reads them on each node from the environment the raylet gave its worker; the readiness probe
compares them and names both values. The second node is then replaced by one with the head's
settings: the same comparison is ok. One two-node cluster for the module, torn down after it.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import time

import pytest
from django.conf import settings as django_settings

from health.choices import Status
from health.models import HealthCheck
from health.cycle import run_cycle
from health.probes import multinode
from tests.ray_cluster import RAY, RayHead, free_port, process_tree, stop_tree, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

HEAD_ENV = {"NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_DISABLE": "1"}
OTHER_ENV = {"NCCL_SOCKET_IFNAME": "lo", "NCCL_IB_DISABLE": "0"}


@contextlib.contextmanager
def environment(values: dict[str, str]):
    """os.environ with `values` while a process is started (it inherits them), then as it was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class SecondNode:
    """A Ray worker node on this machine, joined to `head` with its own environment."""

    def __init__(self, head: RayHead, env: dict[str, str]) -> None:
        self.log = open(head.temp_dir / f"node-{time.monotonic_ns()}.log", "ab")
        ports = [
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
        ]
        self.process = subprocess.Popen(
            [str(RAY), "start", f"--address={head.address}", "--block", "--num-cpus=1", "--disable-usage-stats", *ports],
            cwd=head.temp_dir, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        stop_tree(process_tree(self.process.pid))
        self.log.close()


def alive_nodes() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node.get("Alive"))


@pytest.fixture(scope="module")
def cluster():
    import ray

    started = time.monotonic()
    with environment(HEAD_ENV):
        head = RayHead()
    saved = {name: getattr(django_settings, name) for name in ("RAY_ADDRESS", "RAY_DASHBOARD_URL", "GANTRY_SERVE_CLIENT")}
    nodes: list[SecondNode] = []
    try:
        if ray.is_initialized():
            ray.shutdown()  # attached to the session's head: this module talks to its own
        head.wait_until_up()
        django_settings.RAY_ADDRESS = head.address
        django_settings.RAY_DASHBOARD_URL = head.dashboard_url
        django_settings.GANTRY_SERVE_CLIENT = "serving.cluster.RayServeClient"
        from serving.cluster import RayServeClient

        RayServeClient()._connect()
        nodes.append(SecondNode(head, OTHER_ENV))
        wait_for("the second node to join", lambda: alive_nodes() == 2, 120)
        print(f"two-node cluster up in {time.monotonic() - started:.1f} s")
        yield head, nodes
    finally:
        for node in nodes:
            node.stop()
        if ray.is_initialized():
            ray.shutdown()
        from ray.serve import context as serve_context

        serve_context._set_global_client(None)
        head.stop()
        for name, value in saved.items():
            setattr(django_settings, name, value)
        print(f"two-node cluster module took {time.monotonic() - started:.1f} s")


def readiness_cycle(settings) -> HealthCheck:
    # Worker processes start on first use: two cold nodes on a shared 2-core machine need longer
    # than the probe's production default.
    settings.GANTRY_HEALTH_PROBE_TIMEOUT_S = 60
    settings.GANTRY_HEALTH_GRACE_READINGS = 1
    started = time.monotonic()
    (result,) = run_cycle(multinode.probes())
    print(f"readiness probe: {result.cost_ms:.1f} ms CPU in the cycle, {time.monotonic() - started:.2f} s wall")
    assert result.status == Status.OK and result.detail == "2 node(s) read", result.detail
    return HealthCheck.objects.get(name=multinode.NCCL_CHECK)


def test_different_nccl_settings_on_two_nodes_are_a_mismatch_naming_both_values(cluster, settings, admin_client):
    check = readiness_cycle(settings)
    print("multinode:nccl:", check.detail)

    assert check.status == Status.WARN
    assert "NCCL_SOCKET_IFNAME differs: " in check.detail and "NCCL_IB_DISABLE differs: " in check.detail
    ifname = check.detail.split("NCCL_SOCKET_IFNAME differs: ")[1].split(";")[0]
    assert ifname.count(" eth0") == 1 and ifname.count(" lo") == 1, check.detail
    rows = {row["setting"]: row for row in check.findings["rows"]}
    assert sorted(rows["NCCL_SOCKET_IFNAME"]["values"]) == ["eth0", "lo"] and rows["NCCL_SOCKET_IFNAME"]["differs"]
    assert sorted(rows["NCCL_IB_DISABLE"]["values"]) == ["0", "1"]
    assert not rows["NCCL_IB_HCA"]["differs"]
    # The interface each node's NCCL would use, read on that node: eth0 on one, loopback on the other.
    mtu = HealthCheck.objects.get(name=multinode.MTU_CHECK)
    interfaces = {row["setting"]: row for row in mtu.findings["rows"]}["interfaces"]["values"]
    assert sorted(value.split()[0] for value in interfaces) == ["eth0", "lo"]
    page = admin_client.get("/health/")
    assert "Multi-node readiness" in page.text and "NCCL_SOCKET_IFNAME <strong>differs</strong>" in page.text


def test_the_same_settings_on_both_nodes_are_ok(cluster, settings):
    head, nodes = cluster
    nodes.pop().stop()
    wait_for("the second node to be gone", lambda: alive_nodes() == 1, 120)
    nodes.append(SecondNode(head, HEAD_ENV))
    wait_for("the replacement node to join", lambda: alive_nodes() == 2, 120)

    check = readiness_cycle(settings)

    assert check.status == Status.OK and check.detail == "NCCL settings the same on all 2 nodes", check.detail
    assert HealthCheck.objects.get(name=multinode.MTU_CHECK).status == Status.OK
    assert HealthCheck.objects.get(name=multinode.FABRIC_CHECK).detail == "not needed: no node has NVSwitch"
