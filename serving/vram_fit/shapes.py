"""A model's shapes as vLLM sizes its memory from them: what config.json says about attention (for the
KV cache), the MLP and vocabulary (for the profiling pass's activations), and the layer kinds vLLM
treats specially. What the estimate does not model is named in `not_modelled`, never guessed.
"""
from __future__ import annotations

from dataclasses import dataclass

from serving.vram_fit.checkpoint import VramEstimateError


@dataclass(frozen=True)
class Shapes:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int  # the dense MLP's width; for MoE layers, the routed experts' width × experts per token
    vocab: int
    max_position_embeddings: int
    # MLA (DeepSeek-V2/V3): one latent of kv_lora_rank + qk_rope_head_dim per token and layer, no K/V
    # pair and no split over tensor-parallel ranks (vLLM's MLAAttentionSpec).
    mla_latent: int = 0
    experts: int = 0
    quantization: str = ""  # config.json's quantization_config.quant_method
    not_modelled: tuple[str, ...] = ()

    @property
    def is_mla(self) -> bool:
        return self.mla_latent > 0

    def kv_bytes_per_token(self, dtype_bytes: int, tensor_parallel: int = 1, pipeline_parallel: int = 1) -> int:
        """One token's KV cache on one GPU of the replica: pipeline stages split the layers, tensor ranks
        the KV heads (a rank keeps at least one: tensor parallel wider than the KV heads replicates them)."""
        layers = -(-self.layers // pipeline_parallel)
        if self.is_mla:
            return layers * self.mla_latent * dtype_bytes
        heads = max(1, self.kv_heads // tensor_parallel)
        return layers * heads * self.head_dim * 2 * dtype_bytes


def _positive_int(config: dict, key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise VramEstimateError(f"config.json's {key} is {value!r}, not a positive whole number: the memory cannot be sized.")
    return value


def _optional_int(config: dict, *keys: str) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def read_shapes(config: dict) -> Shapes:
    layers = _positive_int(config, "num_hidden_layers")
    hidden = _positive_int(config, "hidden_size")
    heads = _positive_int(config, "num_attention_heads")
    kv_heads = _positive_int(config, "num_key_value_heads") if config.get("num_key_value_heads") is not None else heads
    head_dim = _positive_int(config, "head_dim") if config.get("head_dim") is not None else hidden // heads
    vocab = _positive_int(config, "vocab_size")
    max_positions = _positive_int(config, "max_position_embeddings")
    not_modelled: list[str] = []

    experts = _optional_int(config, "num_local_experts", "num_experts", "n_routed_experts")
    if experts:
        per_token = _optional_int(config, "num_experts_per_tok") or 1
        width = _optional_int(config, "moe_intermediate_size") or _positive_int(config, "intermediate_size")
        intermediate = width * per_token + _optional_int(config, "shared_expert_intermediate_size")
        not_modelled.append(
            f"mixture of experts ({experts} experts, {per_token} per token): the fused-MoE kernels' workspace is "
            "sized as the routed experts' MLP, which vLLM's profiling pass may exceed"
        )
    else:
        intermediate = _positive_int(config, "intermediate_size")

    mla = 0
    if config.get("kv_lora_rank"):
        mla = _positive_int(config, "kv_lora_rank") + _optional_int(config, "qk_rope_head_dim")

    window = config.get("sliding_window")
    layer_types = config.get("layer_types") or ()
    if isinstance(window, int) and window > 0 and window < max_positions and config.get("use_sliding_window", True):
        windowed = sum(1 for kind in layer_types if "sliding" in str(kind)) if layer_types else layers
        not_modelled.append(
            f"sliding-window attention ({windowed} of {layers} layers keep {window} tokens): every layer is counted "
            "as full attention, so the KV figures are a floor on what vLLM fits"
        )
    quantization = ""
    if isinstance(config.get("quantization_config"), dict):
        quantization = str(config["quantization_config"].get("quant_method") or "")
    return Shapes(layers, hidden, heads, kv_heads, head_dim, intermediate, vocab, max_positions, mla, experts, quantization, tuple(not_modelled))
