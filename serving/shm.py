"""Shared-memory segments that no process uses any more, found and removed on one machine.

vLLM's engine keeps its message queues in Python's multiprocessing.shared_memory (files named
`psm_*` in /dev/shm) and leaves two of them behind for every replica Ray stops: the process that made
them is killed with its resource tracker before either can unlink them, and nothing else ever does.
They are tmpfs, kept until someone unlinks them: after an afternoon of deploys here there were 20
(4.2 GB apparent, 1.9 MB resident), one more pair per replica stopped.

A segment is an orphan when no live process holds it open (a /proc/<pid>/fd link) or maps it (a
/proc/<pid>/maps line), the kernel agrees (it grants a write lease only on a file nobody else has
open, which also covers processes /proc does not show us), and it is older than a grace period, so
that one being created right now is never touched. Unlinking one still in use would not break its
holders, but a reader attaching by name later would fail: hence the checks.

Pure standard library, no Ray and no Django: the cluster adapter ships this module by value to every
Ray node and runs `sweep` there (serving/shm_sweep.py; the Celery worker is not a Ray node), and the
tests run it on real files.
"""
from __future__ import annotations

import fcntl
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SHM_DIR = "/dev/shm"
# Python's multiprocessing.shared_memory names its segments psm_<random>; nothing else is touched.
PREFIX = "psm_"
GRACE_S = 60.0


@dataclass(frozen=True)
class Segment:
    name: str
    apparent_bytes: int  # the size it was given (st_size)
    resident_bytes: int  # the RAM it really holds (tmpfs pages written: st_blocks × 512)
    age_s: float  # since it was last written (mtime: ftruncate and write set it when it is made)

    def as_dict(self) -> dict:
        """The plain dict a Ray task on a node sends back to the driver: name, bytes (apparent),
        resident_bytes, age_s."""
        return {"name": self.name, "bytes": self.apparent_bytes, "resident_bytes": self.resident_bytes, "age_s": self.age_s}


def find_orphan_segments(
    shm_dir: str | os.PathLike = SHM_DIR, now: float | None = None, grace_s: float = GRACE_S, prefix: str = PREFIX
) -> list[Segment]:
    """Segments in `shm_dir` named `prefix`… that no process holds or maps, older than `grace_s`."""
    return [segment for segment, _ in _each_orphan(Path(os.path.realpath(shm_dir)), now, grace_s, prefix)]


def remove_orphans(
    shm_dir: str | os.PathLike = SHM_DIR, now: float | None = None, grace_s: float = GRACE_S, prefix: str = PREFIX
) -> list[Segment]:
    """Unlink what find_orphan_segments finds; returns the segments that were removed."""
    removed = []
    for segment, path in _each_orphan(Path(os.path.realpath(shm_dir)), now, grace_s, prefix):
        try:
            path.unlink()
        except OSError:
            continue  # its owner removed it meanwhile, or another user's (/dev/shm is sticky)
        removed.append(segment)
    return removed


def sweep(shm_dir: str = SHM_DIR, grace_s: float = GRACE_S) -> list[dict]:
    """remove_orphans now, as the plain dicts a Ray task on a node sends back (Segment.as_dict)."""
    return [s.as_dict() for s in remove_orphans(shm_dir, grace_s=grace_s)]


def _each_orphan(folder: Path, now: float | None, grace_s: float, prefix: str) -> Iterator[tuple[Segment, Path]]:
    """Each orphan with its path, yielded while a write lease on it is held (see _write_lease), so
    the caller can unlink it before anyone can open it again.

    The files are listed before the processes are read: a segment made after the listing is not a
    candidate, and one made just before it is younger than the grace period.
    """
    now = time.time() if now is None else now
    candidates: list[tuple[Segment, Path, int]] = []
    for entry in sorted(folder.glob(f"{prefix}*")):
        try:
            info = entry.lstat()
        except FileNotFoundError:
            continue  # removed by its owner meanwhile
        if not stat.S_ISREG(info.st_mode):
            continue  # a symlink or a folder is nobody's segment
        age = now - info.st_mtime
        if age >= grace_s:
            candidates.append((Segment(entry.name, info.st_size, info.st_blocks * 512, round(age, 1)), entry, info.st_uid))
    if not candidates:
        return
    held, unreadable_uids = _paths_in_use(str(folder))
    for segment, path, uid in candidates:
        if str(path) in held:
            continue
        with _write_lease(path) as nobody_else:
            # Where the kernel cannot say, a process whose /proc we may not read could hold any
            # segment of its own user: those stay.
            if nobody_else or (nobody_else is None and uid not in unreadable_uids):
                yield segment, path


@contextmanager
def _write_lease(path: Path) -> Iterator[bool | None]:
    """Hold a write lease on `path` for the block. The kernel grants one only when no other open
    file refers to it — an fd or a mapping, in any process, in any PID namespace (a container that
    shares this /dev/shm but whose processes /proc does not show) — and while it is held another
    open() waits for us. Yields True (granted), False (someone has it open, or it is gone), or None
    (the kernel would not say: leases disabled, or a file we neither own nor may lease)."""
    fd = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        granted: bool | None = True
    except (FileNotFoundError, BlockingIOError):  # gone, or open elsewhere (EAGAIN)
        granted = False
    except OSError:
        granted = None
    try:
        yield granted
    finally:
        if fd is not None:
            os.close(fd)  # which also releases the lease


def _paths_in_use(folder: str) -> tuple[set[str], set[int]]:
    """Paths under `folder` that some live process holds open or maps, and the users of the
    processes whose /proc entries could not be read (so what they hold is unknown)."""
    inside = folder.rstrip("/") + "/"
    held: set[str] = set()
    unreadable: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                try:
                    target = os.readlink(fd)
                except OSError:
                    continue  # closed between listing and reading
                if target.startswith(inside):
                    held.add(target)
            with open(proc / "maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    start = line.find(inside)
                    if start >= 0:
                        held.add(line[start:].rstrip("\n").removesuffix(" (deleted)"))
        except FileNotFoundError:
            continue  # the process ended: it holds nothing
        except PermissionError:
            try:
                unreadable.add(proc.stat().st_uid)
            except OSError:
                continue
        except ProcessLookupError:
            continue
    return held, unreadable
