"""After a deploy on GPUs: the VRAM estimate scored against what vLLM itself logged at start, and the
replica's NVML reading beside vLLM's share (serving.models.VramObservation)."""
from __future__ import annotations

from collections.abc import Collection

from serving.models import ServeModel, VramObservation
from serving.vram_fit.checkpoint import VramEstimateError
from serving.vram_fit.estimation import estimate
from serving.vram_fit.report import measure
from serving.vram_fit.vllm_log import read_startup


def record(model: ServeModel, nodes: list[dict], replica_pids: Collection[tuple[str, int]], engine_log: str = "") -> VramObservation | None:
    """This generation's observation: the estimate's terms on the GPU the replica used most, what vLLM
    logged in `engine_log` (a running replica's log), and what `replica_pids` ((node id, PID) of the
    replica's processes) hold in the NVML reading `nodes`. None when there is nothing to compare: CPU
    replicas, no figure for those processes (NVML in a container may not see PIDs), or a folder the
    estimate cannot read. The first observation of a generation stays."""
    spec = model.resolved_spec
    gpus = int(spec.get("gpus_per_replica", 0))
    if gpus <= 0 or model.engine_override == "cpu":
        return None
    measured = measure(nodes, replica_pids)
    if not measured.by_gpu:
        return None
    try:
        need = estimate(spec["model_source"], spec.get("engine_kwargs"), gpus)
    except VramEstimateError:
        return None
    peak = max(measured.by_gpu, key=measured.by_gpu.__getitem__)
    total, name = measured.totals[peak], measured.names[peak]
    budget = need.on_gpu(total, name)
    observation, _ = VramObservation.objects.get_or_create(model=model, generation=model.generation, defaults={
        "gpu_name": name,
        "gpu_total_bytes": total,
        "estimated_bytes": budget.share_bytes,
        "need_bytes": budget.need_bytes,
        "measured_bytes": measured.by_gpu[peak],
        "terms": {"weights_bytes": budget.weights_bytes, "non_torch_bytes": budget.non_torch_bytes,
                  "activation_bytes": budget.activation_bytes, "cuda_graph_bytes": budget.cuda_graph_bytes,
                  "kv_available_bytes": budget.kv_available_bytes, "kv_tokens": budget.kv_tokens,
                  "gpu_memory_utilization": need.gpu_memory_utilization, "max_num_seqs": budget.max_num_seqs,
                  "max_model_len": need.max_model_len},
        "logged": read_startup(engine_log).as_dict(),
        "gpus": [{"node_id": node, "index": index, "measured_bytes": used} for (node, index), used in sorted(measured.by_gpu.items())],
    })
    return observation
