"""NVIDIA GPUs through NVML (nvidia-ml-py): the one module of Gantry that imports pynvml.

It runs inside Ray's worker processes on every node (shipped by value from serving/client.py, so the
nodes need none of Gantry's code), where Django is not set up: it imports nothing of Django's or
Gantry's. Every reading happens between one nvmlInit and its nvmlShutdown and never raises: a
machine without a GPU or driver is a reading too, with its reason in words in `error`.

Each function takes the NVML module as `nvml` (pynvml when None), so a test on a machine without a
GPU can hand in a stand-in that behaves like pynvml.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, Callable


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


def read_gpus(nvml: ModuleType | Any = None) -> list[dict]:
    """One dict per GPU for the health panel: index, uuid, name, memory_total_bytes,
    memory_used_bytes, utilization_percent, temperature_c, power_w. A value the device does not
    report is None; a device that cannot be read at all has only its index and an `error`.
    [] when NVML gives no reading (read_driver's `error` says why)."""
    gpus: list[dict] = []

    def read(nvml: Any) -> None:
        for index in range(int(nvml.nvmlDeviceGetCount())):
            try:
                gpus.append(_read_gpu(nvml, index))
            except nvml.NVMLError as exc:
                gpus.append({"index": index, "error": f"NVML could not read GPU {index}: {exc}"})

    _with_nvml(nvml, read)
    return gpus


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


def _read_gpu(nvml: Any, index: int) -> dict:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = _optional(nvml, lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    utilization = _optional(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    milliwatts = _optional(nvml, lambda: nvml.nvmlDeviceGetPowerUsage(handle))
    return {
        "index": index,
        "uuid": _text(nvml.nvmlDeviceGetUUID(handle)),
        "name": _text(nvml.nvmlDeviceGetName(handle)),
        "memory_total_bytes": int(memory.total) if memory is not None else None,
        "memory_used_bytes": int(memory.used) if memory is not None else None,
        "utilization_percent": int(utilization.gpu) if utilization is not None else None,
        "temperature_c": _optional(nvml, lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))),
        "power_w": round(milliwatts / 1000, 1) if milliwatts is not None else None,
    }


def _optional(nvml: Any, read: Callable[[], Any]) -> Any:
    """A value some devices do not report (power on many consumer cards, utilization under MIG)."""
    try:
        return read()
    except nvml.NVMLError_NotSupported:
        return None


def _text(value: str | bytes) -> str:
    # nvidia-ml-py decodes strings since 11.x; older pynvml releases returned bytes.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
