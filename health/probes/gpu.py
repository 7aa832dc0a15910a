"""NVIDIA GPUs through NVML (nvidia-ml-py): the one module of Gantry that imports pynvml.

It runs inside Ray's worker processes on every node (health/node_readings.py ships it by value
through the cluster adapter, so the nodes need none of Gantry's code), where Django is not set up:
it imports nothing of Django's or Gantry's. Every reading happens between one nvmlInit and its
nvmlShutdown and never raises: a machine without a GPU or driver is a reading too, with its reason
in words in `error`.

`read_node` is what the GPU probe runs on each node: the driver, every GPU's figures, and the XID
critical errors NVML sends during a short listen (NVML has no XID history, only live events).
`read_node_processes` is the zombies probe's reading: each GPU's processes with what only the node
can tell about a PID (alive, start time, command line, parents), and `reap_process` ends one of
them there after checking it is still that process. `read_node_readiness` is the multi-node
readiness reading (seed 003 MN1-MN4): fabric manager, NCCL settings, data-plane MTU. They stay one
module, a little over 500 lines, because it is shipped to the nodes by value as one module object
(by health/node_readings.py and gates/node_runtimes.py): a part moved out (readiness needs no NVML)
would have to be shipped beside it by each caller, or the nodes would look for Gantry's code.

Each function takes the NVML module as `nvml` (pynvml when None), so a test on a machine without a
GPU can hand in a stand-in that behaves like pynvml.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable


# NVML's clocks-throttle reason bits (nvmlClocksThrottleReason*), by the names the panel shows.
THROTTLE_REASONS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# How long one reading listens for XID events. NVML sends XIDs only as live events to an event set
# registered before they happen, so each reading hears the ones of its own short wait: a bound, not
# a full log (the kernel log has every XID; the panel keeps the ones heard).
XID_WAIT_MS = 50
XID_EVENTS_PER_READING = 32


def read_driver(nvml: ModuleType | Any = None) -> dict:
    """The driver and how many GPUs it sees: driver_version ("550.54.15"), driver_cuda (the newest
    CUDA the driver supports, "12.4"), gpus (a count), error ("" or why there is no full reading)."""
    reading: dict = {"driver_version": "", "driver_cuda": "", "gpus": 0, "error": ""}

    def read(nvml: Any) -> None:
        reading["driver_version"] = _text(nvml.nvmlSystemGetDriverVersion())
        reading["driver_cuda"] = cuda_version_text(_cuda_driver_version(nvml))
        reading["gpus"] = int(nvml.nvmlDeviceGetCount())

    reading["error"] = _with_nvml(nvml, read)
    return reading


def read_gpus(nvml: ModuleType | Any = None, *, xid_wait_ms: int = 0) -> list[dict]:
    """One dict per GPU for the health panel: index, uuid, name, memory_total_bytes,
    memory_used_bytes, utilization_percent, temperature_c, power_w, sm_clock_mhz, memory_clock_mhz,
    throttle_reasons (names, see THROTTLE_REASONS), ecc_uncorrected (volatile count), pcie_replays,
    processes ({pid, name, used_bytes, kind}) and xids ({xid, at}: the XID critical errors NVML sent
    while this reading waited up to `xid_wait_ms`). A value the device does not report is None; a
    device that cannot be read at all has only its index and an `error` (and lost: True when NVML
    says GPU_IS_LOST: off the bus, as after XID 79).
    [] when NVML gives no reading (read_driver's `error` says why)."""
    gpus: list[dict] = []

    def read(nvml: Any) -> None:
        gpus.extend(_read_all(nvml, xid_wait_ms))

    _with_nvml(nvml, read)
    return gpus


def read_node(node_id: str = "", nvml: ModuleType | Any = None, *, xid_wait_ms: int = XID_WAIT_MS) -> dict:
    """What the GPU probe reads on one node, in one NVML session: node_id, driver_version,
    driver_cuda, gpus (read_gpus' list), error ("" or why the reading is not whole)."""
    reading: dict = {"node_id": node_id, "driver_version": "", "driver_cuda": "", "gpus": [], "error": ""}

    def read(nvml: Any) -> None:
        reading["driver_version"] = _text(nvml.nvmlSystemGetDriverVersion())
        reading["driver_cuda"] = cuda_version_text(_cuda_driver_version(nvml))
        reading["gpus"] = _read_all(nvml, xid_wait_ms)

    reading["error"] = _with_nvml(nvml, read)
    return reading


def cuda_version_text(version: int) -> str:
    """NVML's CUDA version number as people write it: 12040 -> "12.4", 11080 -> "11.8"."""
    if version <= 0:
        return ""
    return f"{version // 1000}.{version % 1000 // 10}"


# --- Inside one NVML session -------------------------------------------------------------------------

def _with_nvml(nvml: Any, read: Callable[[Any], None]) -> str:
    """Run `read(nvml)` between nvmlInit and nvmlShutdown; "" when it all worked, else why not.
    What `read` stored before a failure stays stored: a partial reading is still worth showing."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return "nvidia-ml-py is not installed on this machine, so its GPUs cannot be read (pip install nvidia-ml-py)"
    try:
        nvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 — never raises: the reason is the reading
        return _init_failure(nvml, exc)
    try:
        read(nvml)
    except Exception as exc:  # noqa: BLE001 — same
        return f"NVML started but a reading failed: {_described(exc)}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001 — the reading is taken; a failed shutdown changes nothing in it
            pass
    return ""


def _init_failure(nvml: Any, exc: Exception) -> str:
    if _is(nvml, exc, "NVMLError_LibraryNotFound"):
        return f"no NVIDIA driver on this machine: NVML's library libnvidia-ml.so.1 was not found ({exc})"
    if _is(nvml, exc, "NVMLError_DriverNotLoaded"):
        return f"the NVIDIA driver is installed but not loaded (is the GPU visible to this machine or container?) ({exc})"
    if _is(nvml, exc, "NVMLError_NoPermission"):
        return f"this process may not read the GPUs ({exc})"
    if _is(nvml, exc, "NVMLError_LibRmVersionMismatch"):
        return f"the NVIDIA driver's kernel module and its library differ in version; reboot or reload the driver ({exc})"
    return f"NVML could not start: {_described(exc)}"


def _is(nvml: Any, exc: Exception, name: str) -> bool:
    kind = getattr(nvml, name, None)
    return isinstance(kind, type) and isinstance(exc, kind)


def _described(exc: Exception) -> str:
    nvml_error = type(exc).__name__.startswith("NVMLError")
    return str(exc) if nvml_error else f"{type(exc).__name__}: {exc}"


def _cuda_driver_version(nvml: Any) -> int:
    try:
        return int(nvml.nvmlSystemGetCudaDriverVersion_v2())
    except Exception as exc:
        if not (isinstance(exc, AttributeError) or _is(nvml, exc, "NVMLError_FunctionNotFound")):
            raise
    return int(nvml.nvmlSystemGetCudaDriverVersion())  # a driver older than the _v2 call


def _read_all(nvml: Any, xid_wait_ms: int) -> list[dict]:
    gpus: list[dict] = []
    handles: dict[int, Any] = {}
    for index in range(int(nvml.nvmlDeviceGetCount())):
        try:
            handles[index] = nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(_read_gpu(nvml, index, handles[index]))
        except nvml.NVMLError as exc:
            handles.pop(index, None)
            lost = {"lost": True} if _is(nvml, exc, "NVMLError_GpuIsLost") else {}  # off the bus, as XID 79
            gpus.append({"index": index, "error": f"NVML could not read GPU {index}: {exc}", **lost})
    if xid_wait_ms > 0 and handles:
        by_index = {gpu["index"]: gpu for gpu in gpus if "error" not in gpu}
        for index, event in _wait_for_xids(nvml, handles, xid_wait_ms):
            if index in by_index:
                by_index[index]["xids"].append(event)
    return gpus


def _read_gpu(nvml: Any, index: int, handle: Any) -> dict:
    memory = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    utilization = _optional(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    milliwatts = _optional(nvml, lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    reasons = _optional(nvml, lambda: int(nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)))
    return {
        "index": index,
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "memory_total_bytes": int(memory.total) if memory is not None else None,
        "memory_used_bytes": int(memory.used) if memory is not None else None,
        "utilization_percent": int(utilization.gpu) if utilization is not None else None,
        "temperature_c": _optional(nvml, lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
        "power_w": round(milliwatts / 1000, 1) if milliwatts is not None else None,
        "sm_clock_mhz": _optional(nvml, lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM))),
        "memory_clock_mhz": _optional(nvml, lambda: int(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_MEM))),
        "throttle_reasons": throttle_reason_names(reasons) if reasons is not None else None,
        # Volatile: since the driver last loaded, so a GPU reset clears it (as nvidia-smi -q shows it).
        "ecc_uncorrected": _optional(nvml, lambda: int(nvml.nvmlDeviceGetTotalEccErrors(
            handle, nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nvml.NVML_VOLATILE_ECC))),
        "pcie_replays": _optional(nvml, lambda: int(nvml.nvmlDeviceGetPcieReplayCounter(handle))),
        "processes": _processes(nvml, handle),
        "xids": [],
    }


def throttle_reason_names(mask: int) -> list[str]:
    """nvmlDeviceGetCurrentClocksThrottleReasons' bit mask as names; unknown bits as hex."""
    names = [name for bit, name in THROTTLE_REASONS.items() if mask & bit]
    rest = mask & ~sum(THROTTLE_REASONS)
    if rest:
        names.append(hex(rest))
    return names


def _processes(nvml: Any, handle: Any) -> list[dict] | None:
    found: list[dict] = []
    supported = False
    for kind, call in (("compute", "nvmlDeviceGetComputeRunningProcesses"), ("graphics", "nvmlDeviceGetGraphicsRunningProcesses")):
        listed = _optional(nvml, lambda: _newest_listing(nvml, call, handle))
        if listed is None:
            continue
        supported = True
        for process in listed:
            used = getattr(process, "usedGpuMemory", None)  # pynvml gives None for NVML_VALUE_NOT_AVAILABLE
            found.append({
                "pid": int(process.pid),
                "name": _process_name(nvml, int(process.pid)),
                "used_bytes": int(used) if used is not None else None,
                "kind": kind,
            })
    return found if supported else None


def _newest_listing(nvml: Any, call: str, handle: Any) -> list | None:
    """The newest version of a process list this pynvml and driver both have; None where none. In
    nvidia-ml-py 13 the unversioned call is _v3, which a driver older than the symbol answers with
    NVMLLibraryMismatchError (no NVMLError), so each version is asked by its own name."""
    for listing in filter(None, (getattr(nvml, call + version, None) for version in ("_v3", "_v2", ""))):
        try:
            return listing(handle)
        except Exception as exc:
            if not (_is(nvml, exc, "NVMLError_FunctionNotFound") or _is(nvml, exc, "NVMLLibraryMismatchError")):
                raise
    return None


def _process_name(nvml: Any, pid: int) -> str:
    try:
        return _text(nvml.nvmlSystemGetProcessName(pid))
    except Exception:  # noqa: BLE001 — a process that ended between the two calls has no name
        return ""


def _wait_for_xids(nvml: Any, handles: dict[int, Any], wait_ms: int) -> list[tuple[int, dict]]:
    """(index, {xid, at}) for each XID critical error NVML sends within `wait_ms`. A device or
    driver without events (NotSupported, no event calls in this pynvml) gives none."""
    try:
        events = nvml.nvmlEventSetCreate()
    except (AttributeError, nvml.NVMLError):
        return []
    heard: list[tuple[int, dict]] = []
    try:
        registered: list[int] = []
        for index, handle in handles.items():
            try:
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, events)
                registered.append(index)
            except nvml.NVMLError:
                continue  # NotSupported on this device (some vGPUs, old boards): no XIDs from it
        if not registered:
            return []
        deadline = time.monotonic() + wait_ms / 1000
        while len(heard) < XID_EVENTS_PER_READING:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            try:
                data = nvml.nvmlEventSetWait_v2(events, left_ms)
            except nvml.NVMLError_Timeout:
                break
            if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                heard.append((_event_index(nvml, data.device, registered), {"xid": int(data.eventData), "at": time.time()}))
    except nvml.NVMLError:
        pass  # what was heard before the failure is kept
    finally:
        try:
            nvml.nvmlEventSetFree(events)
        except Exception:  # noqa: BLE001 — freeing changes nothing in what was heard
            pass
    return heard


def _event_index(nvml: Any, device: Any, registered: list[int]) -> int:
    try:
        return int(nvml.nvmlDeviceGetIndex(device))
    except Exception:  # noqa: BLE001 — with one device listening, the event is its own
        return registered[0] if len(registered) == 1 else -1


def _optional(nvml: Any, read: Callable[[], Any]) -> Any:
    """One figure, read on its own: None where a GPU that is fine cannot give it (not on this device,
    a symbol this driver lacks, a MIG parent read by non-root, "Unknown"), so the GPU keeps its other
    figures. Any other error, GPU_IS_LOST above all, is the whole GPU's."""
    try:
        return read()
    except nvml.NVMLError as exc:
        if any(_is(nvml, exc, f"NVMLError_{name}") for name in ("NotSupported", "FunctionNotFound", "NoPermission", "Unknown")):
            return None
        raise


def _text(value: str | bytes) -> str:
    # nvidia-ml-py decodes strings since 11.x; older pynvml releases returned bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# --- Processes holding GPU memory, as their node sees them (the zombies probe) ------------------------

PROC = Path("/proc")
CMDLINE_CHARS = 160
PARENTS_READ = 16
# After SIGTERM a process gets this long to free its GPU memory itself (vLLM's engine tears its CUDA
# context down on SIGTERM) before SIGKILL.
REAP_GRACE_S = 10.0


def read_node_processes(node_id: str = "", nvml: ModuleType | Any = None) -> dict:
    """What the zombies probe reads on one node: node_id, gpus ([{index, uuid, processes}], each
    process read_gpus' {pid, name, used_bytes, kind} plus process_facts(pid) read here, on the
    node: NVML's PIDs mean nothing on another machine), error ("" or why not)."""
    reading: dict = {"node_id": node_id, "gpus": [], "error": ""}

    def read(nvml: Any) -> None:
        for index in range(int(nvml.nvmlDeviceGetCount())):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                gpu = {"index": index, "uuid": _text(nvml.nvmlDeviceGetUUID(handle)), "processes": _processes(nvml, handle)}
            except nvml.NVMLError as exc:
                gpu = {"index": index, "error": f"NVML could not read GPU {index}: {exc}", "processes": None}
            for process in gpu["processes"] or []:
                process.update(process_facts(process["pid"]))
            reading["gpus"].append(gpu)

    reading["error"] = _with_nvml(nvml, read)
    return reading


# The kernel's initial PID namespace has this inode number (PROC_PID_INIT_INO, include/linux/proc_ns.h).
INITIAL_PID_NAMESPACE = 0xEFFFFFFC
PID_NAMESPACE = Path("/proc/self/ns/pid")


def in_own_pid_namespace() -> bool:
    """A node running in a PID namespace of its own (a container, a KubeRay pod without hostPID):
    NVML lists the host's PIDs, which this /proc does not show, or shows as other processes."""
    try:
        return PID_NAMESPACE.stat().st_ino != INITIAL_PID_NAMESPACE
    except OSError:
        return False


def process_facts(pid: int) -> dict:
    """alive (False for a PID that ended, or a zombie waiting for its parent: it runs nothing; None
    where the node cannot see the host's PIDs, `visible` False), started (its start in clock ticks
    since boot: with the PID, what tells this process from a later one that got the same number),
    cmdline (its head), parents (PIDs up to init)."""
    if in_own_pid_namespace():
        # A host PID looked up here is nothing, or another process: never call it ended or reap it.
        return {"alive": None, "visible": False, "started": None, "cmdline": "", "parents": []}
    stat = _stat(pid)
    if stat is None or stat[0] == "Z":
        return {"alive": False, "started": None, "cmdline": "", "parents": []}
    parents: list[int] = []
    ppid = stat[1]
    while ppid > 1 and len(parents) < PARENTS_READ:
        parents.append(ppid)
        above = _stat(ppid)
        ppid = above[1] if above else 0
    return {"alive": True, "started": stat[2], "cmdline": _cmdline(pid), "parents": parents}


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) from /proc/<pid>/stat, or None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself hold spaces and ")": split after the last.
    fields = text.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    text = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return text if len(text) <= CMDLINE_CHARS else text[: CMDLINE_CHARS - 1] + "…"


def reap_process(pid: int, started: int, replicas: dict[int, str], grace_s: float = REAP_GRACE_S) -> dict:
    """End `pid` on this node — SIGTERM, then SIGKILL after `grace_s` — only if it is still the
    process the probe saw (same start time) and neither it nor a parent of it is one of `replicas`
    (PID -> what it is, from Ray's actors just before). {outcome: done | refused, reason, signal}."""
    facts = process_facts(pid)
    if not facts["alive"]:
        return _refused(f"PID {pid} is no longer running on this node: there is nothing to kill")
    if facts["started"] != started:
        return _refused(f"PID {pid} is now another process (started at tick {facts['started']}, not {started}): "
                        "the one the probe saw has ended and its number was reused; nothing was killed")
    for holder in (pid, *facts["parents"]):
        if holder in replicas:
            what = replicas[holder] if holder == pid else f"a process of {replicas[holder]} (PID {holder})"
            return _refused(f"PID {pid} is {what}; scale or delete the model instead")
    sent = "SIGTERM"
    try:
        ended = _signal_and_wait(pid, started, signal.SIGTERM, grace_s)
    except PermissionError:
        return _refused(f"Ray's worker on this node may not signal PID {pid} (another user's process): kill it as that user or root there")
    if not ended:
        sent = "SIGKILL"
        if not _signal_and_wait(pid, started, signal.SIGKILL, 5.0):
            return {"outcome": "done", "signal": sent, "reason": f"SIGKILL sent to PID {pid}, but it has not ended yet (stuck in the driver?)"}
    return {"outcome": "done", "signal": sent, "reason": f"PID {pid} ended after {sent}"}


def _refused(reason: str) -> dict:
    return {"outcome": "refused", "signal": "", "reason": reason}


def _signal_and_wait(pid: int, started: int, sig: int, wait_s: float) -> bool:
    """Send `sig` and wait up to `wait_s` for the process to end; True once it has."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        facts = process_facts(pid)
        if not facts["alive"] or facts["started"] != started:
            return True
        time.sleep(0.1)
    return False


# --- Multi-node readiness (seed 003 MN1-MN4), read on each node -----------------------------------------

# The settings every node must share for one NCCL group to form and fail the same way: the interface
# and IB adapters (MN2) and the timeouts and error handling (MN3). As the raylet's environment has
# them, which is what a replica's worker inherits.
NCCL_SETTINGS = (
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_HCA",
    "NCCL_IB_DISABLE",
    "NCCL_IB_TIMEOUT",
    "NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_BLOCKING_WAIT",
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC",
)
SYS_NET = Path("/sys/class/net")
DEV = Path("/dev")
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
FABRIC_MANAGER = "nv-fabricmanager"


def read_node_readiness(node_id: str = "") -> dict:
    """node_id, nccl ({setting: value or None}), mtu ({interface: MTU} of the data-plane interfaces:
    those NCCL_SOCKET_IFNAME names when set, else every one but loopback), fabric_manager
    ({needed, running, version, driver_version, error})."""
    environment = dict(os.environ)
    nccl = {name: environment.get(name) for name in NCCL_SETTINGS}
    return {
        "node_id": node_id,
        "nccl": nccl,
        "mtu": data_plane_mtus(nccl["NCCL_SOCKET_IFNAME"]),
        "fabric_manager": fabric_manager_state(),
    }


def data_plane_mtus(socket_ifname: str | None, sys_net: Path = SYS_NET) -> dict[str, int]:
    mtus: dict[str, int] = {}
    for entry in sorted(sys_net.iterdir()) if sys_net.is_dir() else []:
        if not nccl_uses_interface(entry.name, socket_ifname):
            continue
        # Unpinned, NCCL picks among the interfaces that are up; one that is down carries nothing.
        if not socket_ifname and _read(entry / "operstate") == "down":
            continue
        try:
            mtus[entry.name] = int((entry / "mtu").read_text().strip())
        except (OSError, ValueError):
            continue
    return mtus


def nccl_uses_interface(name: str, socket_ifname: str | None) -> bool:
    """NCCL_SOCKET_IFNAME's rule: a comma list of prefixes, `=` for exact names, `^` to exclude.
    Unset: every interface but loopback (NCCL itself also skips docker0 then; it is no data plane
    either way, and a differing MTU there says nothing)."""
    if not socket_ifname:
        return name != "lo" and not name.startswith("docker")
    spec = socket_ifname.strip()
    exclude = spec.startswith("^")
    spec = spec.lstrip("^")
    exact = spec.startswith("=")
    patterns = [p for p in spec.lstrip("=").split(",") if p]
    matched = any(name == p if exact else name.startswith(p) for p in patterns)
    return not matched if exclude else matched


def fabric_manager_state(dev: Path = DEV, proc: Path = PROC) -> dict:
    """On an NVSwitch machine (HGX/DGX: /dev/nvidia-nvswitch*) nv-fabricmanager must run and match
    the driver (MN1); elsewhere it is not needed."""
    state = {"needed": any(dev.glob("nvidia-nvswitch*")), "running": False, "version": "", "driver_version": "", "error": ""}
    if not state["needed"]:
        return state
    state["running"] = any(_program(entry) == FABRIC_MANAGER for entry in proc.iterdir() if entry.name.isdigit())
    try:
        found = re.search(r"Kernel Module\s+(\S+)", DRIVER_VERSION_FILE.read_text())
        state["driver_version"] = found.group(1) if found else ""
    except OSError as exc:
        state["error"] = f"the driver's version could not be read: {exc}"
    try:
        shown = subprocess.run([FABRIC_MANAGER, "--version"], capture_output=True, text=True, timeout=5).stdout
        found = re.search(r"version is\s*:\s*(\S+)", shown)
        state["version"] = found.group(1) if found else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        state["error"] = f"{FABRIC_MANAGER} --version failed: {exc}"
    return state


def _program(entry: Path) -> str:
    # argv[0]'s file name, not comm: the kernel keeps 15 characters there, and "nv-fabricmanager" has 16.
    return os.path.basename(_read(entry / "cmdline").split("\0", 1)[0])


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()  # a command line may hold any bytes
    except OSError:
        return ""
