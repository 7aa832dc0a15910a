"""Header-only checkpoints of real models' shapes, written from a config.json: safetensors headers over
sparse files (tests/serving/test_vram_fit.py's write_safetensors), so a 405B layout takes no disk and
no weights are downloaded. Tensor names and shapes follow the Hugging Face layouts of the families the
reference cases use (Llama, Qwen2, Qwen3, their MoE), and the on-disk forms of the quantizations they
use: GPTQ 4-bit (int32 packs, fp16 scales per group of 128), FP8 per channel (compressed-tensors,
fbgemm) and FP8 in 128 × 128 blocks."""
from __future__ import annotations

import json
import math
from pathlib import Path

from tests.serving.test_vram_fit import write_safetensors

GPTQ_GROUP = 128
FP8_BLOCK = 128


def _linear(name: str, out: int, inp: int, quant: dict, dtype: str) -> dict:
    method = str(quant.get("quant_method") or "")
    if method == "gptq":
        bits = int(quant.get("bits", 4))
        pack = 32 // bits
        groups = math.ceil(inp / GPTQ_GROUP)
        return {
            f"{name}.qweight": ("I32", [inp // pack, out]), f"{name}.qzeros": ("I32", [groups, out // pack]),
            f"{name}.scales": ("F16", [groups, out]), f"{name}.g_idx": ("I32", [inp]),
        }
    if method in ("compressed-tensors", "fbgemm_fp8"):
        return {f"{name}.weight": ("F8_E4M3", [out, inp]), f"{name}.weight_scale": ("F32", [out, 1])}
    if method == "fp8":
        blocks = [math.ceil(out / FP8_BLOCK), math.ceil(inp / FP8_BLOCK)]
        return {f"{name}.weight": ("F8_E4M3", [out, inp]), f"{name}.weight_scale_inv": ("F32", blocks)}
    return {f"{name}.weight": (dtype, [out, inp])}


def tensors(config: dict) -> dict:
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    quant = config.get("quantization_config") or {}
    # Quantized checkpoints keep embeddings, norms and scales-free tensors in 16 bits (fp16 for GPTQ).
    dtype = "F16" if quant.get("quant_method") == "gptq" or str(config.get("torch_dtype", "")).startswith("float16") else "BF16"
    family = config.get("model_type", "llama")
    experts = config.get("num_experts") or config.get("num_local_experts") or 0
    out = {"model.embed_tokens.weight": (dtype, [vocab, h]), "model.norm.weight": (dtype, [h])}
    if not config.get("tie_word_embeddings"):
        out["lm_head.weight"] = (dtype, [vocab, h])
    for n in range(layers):
        p = f"model.layers.{n}."
        for proj, rows in (("q_proj", heads * head_dim), ("k_proj", kv_heads * head_dim), ("v_proj", kv_heads * head_dim)):
            out |= _linear(p + "self_attn." + proj, rows, h, quant, dtype)
            if family == "qwen2":
                out[p + f"self_attn.{proj}.bias"] = (dtype, [rows])
        out |= _linear(p + "self_attn.o_proj", h, heads * head_dim, quant, dtype)
        if family.startswith("qwen3"):
            out |= {p + "self_attn.q_norm.weight": (dtype, [head_dim]), p + "self_attn.k_norm.weight": (dtype, [head_dim])}
        if experts:
            width = config["moe_intermediate_size"]
            out[p + "mlp.gate.weight"] = (dtype, [experts, h])
            for e in range(experts):
                q = f"{p}mlp.experts.{e}."
                out |= _linear(q + "gate_proj", width, h, quant, dtype) | _linear(q + "up_proj", width, h, quant, dtype)
                out |= _linear(q + "down_proj", h, width, quant, dtype)
        else:
            width = config["intermediate_size"]
            out |= _linear(p + "mlp.gate_proj", width, h, quant, dtype) | _linear(p + "mlp.up_proj", width, h, quant, dtype)
            out |= _linear(p + "mlp.down_proj", h, width, quant, dtype)
        out |= {p + "input_layernorm.weight": (dtype, [h]), p + "post_attention_layernorm.weight": (dtype, [h])}
    return out


def write_checkpoint(folder: Path, config: dict, shards: int = 8) -> Path:
    """config.json as given (a torch_dtype annotated by hand is cut to its first word) and the
    tensors in `shards` files with an index, as Hugging Face publishes large models."""
    folder.mkdir(parents=True, exist_ok=True)
    clean = {**config, "torch_dtype": str(config.get("torch_dtype", "bfloat16")).split()[0]}
    (folder / "config.json").write_text(json.dumps(clean))
    names = list(tensors(clean).items())
    size = math.ceil(len(names) / shards)
    weight_map = {}
    for i in range(shards):
        part = dict(names[i * size:(i + 1) * size])
        if not part:
            continue
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / file, part)
        weight_map |= {name: file for name in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
