"""How much GPU memory one replica needs, and whether each node's GPUs have that much free.

Pure: files and the NVML readings it is handed, no Ray, no database, no torch. The estimate has three
terms, each kept so a page can show it:

- **Weights**, from the safetensors headers alone (an 8-byte little-endian length, then that many
  bytes of JSON; the tensors are never read). Float tensors (F64/F32/F16/BF16) are held in the dtype
  vLLM serves in: engine_kwargs `dtype`, else the config's, with float32 checkpoints downcast to 16
  bits as vLLM's "auto" does on GPUs (`_resolve_auto_dtype`, vllm/config/model.py). Every other dtype
  (F8_*, I8, U8, the I32 packs of GPTQ/AWQ) weighs what the header says: a quantized checkpoint is
  what it weighs.
- **KV cache**: layers × KV heads × head dim × 2 (K and V) × dtype bytes × max_model_len ×
  max_num_seqs — room for every sequence slot at full length, the worst case the spec allows.
- **Engine overhead**: ENGINE_OVERHEAD_BYTES per GPU, below.

Tensor and pipeline parallelism split a replica over `gpus_per_replica` GPUs of one node: the weights
evenly, the KV cache by layers (pipeline) and KV heads (tensor; a rank keeps at least one head,
so tensor parallel wider than the KV heads replicates them). `need` is one GPU's share.

What vLLM itself does decides the comparison. At start each worker takes
ceil(gpu_memory_utilization × the GPU's total) and refuses to start when the GPU has less free
(`request_memory`, vllm/v1/worker/utils.py); it then fills what weights and activations leave with
KV blocks. So a GPU holds a replica when its free memory covers
    required = max(need, gpu_memory_utilization × total)
— below the second term vLLM does not start; when `need` is the larger, vLLM starts but is allowed
only its share and cannot keep max_num_seqs full-length sequences at once, which the report says
(`GpuFit.capped`) with the gpu_memory_utilization that would. A replica's GPUs are on one node
(STRICT_PACK, serving/gpu_fit.py), and Ray gives a replica whole GPUs, so a GPU holds at most one.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

GIB = 1024**3
# safetensors' own reader refuses headers over 100 MB (MAX_HEADER_SIZE in its Rust core); a
# length above that is a corrupt or hostile file, and reading it would cost that much memory here.
MAX_HEADER_BYTES = 100_000_000
MAX_SHARDS = 4096
# Per GPU, beyond weights and KV cache: the CUDA context with cuBLAS/NCCL workspaces (~0.5-0.8 GiB on
# Hopper with CUDA 12), the activations of vLLM's profiling forward pass at max_num_batched_tokens
# (~0.3-1 GiB for models up to ~8B) and CUDA graphs (~0.2-0.5 GiB unless enforce_eager). 2 GiB covers
# their sum for the models these clusters serve; it is a constant, not a measurement of this model:
# VramObservation records what deploys really hold so the constant can be corrected from evidence.
ENGINE_OVERHEAD_BYTES = 2 * GIB
# vLLM 0.32's CacheConfig default (vllm/config/cache.py); set gpu_memory_utilization in the spec to
# pin it across vLLM versions (older releases used 0.9).
VLLM_DEFAULT_GPU_MEMORY_UTILIZATION = 0.92

# Bits per element of each safetensors dtype (safetensors' Dtype enum).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "C64": 64,
}
# What vLLM casts to the serving dtype on load; the rest stays as stored.
CAST_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
# Serving dtypes (engine_kwargs `dtype`, config.json's torch_dtype/dtype) -> bytes per element.
SERVING_DTYPE_BYTES = {"float16": 2, "half": 2, "bfloat16": 2, "float32": 4, "float": 4}
# kv_cache_dtype values the spec allows beside "auto" (which follows the serving dtype).
KV_CACHE_DTYPE_BYTES = {"fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
# How NVML names the processes of a Serve replica: Ray's actor (its process title), and vLLM's engine
# and workers (vLLM sets their titles). Anything else holding GPU memory is not a replica.
SERVING_PROCESS_PREFIXES = ("ray::ServeReplica", "ray::RayWorkerWrapper", "VLLM::")


class VramEstimateError(ValueError):
    """The folder cannot be estimated; the message says why and what to fix."""


def gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


# --- vLLM's defaults that depend on the GPU ---------------------------------------------------------

def vllm_default_max_num_seqs(gpu_total_bytes: int = 0, gpu_name: str = "", max_num_batched_tokens: int | None = None) -> int:
    """vLLM's max_num_seqs when the spec sets none, for the OpenAI server usage context Ray Serve LLM
    starts the engine with (ray/llm/_internal/serve/engines/vllm/vllm_engine.py): 1024 on GPUs of 160 GiB
    and more, and of 70 GiB and more except A100s; 256 on the rest (EngineArgs.get_batch_defaults,
    vllm/engine/arg_utils.py, vLLM 0.32). vLLM then caps it at max_num_batched_tokens (8192 on the
    big GPUs, 2048 on the rest, unless the spec sets it). An unknown GPU gets the smaller default."""
    if gpu_total_bytes >= 160 * GIB:
        seqs, batched = 1024, 16384
    elif gpu_total_bytes >= 70 * GIB and "a100" not in gpu_name.lower():
        seqs, batched = 1024, 8192
    else:
        seqs, batched = 256, 2048
    return min(seqs, max_num_batched_tokens or batched)


# --- Weights: safetensors headers ---------------------------------------------------------------------

@dataclass(frozen=True)
class Weights:
    checkpoint_bytes_by_dtype: dict[str, int]  # as the headers say, e.g. {"BF16": 988_000_000}
    cast_elements: int  # elements of float tensors, which vLLM holds in the serving dtype
    kept_bytes: int  # bytes of every other tensor, held as stored
    tensors: int
    files: tuple[str, ...]

    @property
    def checkpoint_bytes(self) -> int:
        return sum(self.checkpoint_bytes_by_dtype.values())

    def served_bytes(self, dtype_bytes: int) -> int:
        return self.cast_elements * dtype_bytes + self.kept_bytes


def read_header(path: Path) -> dict:
    """One safetensors file's header as JSON, after checking it describes the file: tensors of known
    dtypes whose byte ranges match their shapes and lie inside the file. Reads the header only."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise VramEstimateError(f"{path.name} is not a safetensors file: it is {size} bytes, shorter than the 8-byte header length.")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise VramEstimateError(f"{path.name} claims a {length:,}-byte header; safetensors allows at most {MAX_HEADER_BYTES:,}, so the file is corrupt.")
            if length > size - 8:
                raise VramEstimateError(f"{path.name} claims a {length:,}-byte header but the file has only {size - 8:,} bytes after the length: it is truncated or corrupt.")
            raw = handle.read(length)
    except OSError as exc:
        raise VramEstimateError(f"{path.name} cannot be read: {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise VramEstimateError(f"{path.name}'s header is not valid JSON: the file is corrupt.") from None
    if not isinstance(header, dict):
        raise VramEstimateError(f"{path.name}'s header is not a JSON object: the file is corrupt.")
    data_bytes = size - 8 - length
    for name, tensor in header.items():
        if name != "__metadata__":
            _check_tensor(path.name, name, tensor, data_bytes)
    return header


def _check_tensor(file: str, name: str, tensor: object, data_bytes: int) -> None:
    where = f"{file}: tensor {name[:80]!r}"
    if not isinstance(tensor, dict) or tensor.get("dtype") not in DTYPE_BITS:
        dtype = tensor.get("dtype") if isinstance(tensor, dict) else None
        raise VramEstimateError(f"{where} has dtype {dtype!r}, which safetensors does not define.")
    shape, offsets = tensor.get("shape"), tensor.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise VramEstimateError(f"{where} has a shape that is not a list of sizes: {shape!r:.80}.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise VramEstimateError(f"{where} has data_offsets that are not [begin, end]: {offsets!r:.80}.")
    begin, end = offsets
    expected = math.ceil(math.prod(shape) * DTYPE_BITS[tensor["dtype"]] / 8)
    if not 0 <= begin <= end <= data_bytes or end - begin != expected:
        raise VramEstimateError(
            f"{where} says bytes {begin}-{end}, but a {tensor['dtype']} tensor of shape {shape} takes {expected:,} bytes "
            f"and the file holds {data_bytes:,}: the file is corrupt or truncated."
        )


def weight_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files: the shards model.safetensors.index.json names, else every
    *.safetensors in the folder itself."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            raise VramEstimateError(f"{index.name} is not a JSON object with a weight_map: it is corrupt.") from None
        if not isinstance(weight_map, dict) or not weight_map:
            raise VramEstimateError(f"{index.name} has no weight_map naming the shards.")
        names = sorted({str(name) for name in weight_map.values()})
        if len(names) > MAX_SHARDS:
            raise VramEstimateError(f"{index.name} names {len(names)} shards; at most {MAX_SHARDS} are read.")
        for name in names:
            # A shard is a file beside the index: a path would read outside the model folder.
            if Path(name).name != name or name in ("", ".", ".."):
                raise VramEstimateError(f"{index.name} names the shard {name[:80]!r}, which is not a file name in the model folder.")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise VramEstimateError(f"{index.name} names {len(missing)} shard(s) the folder lacks, e.g. {missing[0]}: the download is incomplete.")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise VramEstimateError(f"{folder} has no *.safetensors weights: only safetensors checkpoints are estimated (convert .bin weights with safetensors).")
    return files


def read_weights(folder: Path) -> Weights:
    by_dtype: dict[str, int] = {}
    cast_elements = kept = tensors = 0
    files = weight_files(folder)
    for path in files:
        for name, tensor in read_header(path).items():
            if name == "__metadata__":
                continue
            begin, end = tensor["data_offsets"]
            dtype = tensor["dtype"]
            by_dtype[dtype] = by_dtype.get(dtype, 0) + end - begin
            tensors += 1
            if dtype in CAST_DTYPES:
                cast_elements += math.prod(tensor["shape"])
            else:
                kept += end - begin
    return Weights(dict(sorted(by_dtype.items())), cast_elements, kept, tensors, tuple(p.name for p in files))


# --- KV cache: config.json + engine_kwargs ------------------------------------------------------------

@dataclass(frozen=True)
class KvCache:
    layers: int
    kv_heads: int
    head_dim: int
    dtype: str  # what the KV cache is stored in, e.g. "bfloat16" or "fp8"
    dtype_bytes: int
    max_model_len: int
    max_num_seqs: int
    max_model_len_from: str  # "engine_kwargs" | "config.json max_position_embeddings"
    max_num_seqs_from: str  # "engine_kwargs" | "vLLM's default for this GPU" | "vLLM's default (GPU unknown)"

    @property
    def bytes_per_token(self) -> int:
        return self.layers * self.kv_heads * self.head_dim * 2 * self.dtype_bytes

    @property
    def bytes(self) -> int:
        return self.bytes_per_token * self.max_model_len * self.max_num_seqs

    def per_gpu(self, tensor_parallel: int, pipeline_parallel: int) -> int:
        layers = math.ceil(self.layers / pipeline_parallel)
        heads = max(1, self.kv_heads // tensor_parallel)
        return layers * heads * self.head_dim * 2 * self.dtype_bytes * self.max_model_len * self.max_num_seqs


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VramEstimateError(f"{folder} has no config.json: it is not a Hugging Face model folder.") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VramEstimateError(f"config.json cannot be read as JSON ({type(exc).__name__}): the file is corrupt.") from None
    if not isinstance(config, dict):
        raise VramEstimateError("config.json is not a JSON object.")
    # Multimodal configs keep the language model's figures under text_config.
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    return config


def _positive_int(config: dict, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise VramEstimateError(f"config.json's {key} is {value!r}, not a positive whole number: the KV cache cannot be sized.")
    return value


def serving_dtype(config: dict, engine_kwargs: dict) -> str:
    """The dtype vLLM holds float weights and activations in on a GPU."""
    asked = str(engine_kwargs.get("dtype") or "auto").lower()
    if asked != "auto":
        return {"half": "float16", "float": "float32"}.get(asked, asked)
    stored = str(config.get("torch_dtype") or config.get("dtype") or "float32").lower().removeprefix("torch.")
    # vLLM's "auto" downcasts float32 checkpoints to the GPU's preferred 16-bit type.
    return "bfloat16" if stored == "float32" else stored


def kv_cache(config: dict, engine_kwargs: dict, dtype: str) -> KvCache:
    layers = _positive_int(config, "num_hidden_layers")
    heads = _positive_int(config, "num_attention_heads")
    kv_heads = _positive_int(config, "num_key_value_heads") if config.get("num_key_value_heads") is not None else heads
    if config.get("head_dim") is not None:
        head_dim = _positive_int(config, "head_dim")
    else:
        head_dim = _positive_int(config, "hidden_size") // heads
    kv_dtype = str(engine_kwargs.get("kv_cache_dtype") or "auto")
    if kv_dtype == "auto":
        kv_dtype, kv_bytes = dtype, SERVING_DTYPE_BYTES[dtype]
    elif kv_dtype in KV_CACHE_DTYPE_BYTES:
        kv_bytes = KV_CACHE_DTYPE_BYTES[kv_dtype]
    else:
        raise VramEstimateError(f"kv_cache_dtype {kv_dtype!r} is not one the estimate knows ({', '.join(['auto', *KV_CACHE_DTYPE_BYTES])}).")
    if engine_kwargs.get("max_model_len"):
        max_model_len, len_from = int(engine_kwargs["max_model_len"]), "engine_kwargs"
    else:
        max_model_len, len_from = _positive_int(config, "max_position_embeddings"), "config.json max_position_embeddings"
    if engine_kwargs.get("max_num_seqs"):
        seqs, seqs_from = int(engine_kwargs["max_num_seqs"]), "engine_kwargs"
    else:
        seqs, seqs_from = vllm_default_max_num_seqs(max_num_batched_tokens=engine_kwargs.get("max_num_batched_tokens")), "vLLM's default (GPU unknown)"
    return KvCache(layers, kv_heads, head_dim, kv_dtype, kv_bytes, max_model_len, seqs, len_from, seqs_from)


# --- The estimate ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    weights: Weights
    kv: KvCache
    dtype: str  # the serving dtype of float weights
    gpus_per_replica: int
    tensor_parallel: int
    pipeline_parallel: int
    gpu_memory_utilization: float
    gpu_memory_utilization_from: str  # "engine_kwargs" | "vLLM's default"
    overhead_bytes: int = ENGINE_OVERHEAD_BYTES
    max_num_batched_tokens: int | None = None  # the spec's, which caps vLLM's default max_num_seqs

    @property
    def weights_bytes(self) -> int:
        return self.weights.served_bytes(SERVING_DTYPE_BYTES[self.dtype])

    @property
    def weights_per_gpu(self) -> int:
        return math.ceil(self.weights_bytes / self.gpus_per_replica)

    @property
    def kv_per_gpu(self) -> int:
        return self.kv.per_gpu(self.tensor_parallel, self.pipeline_parallel)

    @property
    def need_per_gpu(self) -> int:
        return self.weights_per_gpu + self.kv_per_gpu + self.overhead_bytes

    def vllm_share(self, total_bytes: int) -> int:
        return math.ceil(total_bytes * self.gpu_memory_utilization)

    def required_per_gpu(self, total_bytes: int) -> int:
        return max(self.need_per_gpu, self.vllm_share(total_bytes))

    def for_gpu(self, total_bytes: int, name: str = "") -> "Estimate":
        """This estimate on a given GPU: vLLM's default max_num_seqs depends on the GPU."""
        if self.kv.max_num_seqs_from == "engine_kwargs":
            return self
        seqs = vllm_default_max_num_seqs(total_bytes, name, self.max_num_batched_tokens)
        return replace(self, kv=replace(self.kv, max_num_seqs=seqs, max_num_seqs_from="vLLM's default for this GPU"))

    def terms(self) -> list[tuple[str, str, str]]:
        """(term, GiB per GPU, how it was reached), for a page or a report."""
        kv, split = self.kv, f" ÷ {self.gpus_per_replica} GPUs" if self.gpus_per_replica > 1 else ""
        checkpoint = ", ".join(f"{d} {gib(b)}" for d, b in self.weights.checkpoint_bytes_by_dtype.items())
        return [
            ("weights", gib(self.weights_per_gpu), f"{self.weights.tensors} tensors in {len(self.weights.files)} file(s) ({checkpoint}), float tensors as {self.dtype}{split}"),
            ("KV cache", gib(self.kv_per_gpu),
             f"{kv.layers} layers × {kv.kv_heads} KV heads × {kv.head_dim} head dim × 2 × {kv.dtype_bytes} B ({kv.dtype}) × "
             f"{kv.max_model_len} tokens ({kv.max_model_len_from}) × {kv.max_num_seqs} sequences ({kv.max_num_seqs_from}){split}"),
            ("engine overhead", gib(self.overhead_bytes), "CUDA context, activations, CUDA graphs (a fixed allowance)"),
        ]


def estimate(model_dir: Path | str, engine_kwargs: dict | None, gpus_per_replica: int) -> Estimate:
    """The memory one replica needs per GPU; VramEstimateError when the folder cannot tell."""
    folder, engine_kwargs = Path(model_dir), dict(engine_kwargs or {})
    config = read_config(folder)
    dtype = serving_dtype(config, engine_kwargs)
    if dtype not in SERVING_DTYPE_BYTES:
        raise VramEstimateError(f"The model's dtype {dtype!r} is not one vLLM serves in ({', '.join(sorted(SERVING_DTYPE_BYTES))}).")
    gpus = max(1, int(gpus_per_replica))
    pipeline = max(1, int(engine_kwargs.get("pipeline_parallel_size") or 1))
    utilization = engine_kwargs.get("gpu_memory_utilization")
    return Estimate(
        weights=read_weights(folder),
        kv=kv_cache(config, engine_kwargs, dtype),
        dtype=dtype,
        gpus_per_replica=gpus,
        tensor_parallel=max(1, gpus // pipeline),
        pipeline_parallel=pipeline,
        gpu_memory_utilization=float(utilization) if utilization else VLLM_DEFAULT_GPU_MEMORY_UTILIZATION,
        gpu_memory_utilization_from="engine_kwargs" if utilization else "vLLM's default",
        max_num_batched_tokens=engine_kwargs.get("max_num_batched_tokens"),
    )


# --- Fit against NVML readings --------------------------------------------------------------------------

@dataclass(frozen=True)
class Holder:
    pid: int
    used_bytes: int
    name: str
    is_replica: bool

    def sentence(self) -> str:
        what = "a Serve replica" if self.is_replica else "not a replica"
        name = f" ({self.name})" if self.name else ""
        return f"PID {self.pid}{name} holds {gib(self.used_bytes)} and is {what}"


@dataclass(frozen=True)
class GpuFit:
    node: str  # how the report names the node: its address, else the start of its id
    index: int
    name: str
    total_bytes: int = 0
    free_bytes: int = 0
    need_bytes: int = 0
    required_bytes: int = 0
    vllm_share_bytes: int = 0
    holders: tuple[Holder, ...] = ()
    error: str = ""  # why this GPU has no memory reading

    @property
    def fits(self) -> bool:
        return not self.error and self.free_bytes >= self.required_bytes

    @property
    def figures(self) -> dict[str, str]:
        """The GiB figures as a page shows them."""
        return {k: gib(getattr(self, f"{k}_bytes")) for k in ("total", "free", "need", "required", "vllm_share", "shortfall")}

    @property
    def shortfall_bytes(self) -> int:
        return max(0, self.required_bytes - self.free_bytes)

    @property
    def capped(self) -> bool:
        """vLLM's share is smaller than what the spec's sequences need."""
        return self.need_bytes > self.vllm_share_bytes

    def sentence(self) -> str:
        where = f"GPU {self.index} on node {self.node}"
        if self.error:
            return f"{where} was not read: {self.error}"
        text = f"{where} has {gib(self.free_bytes)} free of {gib(self.total_bytes)}; a replica needs {gib(self.required_bytes)} there"
        if not self.fits:
            text += f", {gib(self.shortfall_bytes)} short"
            held = "; ".join(h.sentence() for h in self.holders)
            if held:
                text += f". {held}"
        return text + "."


@dataclass(frozen=True)
class NodeFit:
    node_id: str
    node: str
    gpus: tuple[GpuFit, ...]
    gpus_per_replica: int
    error: str = ""

    @property
    def replicas(self) -> int:
        return sum(g.fits for g in self.gpus) // self.gpus_per_replica


@dataclass(frozen=True)
class FitReport:
    estimate: Estimate
    nodes: tuple[NodeFit, ...]
    replicas: int
    reason: str = ""  # why nothing was checked ("" when GPUs were read)

    @property
    def checked(self) -> bool:
        return not self.reason

    @property
    def replicas_placeable(self) -> int:
        return sum(n.replicas for n in self.nodes)

    @property
    def fits(self) -> bool:
        return self.checked and self.replicas_placeable >= self.replicas

    @property
    def gpus(self) -> list[GpuFit]:
        return [g for n in self.nodes for g in n.gpus]

    @property
    def short(self) -> list[GpuFit]:
        return [g for g in self.gpus if not g.fits]

    @property
    def capped(self) -> list[GpuFit]:
        return [g for g in self.gpus if g.fits and g.capped]

    def summary(self) -> str:
        if not self.checked:
            return f"Not checked: {self.reason}."
        wanted = f"{self.replicas} replica(s) of {self.estimate.gpus_per_replica} GPU(s)"
        if self.fits:
            return f"Fits: the GPUs have room for {self.replicas_placeable} replica(s), {wanted} wanted."
        worst = max(self.short, key=lambda g: g.shortfall_bytes, default=None)
        detail = f" {worst.sentence()}" if worst else ""
        return f"Does not fit: the GPUs have room for {self.replicas_placeable} of {wanted}.{detail}"

    def capped_advice(self) -> str:
        if not self.capped:
            return ""
        gpu = self.capped[0]
        utilization = math.ceil(100 * gpu.need_bytes / gpu.total_bytes) / 100
        return (
            f"vLLM takes gpu_memory_utilization {self.estimate.gpu_memory_utilization} × {gib(gpu.total_bytes)} = {gib(gpu.vllm_share_bytes)} "
            f"on GPU {gpu.index} of node {gpu.node}, less than the {gib(gpu.need_bytes)} that {self.estimate.kv.max_num_seqs} sequences of "
            f"{self.estimate.kv.max_model_len} tokens need: it will run fewer at once. Set gpu_memory_utilization to {min(utilization, 1.0)}"
            " or lower max_num_seqs / max_model_len."
        )


def node_name(node: dict) -> str:
    return str(node.get("address") or str(node.get("node_id", ""))[:12] or "?")


def serving_pids(nodes: Iterable[dict]) -> set[tuple[str, int]]:
    """(node id, PID) of every process NVML shows that a Serve replica runs (SERVING_PROCESS_PREFIXES)."""
    return {
        (str(node.get("node_id", "")), int(process["pid"]))
        for node in nodes
        for gpu in node.get("gpus") or []
        for process in gpu.get("processes") or []
        if str(process.get("name") or "").startswith(SERVING_PROCESS_PREFIXES)
    }


def fit(
    estimate: Estimate, nodes: Iterable[dict], *, replica_pids: Collection[tuple[str, int]] = (), replicas: int = 1, unread: str = ""
) -> FitReport:
    """Whether `replicas` replicas fit the GPUs of `nodes` (health/probes/gpu.py's read_node readings,
    each with its node's address), node by node. `replica_pids` are the (node id, PID) pairs known to be
    Serve replicas, so the report can say which memory holders are not; `unread` says why there are
    no readings, when the caller knows."""
    nodes = list(nodes)
    if not any(node.get("gpus") for node in nodes):
        errors = sorted({str(n["error"]) for n in nodes if n.get("error")})
        reason = unread or "no GPU memory reading exists" + (f" ({'; '.join(errors)[:300]})" if errors else " (no node reported a GPU)")
        return FitReport(estimate, (), replicas, reason)
    known = set(replica_pids)
    fits = tuple(_node_fit(estimate, node, known) for node in nodes if node.get("gpus"))
    return FitReport(estimate, fits, replicas)


def _node_fit(estimate: Estimate, node: dict, replica_pids: set[tuple[str, int]]) -> NodeFit:
    node_id, name = str(node.get("node_id", "")), node_name(node)
    return NodeFit(node_id, name, tuple(_gpu_fit(estimate, node_id, name, gpu, replica_pids) for gpu in node["gpus"]), estimate.gpus_per_replica, str(node.get("error") or ""))


def _gpu_fit(estimate: Estimate, node_id: str, node: str, gpu: dict, replica_pids: set[tuple[str, int]]) -> GpuFit:
    index, label = int(gpu.get("index", 0)), str(gpu.get("name") or "")
    total, used = gpu.get("memory_total_bytes"), gpu.get("memory_used_bytes")
    if gpu.get("error") or not total or used is None:
        return GpuFit(node, index, label, error=str(gpu.get("error") or "NVML reported no memory figures"))
    on_gpu = estimate.for_gpu(int(total), label)
    holders = [
        Holder(int(p["pid"]), int(p["used_bytes"]), str(p.get("name") or ""), (node_id, int(p["pid"])) in replica_pids)
        for p in gpu.get("processes") or []
        if p.get("used_bytes")
    ]
    # Memory no replica holds first: it is what a person can free.
    holders.sort(key=lambda h: (h.is_replica, -h.used_bytes))
    return GpuFit(
        node, index, label, int(total), max(0, int(total) - int(used)),
        on_gpu.need_per_gpu, on_gpu.required_per_gpu(int(total)), on_gpu.vllm_share(int(total)), tuple(holders),
    )


# --- Estimate vs actual ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Measured:
    """What a replica's processes hold on each GPU they use, from one NVML reading."""

    by_gpu: dict[tuple[str, int], int] = field(default_factory=dict)  # (node id, GPU index) -> bytes
    totals: dict[tuple[str, int], int] = field(default_factory=dict)  # the GPU's total memory
    names: dict[tuple[str, int], str] = field(default_factory=dict)
    unreported: int = 0  # replica processes NVML listed without a figure (a container without PID access)

    @property
    def peak_bytes(self) -> int:
        return max(self.by_gpu.values(), default=0)


def measure(nodes: Iterable[dict], replica_pids: Collection[tuple[str, int]]) -> Measured:
    """Sum, per GPU, the memory NVML says the given (node id, PID) processes hold."""
    wanted = set(replica_pids)
    by_gpu: dict[tuple[str, int], int] = {}
    totals: dict[tuple[str, int], int] = {}
    names: dict[tuple[str, int], str] = {}
    unreported = 0
    for node in nodes:
        node_id = str(node.get("node_id", ""))
        for gpu in node.get("gpus") or []:
            key = (node_id, int(gpu.get("index", 0)))
            for process in gpu.get("processes") or []:
                if (node_id, int(process["pid"])) not in wanted:
                    continue
                if process.get("used_bytes") is None:
                    unreported += 1
                    continue
                by_gpu[key] = by_gpu.get(key, 0) + int(process["used_bytes"])
                totals[key], names[key] = int(gpu.get("memory_total_bytes") or 0), str(gpu.get("name") or "")
    return Measured(by_gpu, totals, names, unreported)


def replica_processes(model_key: str, actors: Iterable[dict], nodes: Iterable[dict]) -> set[tuple[str, int]]:
    """(node id, PID) of the GPU processes of `model_key`'s replicas, for `measure`: the Serve replica
    actors (class ServeReplica:<key>:<deployment>, as Ray's state API lists them: node_id, pid,
    class_name, placement_group_id), every actor in their placement groups (vLLM's tensor-parallel
    workers), and each GPU process one of those started (vLLM's EngineCore), told by the `parents`
    the zombies probe reads beside each process on its node."""
    actors = list(actors)
    replicas = [a for a in actors if str(a.get("class_name", "")).startswith(f"ServeReplica:{model_key}:")]
    groups = {a["placement_group_id"] for a in replicas if a.get("placement_group_id")}
    owned = {(str(a["node_id"]), int(a["pid"])) for a in actors if a in replicas or (a.get("placement_group_id") in groups)}
    found = set()
    for node in nodes:
        node_id = str(node.get("node_id", ""))
        for gpu in node.get("gpus") or []:
            for process in gpu.get("processes") or []:
                lineage = [int(process["pid"]), *map(int, process.get("parents") or [])]
                if any((node_id, pid) in owned for pid in lineage):
                    found.add((node_id, int(process["pid"])))
    return found
