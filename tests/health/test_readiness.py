"""Multi-node readiness compared across nodes (seed 003 MN1-MN4): FakeServe reports each node's
reading as RayServeClient.node_readiness does (tests/integration/test_multinode_readiness.py reads
real ones on two real Ray nodes); the panel's card and the new-model preview show the result."""
from __future__ import annotations

import pytest
from django.utils import timezone

from health.choices import Status
from health.models import HealthCheck
from health.cycle import run_cycle
from health.probes import multinode

pytestmark = pytest.mark.django_db

NOT_NEEDED = {"needed": False, "running": False, "version": "", "driver_version": "", "error": ""}


def node(name: str, address: str, *, mtu: dict | None = None, fabric: dict | None = None, **nccl: str) -> dict:
    settings = {"NCCL_SOCKET_IFNAME": "ens5", "NCCL_IB_DISABLE": "1", "NCCL_IB_HCA": None}
    settings.update(nccl)
    return {"node_id": name * 28, "address": address, "nccl": settings, "mtu": mtu or {"ens5": 9000}, "fabric_manager": fabric or NOT_NEEDED, "error": ""}


def check(name: str) -> HealthCheck:
    run_cycle(multinode.probes())
    return HealthCheck.objects.get(name=name)


def test_identical_nodes_are_ok_and_a_lone_node_has_nothing_to_compare(fake):
    fake.readiness_readings = [node("a", "10.0.0.1"), node("b", "10.0.0.2")]
    assert (check(multinode.NCCL_CHECK).status, check(multinode.NCCL_CHECK).detail) == (Status.OK, "NCCL settings the same on all 2 nodes")
    assert check(multinode.MTU_CHECK).status == Status.OK

    fake.readiness_readings = [node("a", "10.0.0.1")]
    assert check(multinode.NCCL_CHECK).detail == "one node: no other to compare its NCCL settings with"


def test_a_differing_nccl_setting_warns_naming_it_and_each_nodes_value(fake):
    fake.readiness_readings = [node("a", "10.0.0.1"), node("b", "10.0.0.2", NCCL_SOCKET_IFNAME="docker0", TORCH_NCCL_BLOCKING_WAIT="1")]

    nccl = check(multinode.NCCL_CHECK)

    assert nccl.status == Status.WARN
    assert nccl.detail.startswith(
        "NCCL_SOCKET_IFNAME differs: 10.0.0.1 (aaaaaaaa) ens5, 10.0.0.2 (bbbbbbbb) docker0; "
        "TORCH_NCCL_BLOCKING_WAIT differs: 10.0.0.1 (aaaaaaaa) (unset), 10.0.0.2 (bbbbbbbb) 1."
    )
    assert "in the environment `ray start` runs with" in nccl.detail


def test_a_jumbo_frame_node_beside_a_1500_one_is_an_mtu_mismatch(fake):
    fake.readiness_readings = [node("a", "10.0.0.1", mtu={"ens5": 9000}), node("b", "10.0.0.2", mtu={"eth0": 1500})]

    mtu = check(multinode.MTU_CHECK)

    assert mtu.status == Status.WARN
    assert mtu.detail.startswith("data-plane MTU differs: 10.0.0.1 (aaaaaaaa) 9000, 10.0.0.2 (bbbbbbbb) 1500.")


def test_fabric_manager_is_critical_when_stopped_on_nvswitch_warn_when_its_version_differs(fake):
    stopped = {**NOT_NEEDED, "needed": True, "driver_version": "550.54.15"}
    mismatched = {**stopped, "running": True, "version": "550.54.14"}
    fake.readiness_readings = [node("a", "10.0.0.1", fabric=stopped), node("b", "10.0.0.2", fabric=mismatched)]

    fabric = check(multinode.FABRIC_CHECK)

    assert fabric.status == Status.CRITICAL
    assert "10.0.0.1 (aaaaaaaa): NVSwitch but nv-fabricmanager is not running" in fabric.detail
    assert "10.0.0.2 (bbbbbbbb): nv-fabricmanager 550.54.14 does not match driver 550.54.15" in fabric.detail
    matching = {**mismatched, "version": "550.54.15"}
    fake.readiness_readings = [node("a", "10.0.0.1", fabric=matching), node("b", "10.0.0.2")]
    assert (check(multinode.FABRIC_CHECK).status, check(multinode.FABRIC_CHECK).detail) == (Status.OK, "running and matching the driver on 1 NVSwitch node(s)")


def test_a_node_that_did_not_answer_is_left_out_of_the_comparison_and_said(fake):
    fake.readiness_readings = [node("a", "10.0.0.1"), {"node_id": "c" * 56, "address": "10.0.0.3", "error": "the node did not report its multi-node readiness"}]

    (result,) = run_cycle(multinode.probes())

    assert result.status == Status.WARN and "1 of 2 node(s) read; not read: 10.0.0.3 (cccccccc)" in result.detail
    assert HealthCheck.objects.get(name=multinode.NCCL_CHECK).status == Status.OK


def test_the_panel_has_a_multi_node_readiness_card_with_each_nodes_values(admin_client, fake):
    fake.readiness_readings = [node("a", "10.0.0.1"), node("b", "10.0.0.2", NCCL_SOCKET_IFNAME="docker0")]
    run_cycle(multinode.probes())

    page = admin_client.get("/health/").text

    card = page.split('id="readiness"')[1].split("</section>")[0]
    assert "<th>10.0.0.1 (aaaaaaaa)</th><th>10.0.0.2 (bbbbbbbb)</th>" in card
    assert '<tr class="differs"><td>NCCL_SOCKET_IFNAME <strong>differs</strong></td><td><code>ens5</code></td><td><code>docker0</code></td></tr>' in card
    assert "not needed (no NVSwitch)" in card


# --- The new-model preview -----------------------------------------------------------------------

@pytest.fixture
def gpu_nodes(settings):
    """The reconciler's snapshot of a cluster with two GPU nodes of 4 GPUs."""
    from serving import snapshot
    from serving.cluster.serve import ClusterResources

    settings.GANTRY_ENGINE = "gpu"
    nodes = tuple({"node_id": n * 56, "address": f"10.0.0.{i}", "gpus": 4.0, "free_gpus": 4.0} for i, n in enumerate("ab", 1))
    snapshot.record({}, ClusterResources(8, 8, 32, 32, nodes), "gpu", timezone.now())


def preview(client, gpus: int):
    form = {"mode": "form", "preview": "form", "model_id": "big", "model_source": "$HOME/common/hf/tiny-llama", "num_replicas": "1", "gpus_per_replica": str(gpus)}
    return client.post("/serving/new/preview", form)


@pytest.fixture
def tiny_folder(settings, tmp_path):
    (tmp_path / "hf" / "tiny-llama").mkdir(parents=True)
    settings.GANTRY_HF_ROOT = tmp_path / "hf"
    settings.GANTRY_USERS_ROOT = tmp_path / "users"


def test_the_preview_warns_about_readiness_near_the_gpu_count_when_the_cluster_has_several_gpu_nodes(alice_client, fake, gpu_nodes, tiny_folder):
    fake.readiness_readings = [node("a", "10.0.0.1"), node("b", "10.0.0.2", NCCL_IB_DISABLE="0")]
    run_cycle(multinode.probes())

    page = preview(alice_client, 2)

    assert page.status_code == 200, page.text[-2000:]
    warning = page.text.split('id="preview-gpus"')[1].split("</section>")[0]
    assert "Multi-node readiness</strong> (the cluster has 2 GPU nodes: replicas may be placed on any of them)" in warning
    assert "multinode:nccl (warn): NCCL_IB_DISABLE differs: 10.0.0.1 (aaaaaaaa) 1, 10.0.0.2 (bbbbbbbb) 0." in warning


def test_a_replica_wider_than_any_node_is_told_it_spans_nodes(alice_client, fake, gpu_nodes, tiny_folder):
    fake.readiness_readings = [node("a", "10.0.0.1"), node("b", "10.0.0.2")]
    run_cycle(multinode.probes())

    warning = preview(alice_client, 8).text

    assert "one replica needs 8 GPUs and no node has more than 4: it spans nodes" in warning
    assert "fabric manager, NCCL settings and MTU agree across the nodes" in warning


def test_a_one_node_cluster_preview_says_nothing_about_it(alice_client, fake, settings, tiny_folder):
    from serving import snapshot
    from serving.cluster.serve import ClusterResources

    settings.GANTRY_ENGINE = "gpu"
    snapshot.record({}, ClusterResources(4, 4, 16, 16, ({"node_id": "a" * 56, "gpus": 4.0, "free_gpus": 4.0},)), "gpu", timezone.now())

    page = preview(alice_client, 2)

    assert page.status_code == 200 and 'id="preview-gpus"' in page.text and "preview-readiness" not in page.text


def test_an_unreachable_cluster_turns_the_checks_read_before_unknown(fake):
    fake.readiness_readings = [node("a", "10.0.0.1"), node("b", "10.0.0.2")]
    run_cycle(multinode.probes())
    fake.unavailable = True

    (result,) = run_cycle(multinode.probes())

    assert result.status == Status.UNKNOWN and "could not be reached" in result.detail
    assert set(HealthCheck.objects.filter(kind=multinode.KIND).values_list("name", "status")) == {
        (multinode.CLUSTER_CHECK, Status.UNKNOWN), (multinode.NCCL_CHECK, Status.UNKNOWN),
        (multinode.MTU_CHECK, Status.UNKNOWN), (multinode.FABRIC_CHECK, Status.UNKNOWN),
    }
