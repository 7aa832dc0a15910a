"""Whether one replica of a model starts on a GPU, by the rule vLLM applies (serving/vram_fit/
estimation.py's docstring), and how each node's GPUs compare (report.py). Re-exports the names other
modules use; new code may import the module that holds the name."""
from serving.vram_fit.checkpoint import (
    CAST_DTYPES,
    DTYPE_BITS,
    MAX_HEADER_BYTES,
    MAX_SHARDS,
    VramEstimateError,
    Weights,
    read_config,
    read_header,
    read_weights,
    weight_files,
)
from serving.vram_fit.estimation import (
    GIB,
    KV_BLOCK_TOKENS,
    KV_CACHE_DTYPE_BYTES,
    SERVING_DTYPE_BYTES,
    VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
    Budget,
    Estimate,
    estimate,
    gib,
    serving_dtype,
    vllm_batch_defaults,
)
from serving.vram_fit.report import (
    SERVING_PROCESS_PREFIXES,
    FitReport,
    GpuFit,
    Holder,
    Measured,
    NodeFit,
    fit,
    fixes,
    measure,
    node_name,
    replica_processes,
    serving_pids,
)
from serving.vram_fit.shapes import Shapes, read_shapes

__all__ = [
    "CAST_DTYPES", "DTYPE_BITS", "MAX_HEADER_BYTES", "MAX_SHARDS", "VramEstimateError", "Weights",
    "read_config", "read_header", "read_weights", "weight_files", "GIB", "KV_BLOCK_TOKENS",
    "KV_CACHE_DTYPE_BYTES", "SERVING_DTYPE_BYTES", "VLLM_DEFAULT_GPU_MEMORY_UTILIZATION", "Budget",
    "Estimate", "estimate", "gib", "serving_dtype", "vllm_batch_defaults",
    "SERVING_PROCESS_PREFIXES", "FitReport", "GpuFit", "Holder", "Measured", "NodeFit", "fit", "fixes",
    "measure", "node_name", "replica_processes", "serving_pids", "Shapes", "read_shapes",
]
