"""Cuda-Probe: can each node's NVIDIA driver run the CUDA build of torch installed there?

A driver supports CUDA up to the version NVML reports (driver_cuda, "12.4"); a build for a newer
CUDA (a 12.8 wheel on that driver) fails when its first replica touches the GPU, minutes into a
deploy and with an error that names neither. Older builds are fine: drivers run the CUDA versions
before their own, across majors too (an 11.8 build on a 12.4 driver runs). A GPU engine on a node
with no usable GPU, or with a CPU build of torch, is a mismatch as well. Only nodes with GPUs are
judged (a CPU-only head node is not where GPU replicas go); a cluster without any is a mismatch.

On a mismatch the spec's `cuda_probe.mode` decides: "fallback" (the default) deploys on the CPU
engine instead (data={"engine": "cpu"}, which the runner hands to the deploy), "warn" deploys on
the GPU as asked, "fail" stops. Nobody can force past a fail: the replicas would not start.
"""
from __future__ import annotations

import re

from gates.preflight.base import FAIL, OK, WARN, Evidence, GuardResult, NodeRuntime, PreflightContext

GUARD, TITLE = "cuda", "GPU driver ↔ CUDA build"
_MAJOR_MINOR = re.compile(r"(\d+)\.(\d+)")

# What kind of mismatch a node has, for the remedy: the driver is older than the build, the node
# has no usable GPU, or torch there is a CPU build (or absent).
OLD_DRIVER, NO_GPU, NO_CUDA_BUILD = "old-driver", "no-gpu", "no-cuda-build"


def check(context: PreflightContext) -> GuardResult:
    nodes = context.runtime.nodes
    if context.engine != "gpu" or context.gpus_per_replica <= 0:
        evidence = tuple(Evidence(_item(n), _declared(n), _effective(n), OK, "not needed on the CPU engine") for n in nodes)
        return GuardResult(GUARD, TITLE, OK, "CPU engine: no GPU driver needed.", evidence)

    mode = context.config.cuda_probe_mode
    on_mismatch = FAIL if mode == "fail" else WARN
    # Replicas that need GPUs are only placed on nodes that have them: a CPU-only head node (the
    # usual Ray layout) says nothing about the driver the model will meet. No GPU node at all is
    # the mismatch.
    gpu_nodes = [n for n in nodes if n.gpus > 0 and not n.nvml_error]
    cpu_nodes = [n for n in nodes if n not in gpu_nodes]
    if not gpu_nodes and context.runtime.source == "local":
        # This machine is not the cluster (a web or CI container has no GPU of its own): nothing
        # is known of the GPU nodes, so nothing is decided from it either.
        evidence = tuple(Evidence(_item(n), _declared(n), _effective(n), WARN, "this machine, not the cluster's GPU nodes") for n in nodes)
        return GuardResult(
            GUARD, TITLE, WARN,
            f"Not checked: {context.runtime.described()} has no GPU, and no worker has read the cluster's GPU nodes yet.",
            evidence,
            "The check runs against the cluster's nodes before every deploy; run it again once the workers have read the cluster.",
        )
    if gpu_nodes:
        nodes = gpu_nodes
    problems = {n.node_id: problem for n in nodes if (problem := mismatch(n))}
    evidence = tuple(_evidence(n, problems.get(n.node_id), on_mismatch) for n in nodes)
    if gpu_nodes:
        evidence += tuple(Evidence(_item(n), _declared(n), _effective(n), OK, "no GPU here: replicas that need GPUs are not placed on it") for n in cpu_nodes)
    bad = [n for n in nodes if n.node_id in problems]
    if nodes and not bad:
        builds = sorted({n.torch_cuda for n in nodes})
        return GuardResult(
            GUARD, TITLE, OK,
            f"The NVIDIA driver on {_count(nodes)} supports the torch build's CUDA {', '.join(builds)}.",
            evidence,
        )

    where = context.runtime.described()
    if not nodes:
        found = f"No node's runtime was read ({where}), so no GPU driver is known to run this model"
        kinds: dict[str, list[NodeRuntime]] = {NO_GPU: []}
    else:
        first = problems[bad[0].node_id][1]
        more = f" (and {len(bad) - 1} more node(s))" if len(bad) > 1 else ""
        found = f"On {where}, {len(bad)} of {_count(nodes)} cannot run the GPU engine: {first}{more}"
        kinds = {}
        for n in bad:
            kinds.setdefault(problems[n.node_id][0], []).append(n)
    remedy = _remedy(kinds)
    if mode == "fail":
        return GuardResult(GUARD, TITLE, FAIL, f"{found}.", evidence, remedy + " (cuda_probe.mode: fail stops the deploy here.)")
    if mode == "warn":
        return GuardResult(
            GUARD, TITLE, WARN,
            f"{found}; deploying on the GPU engine as asked (cuda_probe.mode: warn), and its replicas will likely fail to start.",
            evidence, remedy,
        )
    return GuardResult(
        GUARD, TITLE, WARN,
        f"{found}; deploying on the CPU engine instead (cuda_probe.mode: fallback).",
        evidence,
        remedy + " Until then the model runs on the CPU engine, much slower; set cuda_probe.mode: fail to stop instead.",
        data={"engine": "cpu"},
    )


def mismatch(node: NodeRuntime) -> tuple[str, str] | None:
    """(kind, why in words) when `node` cannot run the GPU engine; None when it can."""
    if node.nvml_error:
        return NO_GPU, f"no usable NVIDIA GPU ({node.nvml_error})"
    if node.gpus <= 0:
        return NO_GPU, f"the NVIDIA driver {node.driver_version} sees no GPU" if node.driver_version else "NVML sees no GPU"
    if not node.torch_cuda:
        torch = node.packages.get("torch", "")
        return NO_CUDA_BUILD, f"torch {torch} is a CPU build (no CUDA)" if torch else "torch is not installed"
    build, driver = _version(node.torch_cuda), _version(node.driver_cuda)
    if build is None:
        return NO_CUDA_BUILD, f"torch reports CUDA {node.torch_cuda!r}, which is no CUDA version"
    if driver is None:
        return NO_GPU, f"the NVIDIA driver {node.driver_version} did not report which CUDA it supports"
    if driver < build:
        return OLD_DRIVER, f"torch was built for CUDA {node.torch_cuda}, but the driver {node.driver_version} supports CUDA {node.driver_cuda} at most"
    return None


def _evidence(node: NodeRuntime, problem: tuple[str, str] | None, on_mismatch: str) -> Evidence:
    return Evidence(_item(node), _declared(node), _effective(node), on_mismatch if problem else OK, problem[1] if problem else "")


def _remedy(kinds: dict[str, list[NodeRuntime]]) -> str:
    """What to do, one step per kind of mismatch found, naming the nodes it concerns."""
    steps = []
    if OLD_DRIVER in kinds:
        old = kinds[OLD_DRIVER]
        newest = max((n.torch_cuda for n in old), key=_version_key)
        oldest = min((n.driver_cuda for n in old), key=_version_key)
        steps.append(f"Update the NVIDIA driver on {_names(old)} to one that supports CUDA {newest}, or install a torch/vLLM build for CUDA {oldest} or older")
    if NO_CUDA_BUILD in kinds:
        steps.append(f"Install the CUDA build of the inference engine (requirements-gpu.txt) on {_names(kinds[NO_CUDA_BUILD])}")
    if NO_GPU in kinds:
        steps.append("Run it on nodes with an NVIDIA GPU and a loaded driver (check `nvidia-smi` there), or deploy on the CPU engine (gpus_per_replica: 0)")
    return "; ".join(steps) + "."


def _names(nodes: list[NodeRuntime]) -> str:
    return ", ".join(_item(n) for n in nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")


def _version_key(text: str) -> tuple[int, int]:
    return _version(text) or (0, 0)


def _version(text: str) -> tuple[int, int] | None:
    match = _MAJOR_MINOR.match(text or "")
    return (int(match[1]), int(match[2])) if match else None


def _item(node: NodeRuntime) -> str:
    return f"node {node.node_id}"


def _declared(node: NodeRuntime) -> str:
    if node.torch_cuda:
        return f"CUDA {node.torch_cuda} (torch build)"
    torch = node.packages.get("torch", "")
    return f"CPU build of torch {torch}" if torch else "torch not installed"


def _effective(node: NodeRuntime) -> str:
    if node.nvml_error:
        return f"no NVIDIA driver reading: {node.nvml_error}"
    gpus = f"{node.gpus} GPU" + ("" if node.gpus == 1 else "s")
    return f"driver {node.driver_version}, CUDA {node.driver_cuda or '?'}, {gpus}"


def _count(nodes) -> str:
    return "1 node" if len(nodes) == 1 else f"{len(nodes)} nodes"
