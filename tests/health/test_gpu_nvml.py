"""health/probes/gpu.py reads the NVIDIA driver through NVML and never raises.

This machine has no GPU, so most tests hand in a stand-in for pynvml that behaves like it: pynvml's
own NVMLError classes (built from NVML's return codes the way pynvml raises them), str values as
nvidia-ml-py returns them (bytes as older pynvml did), calls before nvmlInit refused with
Uninitialized. The real pynvml is tested too: here it must say plainly that there is no driver, and
on a machine with a GPU (`nvidia-smi -L` works) it must read real values.
"""
from __future__ import annotations

import re
import subprocess
from types import SimpleNamespace

import pynvml
import pytest

from health.probes import gpu
from serving.engine import _nvidia_gpu_present


class StandInNvml:
    """pynvml's calls that gpu.py uses, over a made-up machine. `init_error` / `fail` hold NVML
    return codes (pynvml.NVML_ERROR_*), raised as pynvml raises them: pynvml.NVMLError(code)."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU

    def __init__(self, *, driver=b"550.54.15", cuda=12040, devices=(), init_error=None, fail=None, has_v2=True):
        self.driver, self.cuda, self.devices = driver, cuda, list(devices)
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


def h100(uuid="GPU-6f1c…", *, milliwatts=312_456, temperature=54):
    return {
        "uuid": uuid,
        "name": "NVIDIA H100 80GB HBM3",
        # pynvml returns ctypes structures with these attributes (c_nvmlMemory_t, c_nvmlUtilization_t).
        "memory": SimpleNamespace(total=85_520_809_984, used=1_048_576_000, free=84_472_233_984),
        "utilization": SimpleNamespace(gpu=37, memory=12),
        "temperature": temperature,
        "milliwatts": milliwatts,
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
    }
    assert second["index"] == 1 and second["power_w"] is None and second["temperature_c"] == 61
    assert nvml.shutdowns == 1


def test_a_gpu_that_cannot_be_read_is_listed_with_its_reason():
    lost = {**h100("GPU-lost"), "uuid": -pynvml.NVML_ERROR_GPU_IS_LOST}
    nvml = StandInNvml(devices=[h100("GPU-a"), lost])

    readings = gpu.read_gpus(nvml)

    assert readings[0]["uuid"] == "GPU-a"
    assert readings[1] == {"index": 1, "error": "NVML could not read GPU 1: GPU is lost"}


def test_no_driver_means_no_gpus():
    assert gpu.read_gpus(StandInNvml(init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)) == []


# --- The real pynvml ----------------------------------------------------------------------------

# The same question serving/engine.py asks of this host: `nvidia-smi -L` works.
HAS_GPU = _nvidia_gpu_present()


@pytest.mark.skipif(HAS_GPU, reason="this machine has an NVIDIA GPU; the test below reads it")
def test_real_nvml_on_a_machine_without_a_gpu_says_so_plainly():
    reading = gpu.read_driver()

    assert (reading["driver_version"], reading["driver_cuda"], reading["gpus"]) == ("", "", 0)
    assert "NVIDIA driver" in reading["error"], reading
    assert gpu.read_gpus() == []


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
