"""VRAM fit: does one replica's memory need (serving/vram_fit/estimation.py) fit the GPUs' free memory?

The need is read from the model folder; the free memory is the health probe's newest NVML reading of
every node's GPUs, which gates/preflights.py hands in (this guard, like the others, asks nothing of
Ray, the database or NVML itself). `preflight.vram_fit` decides what a shortfall does: "warn" (the
default) deploys anyway and says why the replicas may not start, "fail" stops the deploy, "off" skips
the check. Nobody can force past a fail: vLLM would refuse to start on that GPU all the same.

On the CPU engine there is no GPU memory to compare: ok, saying so. Without a reading on a GPU
cluster (the probe has not run, or failed) the guard warns "not checked" with the reason, so a report
never reads as if memory had been compared when it was not.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gates.preflight.base import FAIL, OK, WARN, Evidence, GuardResult, PreflightContext
from serving.vram_fit.checkpoint import VramEstimateError
from serving.vram_fit.estimation import estimate, gib
from serving.vram_fit.report import FitReport, fit

GUARD, TITLE = "vram", "VRAM fit"


@dataclass(frozen=True)
class GpuMemory:
    """Every node's GPUs as the health probe last read them (health/probes/gpu.py's read_node shape,
    with the node's address), the (node id, PID) pairs of the Serve replicas among their processes,
    and when it was read; `note` says why there is no reading."""

    nodes: tuple[dict, ...] = ()
    replica_pids: frozenset[tuple[str, int]] = frozenset()
    read_at: str = ""
    note: str = ""


@dataclass
class VramContext(PreflightContext):
    """The preflight context with what only this guard reads: the spec's engine options and replica
    count, and the GPUs' memory."""

    engine_kwargs: dict = field(default_factory=dict)
    num_replicas: int = 1
    gpu_memory: GpuMemory = field(default_factory=GpuMemory)


def check(context: PreflightContext) -> GuardResult:
    mode = getattr(context.config, "vram_fit", "warn")
    if mode == "off":
        return GuardResult(GUARD, TITLE, OK, "Off (preflight.vram_fit: off): GPU memory was not compared.")
    if context.engine != "gpu" or context.gpus_per_replica <= 0:
        # Not a warning: nothing about this deploy could run short of GPU memory.
        return GuardResult(GUARD, TITLE, OK, "Not needed: the model runs on the CPU engine, which uses no GPU memory.")
    engine_kwargs = getattr(context, "engine_kwargs", {}) or {}
    memory: GpuMemory = getattr(context, "gpu_memory", None) or GpuMemory(note="no GPU reading was handed to the check")
    on_short = FAIL if mode == "fail" else WARN
    try:
        need = estimate(context.folder, engine_kwargs, context.gpus_per_replica)
    except VramEstimateError as exc:
        return GuardResult(
            GUARD, TITLE, on_short, f"The memory a replica needs could not be estimated: {exc}",
            remedy="Fix the model folder (a config.json and safetensors weights vLLM can load); the deploy would fail on it as well.",
        )
    report = fit(need, memory.nodes, replica_pids=memory.replica_pids, replicas=getattr(context, "num_replicas", 1), unread=memory.note)
    first = next((g.budget for g in report.gpus if g.budget is not None), None)
    evidence = _terms(first) + tuple(
        Evidence(f"GPU {g.index} on node {g.node}", f"share {gib(g.share_bytes)}" if not g.error else "",
                 g.error or f"{gib(g.free_bytes)} free of {gib(g.total_bytes)}",
                 OK if g.fits else on_short, "" if g.fits else g.sentence())
        for g in report.gpus
    ) + tuple(Evidence("not modelled", "", note, WARN) for note in need.not_modelled)
    data = {"vram": {
        "weights_per_gpu_bytes": need.weights_per_gpu, "kv_bytes_per_token": need.kv_bytes_per_token,
        "max_model_len": need.max_model_len, "checked": report.checked, "fits": report.fits,
        "replicas_placeable": report.replicas_placeable, "read_at": memory.read_at,
        "gpus": [_gpu_data(g) for g in report.gpus if g.budget is not None],
    }}
    if not report.checked:
        return GuardResult(
            GUARD, TITLE, WARN, f"{report.summary()} By the folder alone, each replica needs {gib(need.weights_per_gpu)} of weights per GPU "
            f"and {gib(need.kv_bytes_per_token * need.max_model_len)} of KV cache for one sequence of {need.max_model_len:,} tokens.", evidence,
            "The health probe reads each GPU's memory on the cluster's nodes; run the check again once it has (the health page shows the GPUs).",
            data=data,
        )
    if report.fits:
        return GuardResult(GUARD, TITLE, WARN if need.not_modelled else OK, f"{report.summary()} {first.verdict()}", evidence, data=data)
    return GuardResult(GUARD, TITLE, on_short, report.summary(), evidence, _remedy(report) + (
        " (vram_fit: fail stops the deploy here.)" if mode == "fail" else " (vram_fit: warn deploys anyway; its replicas may not start.)"
    ), data=data)


def _gpu_data(g) -> dict:
    b = g.budget
    return {"node": g.node, "index": g.index, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes, "share_bytes": b.share_bytes,
            "non_kv_bytes": b.non_kv_bytes, "kv_available_bytes": b.kv_available_bytes, "kv_tokens": b.kv_tokens, "fits": g.fits}


def _terms(budget) -> tuple[Evidence, ...]:
    return tuple(Evidence(term, how, size) for term, size, how in budget.terms()) if budget else ()


def _remedy(report: FitReport) -> str:
    steps = []
    strangers = sorted({h.pid for g in report.short for h in g.holders if not h.is_replica and not g.share_is_free})
    if strangers:
        steps.append(f"Free the GPU memory that processes which are not replicas hold (PID {', '.join(map(str, strangers[:5]))}).")
    advice = report.advice()
    if advice:
        steps.append(advice)
    return " ".join(steps) or "Free GPU memory on the nodes, or give each replica more GPUs."
