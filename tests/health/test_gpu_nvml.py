"""health/probes/gpu.py reads the NVIDIA driver through NVML and never raises.

This machine has no GPU, so most tests hand in a stand-in for pynvml that behaves like it: pynvml's
own NVMLError classes (built from NVML's return codes the way pynvml raises them), str values as
nvidia-ml-py returns them (bytes as older pynvml did), calls before nvmlInit refused with
Uninitialized, and nvidia-ml-py 13's process lists (the unversioned call is _v3, and raises
NVMLLibraryMismatchError, no NVMLError, on a driver without that symbol). The real pynvml is tested too: here it must say plainly that there is no driver, and
on a machine with a GPU (`nvidia-smi -L` works) it must read real values.
"""
from __future__ import annotations

import re
import subprocess
import time
from types import SimpleNamespace

import pynvml
import pytest

from health.probes import gpu
from serving.engine import _nvidia_gpu_present


class StandInNvml:
    """pynvml's calls that gpu.py uses, over a made-up machine. `init_error` / `fail` hold NVML
    return codes (pynvml.NVML_ERROR_*), raised as pynvml raises them: pynvml.NVMLError(code)."""

    NVMLError = pynvml.NVMLError
    NVMLLibraryMismatchError = pynvml.NVMLLibraryMismatchError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM, NVML_CLOCK_MEM = pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    NVML_VOLATILE_ECC = pynvml.NVML_VOLATILE_ECC
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError

    def __init__(self, *, driver=b"550.54.15", cuda=12040, devices=(), init_error=None, fail=None, has_v2=True, xids=()):
        self.driver, self.cuda, self.devices = driver, cuda, list(devices)
        # XID events the driver sends while an event set waits: (device index, xid code), in order.
        self.xids = list(xids)
        self.event_sets: list[dict] = []
        self.waits: list[int] = []
        self.init_error, self.fail = init_error, dict(fail or {})
        self.initialized = 0
        self.shutdowns = 0
        if not has_v2:
            self.fail["nvmlSystemGetCudaDriverVersion_v2"] = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND

    def __getattr__(self, name):
        if name.startswith("NVMLError_"):
            return getattr(pynvml, name)
        raise AttributeError(name)

    def _call(self, name, value):
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if name in self.fail:
            raise pynvml.NVMLError(self.fail[name])
        return value() if callable(value) else value

    def nvmlInit(self):
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.initialized += 1

    def nvmlShutdown(self):
        if not self.initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self.initialized -= 1
        self.shutdowns += 1

    def nvmlSystemGetDriverVersion(self):
        return self._call("nvmlSystemGetDriverVersion", self.driver)

    def nvmlSystemGetCudaDriverVersion_v2(self):
        return self._call("nvmlSystemGetCudaDriverVersion_v2", self.cuda)

    def nvmlSystemGetCudaDriverVersion(self):
        return self._call("nvmlSystemGetCudaDriverVersion", self.cuda)

    def nvmlDeviceGetCount(self):
        return self._call("nvmlDeviceGetCount", len(self.devices))

    def nvmlDeviceGetHandleByIndex(self, index):
        def handle():
            if not 0 <= index < len(self.devices):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            return self.devices[index]

        return self._call("nvmlDeviceGetHandleByIndex", handle)

    def _device(self, name, handle, key):
        def read():
            value = handle[key]
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise pynvml.NVMLError(-value)  # a device-level code, e.g. -NVML_ERROR_NOT_SUPPORTED
            if isinstance(value, type) and issubclass(value, pynvml.NVMLError):
                raise value()  # pynvml's class for the code, e.g. pynvml.NVMLError_NoPermission
            return value

        return self._call(name, read)

    def nvmlDeviceGetUUID(self, handle):
        return self._device("nvmlDeviceGetUUID", handle, "uuid")

    def nvmlDeviceGetName(self, handle):
        return self._device("nvmlDeviceGetName", handle, "name")

    def nvmlDeviceGetMemoryInfo(self, handle):
        return self._device("nvmlDeviceGetMemoryInfo", handle, "memory")

    def nvmlDeviceGetUtilizationRates(self, handle):
        return self._device("nvmlDeviceGetUtilizationRates", handle, "utilization")

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._device("nvmlDeviceGetTemperature", handle, "temperature")

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._device("nvmlDeviceGetPowerUsage", handle, "milliwatts")

    def nvmlDeviceGetClockInfo(self, handle, clock):
        assert clock in (pynvml.NVML_CLOCK_SM, pynvml.NVML_CLOCK_MEM)
        return self._device("nvmlDeviceGetClockInfo", handle, "sm_clock" if clock == pynvml.NVML_CLOCK_SM else "memory_clock")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        return self._device("nvmlDeviceGetCurrentClocksThrottleReasons", handle, "throttle")

    def nvmlDeviceGetTotalEccErrors(self, handle, error_type, counter_type):
        assert (error_type, counter_type) == (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
        return self._device("nvmlDeviceGetTotalEccErrors", handle, "ecc_uncorrected")

    def nvmlDeviceGetPcieReplayCounter(self, handle):
        return self._device("nvmlDeviceGetPcieReplayCounter", handle, "pcie_replays")

    # Process lists as nvidia-ml-py 13 has them: _v3 and _v2 each call their own driver symbol (a
    # driver without it: fail={"..._v3": NVML_ERROR_FUNCTION_NOT_FOUND}); the unversioned call is
    # _v3 behind @throwOnVersionMismatch, which turns FunctionNotFound into NVMLLibraryMismatchError.
    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle):
        return self._device("nvmlDeviceGetComputeRunningProcesses_v3", handle, "compute")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle):
        return self._device("nvmlDeviceGetComputeRunningProcesses_v2", handle, "compute")

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self._unversioned(self.nvmlDeviceGetComputeRunningProcesses_v3, handle)

    def nvmlDeviceGetGraphicsRunningProcesses_v3(self, handle):
        return self._device("nvmlDeviceGetGraphicsRunningProcesses_v3", handle, "graphics")

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, handle):
        return self._device("nvmlDeviceGetGraphicsRunningProcesses_v2", handle, "graphics")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return self._unversioned(self.nvmlDeviceGetGraphicsRunningProcesses_v3, handle)

    @staticmethod
    def _unversioned(call, handle):
        try:
            return call(handle)
        except pynvml.NVMLError_FunctionNotFound:
            raise pynvml.NVMLLibraryMismatchError("Unversioned function called and the pyNVML version does not match the NVML lib version.")

    def nvmlSystemGetProcessName(self, pid):
        return self._call("nvmlSystemGetProcessName", b"python3" if pid % 2 else "ray::ServeReplica")

    def nvmlDeviceGetIndex(self, handle):
        return self._call("nvmlDeviceGetIndex", lambda: next(i for i, d in enumerate(self.devices) if d is handle))

    # Events, as NVML gives them: a set, devices registered to it, a wait that times out when empty.
    def nvmlEventSetCreate(self):
        def create():
            self.event_sets.append({"registered": [], "freed": False})
            return len(self.event_sets) - 1

        return self._call("nvmlEventSetCreate", create)

    def nvmlDeviceRegisterEvents(self, handle, types, event_set):
        def register():
            assert types == pynvml.nvmlEventTypeXidCriticalError
            if handle.get("events") is False:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
            self.event_sets[event_set]["registered"].append(handle)

        return self._call("nvmlDeviceRegisterEvents", register)

    def nvmlEventSetWait_v2(self, event_set, timeout_ms):
        def wait():
            self.waits.append(timeout_ms)
            registered = self.event_sets[event_set]["registered"]
            for position, (index, code) in enumerate(self.xids):
                if self.devices[index] in registered:
                    del self.xids[position]
                    return SimpleNamespace(device=self.devices[index], eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=code, gpuInstanceId=0, computeInstanceId=0)
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

        return self._call("nvmlEventSetWait_v2", wait)

    def nvmlEventSetFree(self, event_set):
        self.event_sets[event_set]["freed"] = True


def h100(uuid="GPU-6f1c…", *, milliwatts=312_456, temperature=54):
    return {
        "uuid": uuid,
        "name": "NVIDIA H100 80GB HBM3",
        # pynvml returns ctypes structures with these attributes (c_nvmlMemory_t, c_nvmlUtilization_t).
        "memory": SimpleNamespace(total=85_520_809_984, used=1_048_576_000, free=84_472_233_984),
        "utilization": SimpleNamespace(gpu=37, memory=12),
        "temperature": temperature,
        "milliwatts": milliwatts,
        "sm_clock": 1980,
        "memory_clock": 2619,
        "throttle": 0x1,  # gpu_idle
        "ecc_uncorrected": 0,
        "pcie_replays": 0,
        # pynvml's c_nvmlProcessInfo_t: usedGpuMemory None where NVML says NVML_VALUE_NOT_AVAILABLE.
        "compute": [SimpleNamespace(pid=4242, usedGpuMemory=70_000_000_000)],
        "graphics": [],
    }


# --- read_driver --------------------------------------------------------------------------------

def test_it_reads_driver_cuda_and_count_and_shuts_nvml_down():
    nvml = StandInNvml(driver="550.54.15", cuda=12040, devices=[h100(), h100("GPU-2")])

    assert gpu.read_driver(nvml) == {"driver_version": "550.54.15", "driver_cuda": "12.4", "gpus": 2, "error": ""}
    assert nvml.shutdowns == 1 and nvml.initialized == 0


def test_it_decodes_the_bytes_older_pynvml_returned():
    assert gpu.read_driver(StandInNvml(driver=b"470.82.01", cuda=11040, devices=[h100()]))["driver_version"] == "470.82.01"


@pytest.mark.parametrize("number, text", [(12040, "12.4"), (12080, "12.8"), (11080, "11.8"), (13000, "13.0"), (12010, "12.1"), (0, "")])
def test_it_writes_nvmls_cuda_number_as_major_minor(number, text):
    assert gpu.cuda_version_text(number) == text


def test_it_falls_back_to_the_old_cuda_call_on_a_driver_without_v2():
    reading = gpu.read_driver(StandInNvml(cuda=11020, devices=[h100()], has_v2=False))

    assert reading["driver_cuda"] == "11.2" and reading["error"] == ""


@pytest.mark.parametrize(
    "code, words",
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver on this machine"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver is installed but not loaded"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "may not read the GPUs"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "differ in version"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVML could not start: Unknown Error"),
    ],
)
def test_a_failed_init_is_a_reading_with_its_reason_not_an_exception(code, words):
    nvml = StandInNvml(init_error=code)

    reading = gpu.read_driver(nvml)

    assert (reading["driver_version"], reading["driver_cuda"], reading["gpus"]) == ("", "", 0)
    assert words in reading["error"]
    assert nvml.shutdowns == 0  # nothing was started, so nothing is shut down


def test_a_call_failing_midway_keeps_what_was_read_and_still_shuts_down():
    nvml = StandInNvml(driver="535.104.05", cuda=12020, devices=[h100()], fail={"nvmlDeviceGetCount": pynvml.NVML_ERROR_GPU_IS_LOST})

    reading = gpu.read_driver(nvml)

    assert reading["driver_version"] == "535.104.05" and reading["driver_cuda"] == "12.2" and reading["gpus"] == 0
    assert reading["error"] == "NVML started but a reading failed: GPU is lost"
    assert nvml.shutdowns == 1


def test_a_non_nvml_exception_is_reported_too():
    class Broken(StandInNvml):
        def nvmlSystemGetDriverVersion(self):
            raise pynvml.NVMLLibraryMismatchError("pyNVML and the NVML library differ")

    nvml = Broken()
    reading = gpu.read_driver(nvml)

    assert reading["error"] == "NVML started but a reading failed: NVMLLibraryMismatchError: pyNVML and the NVML library differ"
    assert nvml.shutdowns == 1


# --- read_gpus ----------------------------------------------------------------------------------

def test_it_reads_each_gpu_for_the_panel():
    nvml = StandInNvml(devices=[h100("GPU-a"), h100("GPU-b", milliwatts=-pynvml.NVML_ERROR_NOT_SUPPORTED, temperature=61)])

    first, second = gpu.read_gpus(nvml)

    assert first == {
        "index": 0, "uuid": "GPU-a", "name": "NVIDIA H100 80GB HBM3",
        "memory_total_bytes": 85_520_809_984, "memory_used_bytes": 1_048_576_000,
        "utilization_percent": 37, "temperature_c": 54, "power_w": 312.5,
        "sm_clock_mhz": 1980, "memory_clock_mhz": 2619, "throttle_reasons": ["gpu_idle"],
        "ecc_uncorrected": 0, "pcie_replays": 0,
        "processes": [{"pid": 4242, "name": "ray::ServeReplica", "used_bytes": 70_000_000_000, "kind": "compute"}],
        "xids": [],
    }
    assert second["index"] == 1 and second["power_w"] is None and second["temperature_c"] == 61
    assert nvml.shutdowns == 1


def test_a_gpu_that_cannot_be_read_is_listed_with_its_reason():
    nameless = {**h100("GPU-x"), "uuid": -pynvml.NVML_ERROR_UNKNOWN}
    nvml = StandInNvml(devices=[h100("GPU-a"), nameless])

    readings = gpu.read_gpus(nvml)

    assert readings[0]["uuid"] == "GPU-a"
    assert readings[1] == {"index": 1, "error": "NVML could not read GPU 1: Unknown Error"}


@pytest.mark.parametrize("key", ["uuid", "memory", "temperature", "compute"])
def test_a_lost_gpu_is_an_error_marked_lost_and_the_other_gpus_are_still_read(key):
    # GPU_IS_LOST is no missing figure: whichever call hears it, the GPU has fallen off the bus.
    nvml = StandInNvml(devices=[h100("GPU-a"), {**h100("GPU-lost"), key: pynvml.NVMLError_GpuIsLost}])

    first, second = gpu.read_gpus(nvml)

    assert first["uuid"] == "GPU-a" and first["memory_total_bytes"] == 85_520_809_984
    assert second == {"index": 1, "error": "NVML could not read GPU 1: GPU is lost", "lost": True}


def test_no_driver_means_no_gpus():
    assert gpu.read_gpus(StandInNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)) == []


NOT_SUPPORTED = -pynvml.NVML_ERROR_NOT_SUPPORTED


@pytest.mark.parametrize(
    "key, field",
    [
        ("sm_clock", "sm_clock_mhz"), ("memory_clock", "memory_clock_mhz"), ("throttle", "throttle_reasons"),
        ("ecc_uncorrected", "ecc_uncorrected"), ("pcie_replays", "pcie_replays"), ("temperature", "temperature_c"),
    ],
)
def test_each_new_field_the_device_does_not_support_is_none_and_the_rest_is_read(key, field):
    nvml = StandInNvml(devices=[{**h100("GPU-a"), key: NOT_SUPPORTED}])

    (reading,) = gpu.read_gpus(nvml)

    assert reading[field] is None
    assert "error" not in reading and reading["uuid"] == "GPU-a" and reading["utilization_percent"] == 37
    others = {"sm_clock_mhz": 1980, "memory_clock_mhz": 2619, "pcie_replays": 0, "ecc_uncorrected": 0, "temperature_c": 54}
    assert all(reading[name] == value for name, value in others.items() if name != field)


# --- An NVMLError on one figure makes that figure unknown, never the GPU an error -----------------------

# What a healthy GPU may answer for one figure: not on this device (NotSupported), a symbol this
# driver lacks (FunctionNotFound), a MIG parent read by a non-root user (NoPermission), or the driver
# cannot say (Unknown). Each is pynvml's own class, raised by the stand-in as pynvml raises it.
FIELD_ERRORS = [pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_NoPermission, pynvml.NVMLError_Unknown]
# Each optional figure: the stand-in's key for it -> the fields of the reading it fills.
OPTIONAL = {
    "memory": ("memory_total_bytes", "memory_used_bytes"),
    "utilization": ("utilization_percent",),
    "temperature": ("temperature_c",),
    "milliwatts": ("power_w",),
    "sm_clock": ("sm_clock_mhz",),
    "memory_clock": ("memory_clock_mhz",),
    "throttle": ("throttle_reasons",),
    "ecc_uncorrected": ("ecc_uncorrected",),
    "pcie_replays": ("pcie_replays",),
    "compute": ("processes",),
}


def _without(reading: dict, fields: tuple) -> dict:
    return {name: value for name, value in reading.items() if name not in fields}


@pytest.mark.parametrize("key", OPTIONAL)
@pytest.mark.parametrize("error", FIELD_ERRORS, ids=lambda error: error.__name__)
def test_an_nvml_error_on_one_figure_makes_it_unknown_and_the_gpu_keeps_its_other_figures(error, key):
    (whole,) = gpu.read_gpus(StandInNvml(devices=[h100("GPU-a")]))
    device = {**h100("GPU-a"), key: error, **({"graphics": error} if key == "compute" else {})}

    reading = gpu.read_node("n", StandInNvml(devices=[device]))

    assert reading["error"] == ""
    (one,) = reading["gpus"]
    assert "error" not in one and all(one[field] is None for field in OPTIONAL[key])
    assert _without(one, OPTIONAL[key]) == _without(whole, OPTIONAL[key])  # memory, temperature, ... as read
    assert one["memory_total_bytes"] or key == "memory"


def test_the_stand_in_raises_pynvmls_own_classes():
    nvml = StandInNvml(devices=[{**h100(), "memory": pynvml.NVMLError_NoPermission, "temperature": -pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}])
    nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NoPermission):
        nvml.nvmlDeviceGetMemoryInfo(nvml.devices[0])
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetTemperature(nvml.devices[0], pynvml.NVML_TEMPERATURE_GPU)


def test_nvidia_ml_py_fails_as_the_stand_in_does_on_a_driver_without_the_v3_process_calls(monkeypatch):
    # The real pynvml over a driver that lacks the _v3 symbols: _v3 raises FunctionNotFound, the
    # unversioned call (which is _v3) raises NVMLLibraryMismatchError, no NVMLError at all.
    def lookup(name):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND if name.endswith("_v3") else pynvml.NVML_ERROR_UNINITIALIZED)

    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer", lookup)
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        pynvml.nvmlDeviceGetComputeRunningProcesses_v3(None)
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        pynvml.nvmlDeviceGetComputeRunningProcesses(None)
    nvml = StandInNvml(devices=[h100()], fail={"nvmlDeviceGetComputeRunningProcesses_v3": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND})
    nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetComputeRunningProcesses_v3(nvml.devices[0])
    with pytest.raises(pynvml.NVMLLibraryMismatchError):
        nvml.nvmlDeviceGetComputeRunningProcesses(nvml.devices[0])


FUNCTION_NOT_FOUND = pynvml.NVML_ERROR_FUNCTION_NOT_FOUND


def test_a_driver_without_the_v3_process_calls_is_read_through_v2():
    nvml = StandInNvml(devices=[h100()], fail={
        "nvmlDeviceGetComputeRunningProcesses_v3": FUNCTION_NOT_FOUND, "nvmlDeviceGetGraphicsRunningProcesses_v3": FUNCTION_NOT_FOUND,
    })

    reading = gpu.read_node("n", nvml)

    assert reading["error"] == ""
    assert reading["gpus"][0]["processes"] == [{"pid": 4242, "name": "ray::ServeReplica", "used_bytes": 70_000_000_000, "kind": "compute"}]
    assert gpu.read_node_processes("n", nvml)["gpus"][0]["processes"][0]["pid"] == 4242


def test_a_driver_with_no_process_call_at_all_leaves_the_processes_unknown_and_the_rest_read():
    nvml = StandInNvml(devices=[h100()], fail={
        f"nvmlDevice{kind}RunningProcesses{version}": FUNCTION_NOT_FOUND
        for kind in ("GetCompute", "GetGraphics") for version in ("_v3", "_v2", "")
    })

    (reading,) = gpu.read_node("n", nvml)["gpus"]

    assert reading["processes"] is None and reading["memory_used_bytes"] == 1_048_576_000 and reading["temperature_c"] == 54


def test_throttle_reasons_are_decoded_to_names_unknown_bits_as_hex():
    mask = pynvml.nvmlClocksThrottleReasonHwSlowdown | pynvml.nvmlClocksThrottleReasonSwPowerCap | 0x8000
    (reading,) = gpu.read_gpus(StandInNvml(devices=[{**h100(), "throttle": mask}]))

    assert reading["throttle_reasons"] == ["sw_power_cap", "hw_slowdown", "0x8000"]
    assert gpu.throttle_reason_names(0) == []
    # Every name matches pynvml's own bit for it.
    assert gpu.THROTTLE_REASONS[pynvml.nvmlClocksThrottleReasonHwThermalSlowdown] == "hw_thermal_slowdown"
    assert gpu.THROTTLE_REASONS[pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown] == "hw_power_brake_slowdown"
    assert gpu.THROTTLE_REASONS[pynvml.nvmlClocksThrottleReasonSwThermalSlowdown] == "sw_thermal_slowdown"
    assert gpu.THROTTLE_REASONS[pynvml.nvmlClocksThrottleReasonGpuIdle] == "gpu_idle"


def test_processes_are_compute_and_graphics_with_their_memory_or_none_where_nvml_cannot_tell():
    device = {
        **h100(),
        "compute": [SimpleNamespace(pid=4242, usedGpuMemory=70_000_000_000)],
        "graphics": [SimpleNamespace(pid=77, usedGpuMemory=None)],
    }
    (reading,) = gpu.read_gpus(StandInNvml(devices=[device]))

    assert reading["processes"] == [
        {"pid": 4242, "name": "ray::ServeReplica", "used_bytes": 70_000_000_000, "kind": "compute"},
        {"pid": 77, "name": "python3", "used_bytes": None, "kind": "graphics"},
    ]


def test_processes_are_none_when_neither_list_is_supported_and_empty_when_none_run():
    unsupported = {**h100(), "compute": NOT_SUPPORTED, "graphics": NOT_SUPPORTED}
    idle = {**h100(), "compute": [], "graphics": []}
    first, second = gpu.read_gpus(StandInNvml(devices=[unsupported, idle]))
    assert first["processes"] is None and second["processes"] == []


def test_ecc_counts_what_the_driver_says_since_it_loaded():
    (reading,) = gpu.read_gpus(StandInNvml(devices=[{**h100(), "ecc_uncorrected": 3}]))
    assert reading["ecc_uncorrected"] == 3


# --- XID events ---------------------------------------------------------------------------------

def test_a_node_reading_hears_xids_sent_during_its_bounded_wait_per_gpu():
    nvml = StandInNvml(driver="550.54.15", devices=[h100("GPU-a"), h100("GPU-b")], xids=[(1, 79), (1, 48), (0, 13)])

    reading = gpu.read_node("node-1", nvml, xid_wait_ms=50)

    assert reading["node_id"] == "node-1" and reading["driver_version"] == "550.54.15" and reading["driver_cuda"] == "12.4"
    assert reading["error"] == ""
    first, second = reading["gpus"]
    assert [event["xid"] for event in first["xids"]] == [13]
    assert [event["xid"] for event in second["xids"]] == [79, 48]
    assert all(isinstance(event["at"], float) for event in second["xids"])
    # One event set for the reading, every device registered, freed afterwards; no wait past the bound.
    assert len(nvml.event_sets) == 1 and nvml.event_sets[0]["freed"]
    assert len(nvml.event_sets[0]["registered"]) == 2
    assert nvml.waits and all(0 < wait <= 50 for wait in nvml.waits)
    assert nvml.shutdowns == 1


def test_a_reading_with_no_xid_waits_its_bound_and_hears_none():
    nvml = StandInNvml(devices=[h100()])
    started = time.monotonic()
    reading = gpu.read_node("node-1", nvml, xid_wait_ms=50)
    assert time.monotonic() - started < 1
    assert reading["gpus"][0]["xids"] == [] and nvml.event_sets[0]["freed"]


def test_a_device_without_events_is_still_read_and_the_others_still_heard():
    quiet = {**h100("GPU-vgpu"), "events": False}
    nvml = StandInNvml(devices=[quiet, h100("GPU-b")], xids=[(0, 79), (1, 94)])

    first, second = gpu.read_node("n", nvml, xid_wait_ms=50)["gpus"]

    assert first["xids"] == [] and first["uuid"] == "GPU-vgpu"
    assert [event["xid"] for event in second["xids"]] == [94]


def test_no_event_support_at_all_reads_the_gpus_without_xids():
    nvml = StandInNvml(devices=[h100()], xids=[(0, 79)], fail={"nvmlEventSetCreate": pynvml.NVML_ERROR_NOT_SUPPORTED})
    reading = gpu.read_node("n", nvml)
    assert reading["error"] == "" and reading["gpus"][0]["xids"] == [] and reading["gpus"][0]["uuid"]


def test_read_gpus_does_not_listen_for_xids_unless_asked():
    nvml = StandInNvml(devices=[h100()], xids=[(0, 79)])
    assert gpu.read_gpus(nvml)[0]["xids"] == [] and nvml.event_sets == []


def test_a_node_without_a_driver_is_a_reading_with_its_reason():
    reading = gpu.read_node("cpu-node", StandInNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert reading["gpus"] == [] and reading["node_id"] == "cpu-node"
    assert "no NVIDIA driver on this machine" in reading["error"]


# --- The real pynvml ----------------------------------------------------------------------------

# The same question serving/engine.py asks of this host: `nvidia-smi -L` works.
HAS_GPU = _nvidia_gpu_present()


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU; the test below reads it")
def test_real_nvml_on_a_machine_without_a_gpu_says_so_plainly():
    reading = gpu.read_driver()

    assert (reading["driver_version"], reading["driver_cuda"], reading["gpus"]) == ("", "", 0)
    assert "NVIDIA driver" in reading["error"], reading
    assert gpu.read_gpus() == []
    assert gpu.read_node("here")["gpus"] == [] and "NVIDIA driver" in gpu.read_node("here")["error"]


@pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU (`nvidia-smi -L` fails here)")
def test_real_nvml_reads_the_driver_and_gpus():
    reading = gpu.read_driver()

    assert reading["error"] == "", reading
    assert re.fullmatch(r"\d+\.\d+", reading["driver_cuda"]), reading
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", reading["driver_version"]), reading
    assert reading["gpus"] >= 1
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    gpus = gpu.read_gpus()
    assert len(gpus) == reading["gpus"]
    assert all(g["uuid"] in listed and g["memory_total_bytes"] > 0 for g in gpus), gpus
    node = gpu.read_node("here")
    assert node["error"] == "" and len(node["gpus"]) == reading["gpus"], node
    for one in node["gpus"]:
        assert set(one) >= {"sm_clock_mhz", "throttle_reasons", "ecc_uncorrected", "pcie_replays", "processes", "xids"}, one
        assert one["sm_clock_mhz"] is None or one["sm_clock_mhz"] > 0
        assert one["processes"] is None or all(p["pid"] > 0 for p in one["processes"])
