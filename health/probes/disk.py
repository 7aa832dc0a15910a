"""Disk: bytes *and* inodes of the paths Gantry writes to (seed 003: inodes run out before bytes
when a cache writes many small files). A folder of Gantry's own not created yet reads the filesystem
it will be created on; a system path that is missing (/dev/shm) reads unknown."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from django.conf import settings

from health.choices import Status, worst
from health.probes.base import Probe, Reading

WARN_PERCENT, CRITICAL_PERCENT = 80, 95
RAY_TEMP_DIR = Path("/tmp/ray")


def _status(percent: float) -> str:
    return Status.CRITICAL if percent >= CRITICAL_PERCENT else Status.WARN if percent >= WARN_PERCENT else Status.OK


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def read_path(path: str | os.PathLike) -> Reading:
    try:
        st = os.statvfs(path)
    except FileNotFoundError:
        return Status.UNKNOWN, f"{path} does not exist"
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    usable = used + st.f_bavail * st.f_frsize  # as df counts: root's reserve is not the user's
    byte_percent = 100 * used / usable if usable else 0.0
    parts = [f"bytes {int(byte_percent)} % used ({_size(used)} of {_size(usable)})"]
    statuses = [_status(byte_percent)]
    if st.f_files:
        inodes_used = st.f_files - st.f_ffree
        inode_percent = 100 * inodes_used / st.f_files
        parts.append(f"inodes {int(inode_percent)} % used ({inodes_used} of {st.f_files})")
        statuses.append(_status(inode_percent))
    else:
        parts.append("inodes: no fixed limit")
    return worst(*statuses), f"{path}: " + ", ".join(parts)


def read_folder(path: Path) -> Reading:
    """A folder Gantry creates when it first stores something there. Not created yet is no blind
    spot: nothing is stored, and the filesystem it will be created on (its nearest existing parent's)
    is read instead, so a full disk still warns before the first write fails."""
    if path.exists():
        return read_path(path)
    parent = next(p for p in path.parents if p.exists())
    status, detail = read_path(parent)
    return status, f"{path}: not created yet; nothing stored. The filesystem it will be created on ({parent}): {detail.removeprefix(f'{parent}: ')}"


# Gantry's own folders (read_folder) and the system's, which must exist (read_path).
GANTRY_FOLDERS = ("hf-root", "users-root", "var")


def watched_paths() -> dict[str, Path]:
    paths = {
        "hf-root": Path(settings.GANTRY_HF_ROOT),
        "users-root": Path(settings.GANTRY_USERS_ROOT),
        "var": Path(settings.VAR_DIR),
        "dev-shm": Path("/dev/shm"),
    }
    if RAY_TEMP_DIR.is_dir():
        paths["ray-tmp"] = RAY_TEMP_DIR
    return paths


def probes() -> list[Probe]:
    return [
        Probe(f"disk:{label}", "disk", partial(read_folder if label in GANTRY_FOLDERS else read_path, path))
        for label, path in watched_paths().items()
    ]
