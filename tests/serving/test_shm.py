"""The shared-memory sweep on real files and real processes: what no process holds goes once it is
older than the grace period; what a live process holds open or maps, and what is young, stays."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from serving.shm import find_orphan_segments, remove_orphans, sweep

MiB = 1 << 20


def an_hour_later() -> float:
    return time.time() + 3600


# A child that holds `path` as vLLM's engine processes do: open (fd) or mapped with its fd closed.
HOLD_FILE = textwrap.dedent(
    """
    import mmap, sys
    path, how = sys.argv[1], sys.argv[2]
    f = open(path, "r+b")
    if how == "maps":
        kept = mmap.mmap(f.fileno(), 0)
        f.close()
    print("ready", flush=True)
    sys.stdin.read()
    """
)
# A child that makes a segment the way vLLM does (multiprocessing.shared_memory) and, like a replica
# Ray kills with its resource tracker, never unlinks it.
MAKE_SEGMENT = textwrap.dedent(
    """
    import sys
    from multiprocessing import resource_tracker, shared_memory
    segment = shared_memory.SharedMemory(name=sys.argv[1], create=True, size=4 << 20)
    segment.buf[:5] = b"hello"
    resource_tracker.unregister(segment._name, "shared_memory")
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture
def holder():
    """Start a child running `code` with `args`; wait until it holds what it was given."""
    children: list[subprocess.Popen] = []

    def start(code: str, *args: str) -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        children.append(child)
        assert child.stdout.readline().strip() == "ready"
        return child

    yield start
    for child in children:
        child.kill()
        child.wait(timeout=10)


def segment_file(folder: Path, name: str, size: int = 64 * MiB, written: int = MiB, age_s: float = 0) -> Path:
    """A sparse file like a ring buffer vLLM sized but barely wrote: big apparent, small resident."""
    path = folder / name
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"x" * written)
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))
    return path


def test_a_segment_no_process_holds_is_removed_once_past_the_grace(tmp_path):
    path = segment_file(tmp_path, "psm_orphan")

    (removed,) = remove_orphans(tmp_path, now=an_hour_later(), grace_s=60)

    assert removed.name == "psm_orphan"
    assert removed.apparent_bytes == 64 * MiB
    assert MiB <= removed.resident_bytes < 2 * MiB
    assert removed.age_s >= 3600 - 5
    assert not path.exists()


def test_a_segment_younger_than_the_grace_is_left_alone(tmp_path):
    path = segment_file(tmp_path, "psm_young")

    assert remove_orphans(tmp_path, grace_s=60) == []
    assert path.exists()

    segment_file(tmp_path, "psm_old", age_s=120)
    assert [s.name for s in remove_orphans(tmp_path, grace_s=60)] == ["psm_old"]
    assert path.exists()


@pytest.mark.parametrize("how", ["open", "maps"])
def test_a_segment_a_live_process_holds_survives_until_it_is_gone(tmp_path, holder, how):
    path = segment_file(tmp_path, "psm_held")
    orphan = segment_file(tmp_path, "psm_orphan")
    child = holder(HOLD_FILE, str(path), how)

    assert [s.name for s in remove_orphans(tmp_path, now=an_hour_later(), grace_s=60)] == ["psm_orphan"]
    assert path.exists() and not orphan.exists()

    child.kill()
    child.wait(timeout=10)
    assert [s.name for s in remove_orphans(tmp_path, now=an_hour_later(), grace_s=60)] == ["psm_held"]
    assert not path.exists()


def sweep_from_another_pid_namespace(folder: Path) -> list[str]:
    """remove_orphans run where /proc shows none of this machine's other processes, as from a
    container that shares the node's /dev/shm; skips where this user may not make one."""
    code = (
        "import json; from serving.shm import remove_orphans; "
        f"print(json.dumps([s.name for s in remove_orphans({str(folder)!r}, now={an_hour_later()}, grace_s=60)]))"
    )
    run = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=60,
    )
    if run.returncode != 0 and "unshare" in run.stderr:
        pytest.skip(f"cannot make a PID namespace here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_a_holder_that_proc_does_not_show_still_keeps_its_segment(tmp_path, holder):
    path = segment_file(tmp_path, "psm_held")
    segment_file(tmp_path, "psm_orphan")
    holder(HOLD_FILE, str(path), "maps")

    assert sweep_from_another_pid_namespace(tmp_path) == ["psm_orphan"]
    assert path.exists()


def test_a_real_shared_memory_segment_stays_while_its_maker_lives_and_goes_after(holder):
    # /dev/shm itself, where multiprocessing.shared_memory puts it; the prefix keeps this test to
    # its own segment on a machine others use too.
    prefix = f"psm_gantrytest_{uuid.uuid4().hex[:8]}"
    path = Path("/dev/shm") / f"{prefix}_ring"
    try:
        child = holder(MAKE_SEGMENT, path.name)
        assert path.exists()

        assert find_orphan_segments("/dev/shm", now=an_hour_later(), grace_s=60, prefix=prefix) == []
        assert remove_orphans("/dev/shm", now=an_hour_later(), grace_s=60, prefix=prefix) == []
        assert path.exists()

        child.send_signal(signal.SIGKILL)  # as Ray stops a replica's engine: no chance to unlink
        child.wait(timeout=10)
        (found,) = find_orphan_segments("/dev/shm", now=an_hour_later(), grace_s=60, prefix=prefix)
        assert found.name == path.name and found.apparent_bytes == 4 * MiB
        assert [s.name for s in remove_orphans("/dev/shm", now=an_hour_later(), grace_s=60, prefix=prefix)] == [path.name]
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_only_files_named_like_segments_are_touched(tmp_path):
    other = segment_file(tmp_path, "sem.loky-123", age_s=3600)
    target = segment_file(tmp_path, "not-a-segment", age_s=3600)
    (tmp_path / "psm_link").symlink_to(target)
    (tmp_path / "psm_folder").mkdir()

    assert remove_orphans(tmp_path, now=an_hour_later(), grace_s=60) == []
    assert other.exists() and target.exists() and (tmp_path / "psm_link").is_symlink() and (tmp_path / "psm_folder").is_dir()


def test_the_sweep_a_ray_node_runs_reports_plain_dicts(tmp_path):
    segment_file(tmp_path, "psm_left", size=8 * MiB, age_s=120)
    segment_file(tmp_path, "psm_new")

    (removed,) = sweep(str(tmp_path), grace_s=60)

    assert set(removed) == {"name", "bytes", "resident_bytes", "age_s"}
    assert removed["name"] == "psm_left" and removed["bytes"] == 8 * MiB and removed["age_s"] >= 120
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psm_new"]
