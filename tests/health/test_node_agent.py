"""The agent's per-node readings beyond the GPUs' figures (health/probes/gpu.py), on this machine:
what a PID is (alive, start time, parents) read from /proc, the reap that kills only the process the
probe saw, and the multi-node readiness reading. The processes are real children of this test."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

from health.probes import gpu
from tests.health.test_gpu_nvml import StandInNvml, h100


@pytest.fixture
def stubborn():
    """A process that ignores SIGTERM, as an engine stuck in a CUDA call does."""
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    yield process
    process.kill()
    process.wait()


def test_a_live_process_has_its_start_time_command_line_and_parents(child):
    facts = gpu.process_facts(child.pid)
    start_ticks = int(open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[19])
    assert facts == {"alive": True, "started": start_ticks, "cmdline": "sleep 300", "parents": facts["parents"]}
    assert facts["parents"][0] == os.getpid()


def test_an_ended_process_and_a_zombie_waiting_for_its_parent_are_not_alive(child):
    child.kill()
    time.sleep(0.5)  # ended, not yet waited for: state Z
    assert open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    assert gpu.process_facts(child.pid)["alive"] is False
    child.wait()
    assert gpu.process_facts(child.pid) == {"alive": False, "started": None, "cmdline": "", "parents": []}


def test_the_node_reading_adds_each_gpu_processes_facts(child):
    device = {**h100(), "compute": [SimpleNamespace(pid=child.pid, usedGpuMemory=1 << 30)], "graphics": []}

    reading = gpu.read_node_processes("here", StandInNvml(devices=[device]))

    (one,) = reading["gpus"]
    (process,) = one["processes"]
    assert reading["error"] == "" and one["uuid"] == "GPU-6f1c…"
    assert process == {"pid": child.pid, "name": "python3" if child.pid % 2 else "ray::ServeReplica", "used_bytes": 1 << 30, "kind": "compute", **gpu.process_facts(child.pid)}


def test_reap_ends_the_process_with_sigterm(child):
    outcome = gpu.reap_process(child.pid, gpu.process_facts(child.pid)["started"], {})
    assert outcome == {"outcome": "done", "signal": "SIGTERM", "reason": f"PID {child.pid} ended after SIGTERM"}
    assert child.wait(timeout=5) == -signal.SIGTERM


def test_reap_sends_sigkill_after_the_grace_to_a_process_that_ignores_sigterm(stubborn):
    started = time.monotonic()
    outcome = gpu.reap_process(stubborn.pid, gpu.process_facts(stubborn.pid)["started"], {}, grace_s=1.0)
    assert outcome["signal"] == "SIGKILL" and stubborn.wait(timeout=5) == -signal.SIGKILL
    assert time.monotonic() - started >= 1.0


def test_reap_refuses_a_replica_or_a_process_of_one_and_kills_nothing(child):
    started = gpu.process_facts(child.pid)["started"]

    own = gpu.reap_process(child.pid, started, {child.pid: "replica r1 of model m"})
    below = gpu.reap_process(child.pid, started, {os.getpid(): "replica r1 of model m"})

    assert own == {"outcome": "refused", "signal": "", "reason": f"PID {child.pid} is replica r1 of model m; scale or delete the model instead"}
    assert below["reason"] == f"PID {child.pid} is a process of replica r1 of model m (PID {os.getpid()}); scale or delete the model instead"
    assert child.poll() is None


def test_reap_refuses_a_pid_that_is_now_another_process_or_has_ended(child):
    started = gpu.process_facts(child.pid)["started"]
    assert gpu.reap_process(child.pid, started + 1, {})["reason"].startswith(f"PID {child.pid} is now another process")
    assert child.poll() is None
    child.kill()
    child.wait()
    assert gpu.reap_process(child.pid, started, {})["reason"] == f"PID {child.pid} is no longer running on this node: there is nothing to kill"


# --- Multi-node readiness -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, setting, used",
    [
        ("eth0", None, True), ("lo", None, False), ("docker0", None, False),
        ("eth0", "eth", True), ("ens5", "eth", False), ("eth0", "=eth", False), ("eth", "=eth", True),
        ("docker0", "^docker,lo", False), ("ens5", "^docker,lo", True), ("ib0", "ib,eth", True),
    ],
)
def test_the_data_plane_interfaces_are_those_nccl_socket_ifname_selects(name, setting, used):
    assert gpu.nccl_uses_interface(name, setting) is used


def test_the_mtu_is_read_from_sys_for_the_selected_interfaces():
    with open("/sys/class/net/lo/mtu") as mtu:
        assert gpu.data_plane_mtus("=lo") == {"lo": int(mtu.read())}
    assert "lo" not in gpu.data_plane_mtus(None)


def test_the_nccl_settings_are_read_from_the_environment_of_the_process(monkeypatch):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "=lo")
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    monkeypatch.delenv("NCCL_IB_HCA", raising=False)

    reading = gpu.read_node_readiness("here")

    assert reading["nccl"]["NCCL_SOCKET_IFNAME"] == "=lo" and reading["nccl"]["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
    assert reading["nccl"]["NCCL_IB_HCA"] is None and list(reading["mtu"]) == ["lo"]


def test_without_nvswitch_the_fabric_manager_is_not_needed_and_with_it_it_must_run(tmp_path):
    assert gpu.fabric_manager_state()["needed"] is False  # this machine: no /dev/nvidia-nvswitch*
    (tmp_path / "nvidia-nvswitch0").touch()

    state = gpu.fabric_manager_state(dev=tmp_path)

    assert state["needed"] is True and state["running"] is False  # no nv-fabricmanager process here


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another user")
def test_another_users_process_is_refused_with_the_reason_not_an_error():
    nobody = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "300"])
    try:
        time.sleep(0.2)
        facts = gpu.process_facts(nobody.pid)
        code = (
            "import json, sys; sys.path.insert(0, '.'); from health.probes import gpu; "
            f"print(json.dumps(gpu.reap_process({nobody.pid}, {facts['started']}, {{}})))"
        )
        # The reap runs as a different unprivileged user than the one that owns the process.
        done = subprocess.run(["setpriv", "--reuid=65533", "--regid=65533", "--clear-groups", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"may not signal PID {nobody.pid}" in done.stdout and nobody.poll() is None
    finally:
        nobody.kill()
        nobody.wait()
