"""On an NVSwitch node (HGX/DGX) the fabric manager is told running from a real process of that name.

The kernel keeps only 15 characters of a command's name in /proc/<pid>/comm, and "nv-fabricmanager"
has 16: these tests run a real process under that name (a copy of sleep) rather than trust a stand-in
for /proc, so a check that reads the truncated name fails here as it would on the node.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from health.probes import gpu


@pytest.fixture
def nvswitch(tmp_path: Path) -> Path:
    """A /dev with an NVSwitch in it: the node needs the fabric manager."""
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidia-nvswitch0").touch()
    return dev


@pytest.fixture
def fabric_manager(tmp_path: Path):
    program = tmp_path / "nv-fabricmanager"
    shutil.copy("/bin/sleep", program)
    process = subprocess.Popen([str(program), "300"])
    # Until exec has happened /proc still shows the parent's command line.
    deadline = time.monotonic() + 5
    while Path(f"/proc/{process.pid}/comm").read_text().strip() != "nv-fabricmanage" and time.monotonic() < deadline:
        time.sleep(0.01)
    yield process
    process.kill()
    process.wait()


def test_the_kernel_truncates_the_name_so_comm_alone_cannot_tell(fabric_manager):
    assert Path(f"/proc/{fabric_manager.pid}/comm").read_text().strip() == "nv-fabricmanage"


def test_a_running_fabric_manager_on_an_nvswitch_node_is_found(nvswitch, fabric_manager):
    state = gpu.fabric_manager_state(dev=nvswitch)

    assert state["needed"] is True and state["running"] is True


def test_once_it_is_killed_it_is_no_longer_found(nvswitch, fabric_manager):
    assert gpu.fabric_manager_state(dev=nvswitch)["running"] is True
    fabric_manager.kill()
    fabric_manager.wait()

    assert gpu.fabric_manager_state(dev=nvswitch)["running"] is False


def test_a_process_whose_name_only_starts_the_same_is_not_it(nvswitch, tmp_path):
    program = tmp_path / "nv-fabricmanager-helper"
    shutil.copy("/bin/sleep", program)
    process = subprocess.Popen([str(program), "300"])
    try:
        time.sleep(0.2)
        assert gpu.fabric_manager_state(dev=nvswitch)["running"] is False
    finally:
        process.kill()
        process.wait()


def test_without_nvswitch_it_is_not_needed_even_when_it_runs(tmp_path, fabric_manager):
    state = gpu.fabric_manager_state(dev=tmp_path)

    assert state == {"needed": False, "running": False, "version": "", "driver_version": "", "error": ""}
