"""The disk probe reads bytes and inodes of real filesystems: a small tmpfs filled to the thresholds."""
from __future__ import annotations

import os
import subprocess

import pytest

from health.choices import Status
from health.probes import disk


@pytest.fixture
def small_fs(tmp_path):
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=200", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"this machine refuses to mount a tmpfs ({done.stderr.strip()}); the probe needs a filesystem it can fill")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill_bytes_to(mount, fraction: float) -> None:
    st = os.statvfs(mount)
    total = st.f_blocks * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    with open(mount / "filler", "ab") as f:
        f.write(b"\xa5" * int(total * fraction - used))
        f.flush()
        os.fsync(f.fileno())


def fill_inodes_to(mount, fraction: float) -> None:
    st = os.statvfs(mount)
    wanted = int(st.f_files * fraction) - (st.f_files - st.f_ffree)
    for i in range(wanted + 1):
        (mount / f"empty-{fraction}-{i}").touch()


def test_an_empty_filesystem_is_ok(small_fs):
    status, detail = disk.read_path(small_fs)
    assert status == Status.OK
    assert "bytes" in detail and "inodes" in detail and str(small_fs) in detail


def test_bytes_past_80_percent_warn_and_past_95_are_critical(small_fs):
    fill_bytes_to(small_fs, 0.85)
    status, detail = disk.read_path(small_fs)
    assert status == Status.WARN and "bytes 85 % used" in detail
    fill_bytes_to(small_fs, 0.97)
    assert disk.read_path(small_fs)[0] == Status.CRITICAL


def test_inodes_run_out_before_bytes_with_many_empty_files(small_fs):
    fill_inodes_to(small_fs, 0.82)
    status, detail = disk.read_path(small_fs)
    assert status == Status.WARN and "inodes 8" in detail and "bytes 0 % used" in detail
    fill_inodes_to(small_fs, 0.96)
    status, detail = disk.read_path(small_fs)
    assert status == Status.CRITICAL and "inodes 9" in detail


def test_a_missing_path_says_so():
    status, detail = disk.read_path("/nonexistent/gantry-health")
    assert status == Status.UNKNOWN and "does not exist" in detail


def test_it_watches_the_paths_that_matter(settings, tmp_path):
    settings.GANTRY_HF_ROOT = tmp_path / "hf"
    settings.GANTRY_USERS_ROOT = tmp_path / "users"
    names = {probe.name for probe in disk.probes()}
    assert {"disk:hf-root", "disk:users-root", "disk:var", "disk:dev-shm"} <= names
    assert ("disk:ray-tmp" in names) == os.path.isdir("/tmp/ray")


def test_a_gantry_folder_not_created_yet_is_ok_and_reads_the_filesystem_it_will_be_created_on(settings, tmp_path):
    settings.GANTRY_USERS_ROOT = tmp_path / "users" / "not-yet"
    (users_root,) = (probe for probe in disk.probes() if probe.name == "disk:users-root")
    status, detail = users_root.read()
    assert status == Status.OK
    assert detail.startswith(f"{tmp_path / 'users' / 'not-yet'}: not created yet; nothing stored. The filesystem it will be created on ({tmp_path}): bytes ")


def test_a_gantry_folder_on_a_full_filesystem_warns_before_it_is_created(small_fs):
    fill_bytes_to(small_fs, 0.85)
    status, detail = disk.read_folder(small_fs / "users")
    assert status == Status.WARN and "not created yet" in detail and "bytes 85 % used" in detail
