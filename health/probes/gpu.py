"""NVIDIA GPUs through NVML (nvidia-ml-py): the one module of Gantry that imports pynvml.

It runs inside Ray's worker processes on every node (shipped by value from serving/client.py, so the
nodes need none of Gantry's code), where Django is not set up: it imports nothing of Django's or
Gantry's. Every reading happens between one nvmlInit and its nvmlShutdown and never raises: a
machine without a GPU or driver is a reading too, with its reason in words in `error`.

`read_node` is what the GPU probe runs on each node: the driver, every GPU's figures, and the XID
critical errors NVML sends during a short listen (NVML has no XID history, only live events).

Each function takes the NVML module as `nvml` (pynvml when None), so a test on a machine without a
GPU can hand in a stand-in that behaves like pynvml.
"""
from __future__ import annotations

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
    device that cannot be read at all has only its index and an `error`.
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
            gpus.append({"index": index, "error": f"NVML could not read GPU {index}: {exc}"})
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
        listed = _optional(nvml, lambda: getattr(nvml, call)(handle))
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


def _process_name(nvml: Any, pid: int) -> str:
    try:
        return _text(nvml.nvmlSystemGetProcessName(pid))
    except Exception:  # noqa: BLE001 — a process that ended between the two calls has no name
        return ""


def _wait_for_xids(nvml: Any, handles: dict[int, Any], wait_ms: int) -> list[tuple[int, dict]]:
    """(index, {xid, at}) for each XID critical error NVML sends within `wait_ms`. A device or
    driver without events (NotSupported, no event calls in this pynvml) gives none."""
    import time

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
    """A value some devices do not report (power on many consumer cards, utilization under MIG)."""
    try:
        return read()
    except nvml.NVMLError_NotSupported:
        return None


def _text(value: str | bytes) -> str:
    # nvidia-ml-py decodes strings since 11.x; older pynvml releases returned bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
