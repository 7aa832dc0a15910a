"""The CUDA probe: each node's driver against its torch build's CUDA, and what each cuda_probe.mode
does with a mismatch. The runtimes are NodeRuntime values as gates/preflight/runtime.py reads them."""
from __future__ import annotations

import pytest

from gates.preflight import cuda
from gates.preflight.base import FAIL, OK, WARN, NodeRuntime, PreflightConfig, PreflightContext, Runtime, SecretNames

MODES = ("fallback", "warn", "fail")


def node(node_id="n1", *, torch="2.13.0+cu124", torch_cuda="12.4", driver="550.54.15", driver_cuda="12.4", gpus=1, nvml_error=""):
    return NodeRuntime(node_id, {"torch": torch}, torch_cuda, driver, driver_cuda, gpus, nvml_error)


NO_DRIVER = "no NVIDIA driver on this machine: NVML's library libnvidia-ml.so.1 was not found (NVML Shared Library Not Found)"


def context(*nodes, mode="fallback", engine="gpu", gpus_per_replica=1, source="cluster", tmp_path=None):
    return PreflightContext(
        folder=tmp_path,
        config=PreflightConfig(cuda_probe_mode=mode),
        runtime=Runtime(source, tuple(nodes)),
        secrets=SecretNames(set, "the environment"),
        engine=engine,
        gpus_per_replica=gpus_per_replica,
    )


# --- A match ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("build, driver_cuda", [("12.4", "12.4"), ("12.1", "12.4"), ("11.8", "12.4"), ("12.8", "13.0")])
def test_a_driver_that_supports_the_build_passes(mode, build, driver_cuda):
    result = cuda.check(context(node(torch_cuda=build, driver_cuda=driver_cuda), mode=mode))

    assert result.status == OK and result.data == {} and result.remedy == ""
    assert f"CUDA {build}" in result.summary
    (evidence,) = result.evidence
    assert (evidence.item, evidence.declared, evidence.status) == ("node n1", f"CUDA {build} (torch build)", OK)
    assert evidence.effective == f"driver 550.54.15, CUDA {driver_cuda}, 1 GPU"


# --- Mismatches, by mode ------------------------------------------------------------------------

MISMATCHES = {
    "newer build than the driver": (node(torch="2.13.0+cu128", torch_cuda="12.8", driver="550.54.15", driver_cuda="12.4"), "built for CUDA 12.8", "Update the NVIDIA driver"),
    "CUDA 12 build on a CUDA 11 driver": (node(torch_cuda="12.1", driver="470.82.01", driver_cuda="11.4"), "supports CUDA 11.4 at most", "supports CUDA 12.1, or install a torch/vLLM build for CUDA 11.4 or older"),
    "no driver": (node(driver="", driver_cuda="", gpus=0, nvml_error=NO_DRIVER), "no usable NVIDIA GPU", "nvidia-smi"),
    "driver without GPUs": (node(gpus=0), "sees no GPU", "nvidia-smi"),
    "CPU build of torch": (node(torch="2.13.0+cpu", torch_cuda=""), "torch 2.13.0+cpu is a CPU build", "requirements-gpu.txt"),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_fallback_deploys_on_the_cpu_engine_and_says_so(case):
    runtime, why, remedy = MISMATCHES[case]

    result = cuda.check(context(runtime, mode="fallback"))

    assert result.status == WARN
    assert result.data == {"engine": "cpu"}
    assert "deploying on the CPU engine instead" in result.summary and why in result.summary
    assert remedy in result.remedy
    assert [e.status for e in result.evidence] == [WARN] and why in result.evidence[0].note


@pytest.mark.parametrize("case", MISMATCHES)
def test_warn_deploys_on_the_gpu_as_asked(case):
    runtime, why, remedy = MISMATCHES[case]

    result = cuda.check(context(runtime, mode="warn"))

    assert result.status == WARN and result.data == {}
    assert "deploying on the GPU engine as asked" in result.summary and why in result.summary
    assert remedy in result.remedy


@pytest.mark.parametrize("case", MISMATCHES)
def test_fail_stops_and_cannot_be_forced(case):
    runtime, why, remedy = MISMATCHES[case]

    result = cuda.check(context(runtime, mode="fail"))

    assert result.status == FAIL and not result.forceable and result.data == {}
    assert why in result.summary and remedy in result.remedy
    assert [e.status for e in result.evidence] == [FAIL]


def test_the_evidence_shows_build_beside_driver():
    result = cuda.check(context(node(torch_cuda="12.8", driver="550.54.15", driver_cuda="12.4"), mode="warn"))

    (evidence,) = result.evidence
    assert evidence.declared == "CUDA 12.8 (torch build)"
    assert evidence.effective == "driver 550.54.15, CUDA 12.4, 1 GPU"
    assert evidence.note == "torch was built for CUDA 12.8, but the driver 550.54.15 supports CUDA 12.4 at most"


def test_one_bad_node_among_good_ones_is_a_mismatch_and_named():
    good, bad = node("good", driver_cuda="12.8", gpus=8), node("bad", torch_cuda="12.8", driver_cuda="12.4")

    result = cuda.check(context(good, bad, mode="fail"))

    assert result.status == FAIL
    assert "1 of 2 nodes" in result.summary and "the Ray cluster's workers" in result.summary
    assert [(e.item, e.status) for e in result.evidence] == [("node good", OK), ("node bad", FAIL)]
    assert "node bad" in result.remedy and "node good" not in result.remedy


def test_no_node_read_at_all_is_a_mismatch():
    result = cuda.check(context(mode="fallback"))

    assert result.status == WARN and result.data == {"engine": "cpu"}
    assert "No node's runtime was read" in result.summary


def test_a_reading_from_this_machine_says_so():
    result = cuda.check(context(node("local", gpus=0, nvml_error=NO_DRIVER), source="local", mode="warn"))

    assert "this machine's runtime (no cluster reading)" in result.summary


# --- The CPU engine -----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("engine, gpus_per_replica", [("cpu", 0), ("gpu", 0)])
def test_the_cpu_engine_needs_no_driver_and_still_shows_the_readings(mode, engine, gpus_per_replica):
    runtime = node("local", torch="2.13.0+cpu", torch_cuda="", driver="", driver_cuda="", gpus=0, nvml_error=NO_DRIVER)

    result = cuda.check(context(runtime, mode=mode, engine=engine, gpus_per_replica=gpus_per_replica))

    assert result.status == OK and result.data == {}
    assert result.summary == "CPU engine: no GPU driver needed."
    (evidence,) = result.evidence
    assert evidence.declared == "CPU build of torch 2.13.0+cpu"
    assert evidence.effective == f"no NVIDIA driver reading: {NO_DRIVER}"
    assert evidence.status == OK


def test_the_result_survives_its_json_round_trip():
    from gates.preflight.base import GuardResult

    result = cuda.check(context(node(torch_cuda="12.8"), mode="fallback"))

    assert GuardResult.from_dict(result.as_dict()) == result


# --- Which nodes count ---------------------------------------------------------------------------

def test_a_cpu_only_head_node_beside_fitting_gpu_nodes_is_no_mismatch():
    head = node("head", driver="", driver_cuda="", gpus=0, nvml_error=NO_DRIVER)
    result = cuda.check(context(head, node("gpu-1"), node("gpu-2")))

    assert result.status == OK and result.data == {}
    assert "2 nodes" in result.summary
    (head_line,) = [e for e in result.evidence if e.item == "node head"]
    assert head_line.status == OK and "not placed on it" in head_line.note


def test_one_gpu_node_with_an_old_driver_is_a_mismatch_even_beside_good_ones():
    result = cuda.check(context(node("gpu-1"), node("gpu-2", torch_cuda="12.8", driver_cuda="12.4")))

    assert result.status == WARN and result.data == {"engine": "cpu"}
    assert "1 of 2 nodes" in result.summary


def test_this_machine_without_a_gpu_decides_nothing_when_no_cluster_reading_exists():
    # The web or CLI host is not where replicas run: no fallback is decided from its lack of a GPU.
    result = cuda.check(context(node("local", driver="", driver_cuda="", gpus=0, nvml_error=NO_DRIVER), source="local"))

    assert result.status == WARN and result.data == {}
    assert "Not checked" in result.summary
