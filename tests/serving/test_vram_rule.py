"""The rule vLLM applies at start (serving/vram_fit/estimation.py), on an 8B-shaped checkpoint over sparse
files: the share, the terms taken from it, the KV cache that is left, and the one-sequence check that
decides. The modelled terms' constants are named; every other figure is arithmetic done here by hand.
The reference cases from public vLLM logs are in test_vram_reference.py."""
from __future__ import annotations

import pytest

from serving.vram_fit import GIB, estimate, fixes
from serving.vram_fit.estimation import (
    CUDA_GRAPH_BYTES_PER_LAYER,
    NON_TORCH_BYTES,
    SAMPLER_BYTES_PER_LOGIT,
    TENSOR_PARALLEL_BUFFERS_BYTES,
)
from tests.serving.test_vram_fit import LLAMA_8B, LLAMA_8B_BF16_BYTES, LLAMA_8B_KV_PER_TOKEN, llama_8b, llama_tensors, write_config, write_safetensors

H100 = "NVIDIA H100 80GB HBM3"
BLOCK = 16 * LLAMA_8B_KV_PER_TOKEN  # one KV block: 16 tokens


@pytest.fixture
def llama(tmp_path):
    return llama_8b(tmp_path / "llama-8b")


def test_on_an_80_gib_h100_the_kv_cache_is_what_the_share_leaves(llama):
    budget = estimate(llama, {}, 1).on_gpu(80 * GIB, H100)

    assert budget.share_bytes == 79_027_398_247  # ceil(0.92 × 80 GiB)
    assert (budget.max_num_seqs, budget.max_num_batched_tokens) == (1024, 8192)  # vLLM's defaults for an H100
    assert budget.weights_bytes == LLAMA_8B_BF16_BYTES
    # The sampler's 1,024 rows of 128,256 logits outweigh the forward pass at 8,192 tokens.
    assert budget.activation_bytes == 1024 * 128256 * SAMPLER_BYTES_PER_LOGIT
    non_kv = LLAMA_8B_BF16_BYTES + NON_TORCH_BYTES + 1024 * 128256 * SAMPLER_BYTES_PER_LOGIT + 32 * CUDA_GRAPH_BYTES_PER_LAYER
    assert budget.non_kv_bytes == non_kv
    assert budget.kv_tokens == (79_027_398_247 - non_kv) // BLOCK * 16
    assert budget.fits and budget.concurrency == budget.kv_tokens / 131072


@pytest.mark.parametrize("engine_kwargs", [{}, {"max_model_len": 8192}, {"max_model_len": 8192, "max_num_seqs": 64}],
                         ids=["defaults", "8k", "8k x 64"])
def test_llama_8b_fits_an_empty_h100_as_vllm_starts_it(llama, engine_kwargs):
    """The three settings the old rule refused by 16,321.9, 961.9 and 1.9 GiB: vLLM starts in all three."""
    budget = estimate(llama, engine_kwargs, 1).on_gpu(80 * GIB, H100)
    assert budget.fits
    assert budget.kv_tokens > 400_000  # ~55 GiB of cache at 128 KiB a token
    assert "Fits on NVIDIA H100 80GB HBM3" in budget.verdict()


def test_max_num_seqs_sizes_the_sampler_not_the_kv_cache(llama):
    few = estimate(llama, {"max_model_len": 8192, "max_num_seqs": 64}, 1).on_gpu(80 * GIB, H100)
    many = estimate(llama, {"max_model_len": 8192, "max_num_seqs": 1024}, 1).on_gpu(80 * GIB, H100)
    assert few.activation_bytes < many.activation_bytes == 1024 * 128256 * SAMPLER_BYTES_PER_LOGIT
    assert few.kv_tokens > many.kv_tokens  # less for the sampler, more left for the cache
    assert few.one_sequence_bytes == many.one_sequence_bytes == 8192 * LLAMA_8B_KV_PER_TOKEN


def test_on_a_24_gib_gpu_the_full_context_does_not_fit_and_the_largest_that_does_is_named(llama):
    e = estimate(llama, {}, 1)
    budget = e.on_gpu(22 * GIB, "NVIDIA L4")
    assert not budget.fits
    assert budget.one_sequence_bytes == 131072 * LLAMA_8B_KV_PER_TOKEN == 16 * GIB
    largest = budget.largest_max_model_len
    assert 0 < largest < 131072 and largest % 16 == 0
    assert f"the largest max_model_len that fits is {largest:,}" in budget.verdict()
    # The figure is the rule's own boundary: at it vLLM starts, one block more it refuses.
    assert e.with_changes(max_model_len=largest).on_gpu(22 * GIB, "NVIDIA L4").fits
    assert not e.with_changes(max_model_len=largest + 16).on_gpu(22 * GIB, "NVIDIA L4").fits
    assert f"max_model_len: {largest:,}" in fixes(budget)


def test_weights_larger_than_the_share_leave_no_cache_and_say_so(llama):
    budget = estimate(llama, {"max_model_len": 4096}, 1).on_gpu(16 * GIB, "Tesla T4")
    assert budget.kv_available_bytes < 0 and not budget.fits and budget.kv_tokens == 0
    assert "no memory is left for the KV cache" in budget.verdict()
    assert "gpus_per_replica: 2" in fixes(budget)


def test_fp8_kv_cache_holds_twice_the_tokens(llama):
    bf16 = estimate(llama, {"max_model_len": 8192}, 1).on_gpu(80 * GIB, H100)
    fp8 = estimate(llama, {"max_model_len": 8192, "kv_cache_dtype": "fp8"}, 1).on_gpu(80 * GIB, H100)
    assert fp8.kv_bytes_per_token * 2 == bf16.kv_bytes_per_token
    assert fp8.kv_tokens == pytest.approx(2 * bf16.kv_tokens, abs=16)


def test_tensor_and_pipeline_parallel_split_weights_and_kv_heads(llama):
    tp2 = estimate(llama, {"max_model_len": 8192}, 2)
    assert (tp2.tensor_parallel, tp2.pipeline_parallel) == (2, 1)
    assert tp2.weights_per_gpu == LLAMA_8B_BF16_BYTES // 2 and tp2.kv_bytes_per_token == LLAMA_8B_KV_PER_TOKEN // 2
    assert tp2.on_gpu(80 * GIB, H100).non_torch_bytes == NON_TORCH_BYTES + TENSOR_PARALLEL_BUFFERS_BYTES
    pp = estimate(llama, {"max_model_len": 8192, "pipeline_parallel_size": 2}, 4)
    assert (pp.tensor_parallel, pp.pipeline_parallel) == (2, 2)
    assert pp.weights_per_gpu == LLAMA_8B_BF16_BYTES // 4 and pp.kv_bytes_per_token == LLAMA_8B_KV_PER_TOKEN // 4
    # Wider than the 8 KV heads: each GPU keeps a whole head (vLLM replicates them), not half of one.
    tp16 = estimate(llama, {"max_model_len": 8192}, 16)
    assert tp16.kv_bytes_per_token == 32 * 1 * 128 * 2 * 2


def test_enforce_eager_captures_no_cuda_graphs(llama):
    graphs = estimate(llama, {"max_model_len": 8192}, 1).on_gpu(80 * GIB, H100)
    eager = estimate(llama, {"max_model_len": 8192, "enforce_eager": True}, 1).on_gpu(80 * GIB, H100)
    assert graphs.cuda_graph_bytes == 32 * CUDA_GRAPH_BYTES_PER_LAYER and eager.cuda_graph_bytes == 0
    assert eager.kv_tokens > graphs.kv_tokens


def test_vllms_batch_defaults_follow_the_gpu(llama):
    e = estimate(llama, {"max_model_len": 1024}, 1)
    assert e.on_gpu(80 * GIB, H100).max_num_seqs == 1024
    assert e.on_gpu(80 * GIB, "NVIDIA A100-SXM4-80GB").max_num_seqs == 256
    assert e.on_gpu(139 * GIB, "NVIDIA H200").max_num_batched_tokens == 8192
    assert e.on_gpu(178 * GIB, "NVIDIA B200").max_num_batched_tokens == 16384
    assert e.on_gpu(22 * GIB, "NVIDIA L4").max_num_batched_tokens == 2048
    capped = estimate(llama, {"max_model_len": 1024, "max_num_batched_tokens": 512}, 1)
    assert capped.on_gpu(80 * GIB, H100).max_num_seqs == 512
    pinned = estimate(llama, {"max_model_len": 1024, "max_num_seqs": 8}, 1).on_gpu(80 * GIB, H100)
    assert (pinned.max_num_seqs, pinned.max_num_seqs_from) == (8, "engine_kwargs")


def llama_70b(folder):
    """Llama-3.1-70B's shapes (hidden 8192, MLP 28672, 80 layers, 64 heads, 8 KV heads) in one header."""
    config = {**LLAMA_8B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64}
    write_config(folder, **config)
    write_safetensors(folder / "model.safetensors", llama_tensors(range(80), config, "BF16", embed=True, head=True))
    return folder


def test_a_70b_model_on_80_gib_gpus_is_told_how_many_gpus_a_replica_needs(tmp_path):
    e = estimate(llama_70b(tmp_path / "llama-70b"), {}, 1)
    assert e.weights_bytes > 130 * GIB  # 70.6 B parameters in bf16
    alone = e.on_gpu(80 * GIB, H100)
    assert not alone.fits
    # Two GPUs hold the weights (65.7 GiB each) and ~3 GiB of cache: not one 131,072-token sequence
    # (20 GiB at 160 KiB a token), but 8,192 tokens, as Qwen2.5-72B at TP 2 started with 19,920
    # tokens of cache (tests/serving/vram_reference/cases/qwen2.5-72b-instruct-h100-tp2-v0.19.json).
    assert e.smallest_gpus_per_replica(80 * GIB, H100) == 4
    assert not e.with_changes(gpus_per_replica=2).on_gpu(80 * GIB, H100).fits
    assert e.with_changes(gpus_per_replica=4).on_gpu(80 * GIB, H100).fits
    assert e.with_changes(max_model_len=8192).smallest_gpus_per_replica(80 * GIB, H100) == 2
    assert "gpus_per_replica: 4" in fixes(alone)


def test_advice_never_asks_for_all_of_a_gpu(llama):
    """A share of 1.0 fails at start on any GPU something else touches; advice stops at 0.95."""
    budget = estimate(llama, {"max_model_len": 8192, "gpu_memory_utilization": 0.5}, 1).on_gpu(32 * GIB, "Tesla V100-SXM2-32GB")
    advice = fixes(budget)
    assert "gpu_memory_utilization: 1.0" not in advice and "gpu_memory_utilization: 0.99" not in advice
    assert budget.utilization_that_fits <= 0.95 and f"gpu_memory_utilization: {budget.utilization_that_fits}" in advice


def test_layer_kinds_the_estimate_does_not_model_are_named(tmp_path):
    folder = write_config(tmp_path / "mixtral", **{**LLAMA_8B, "num_local_experts": 8, "num_experts_per_tok": 2,
                                                    "sliding_window": 4096, "max_position_embeddings": 32768})
    write_safetensors(folder / "model.safetensors", {"w": ("BF16", [16])})
    notes = " ".join(estimate(folder, {}, 1).not_modelled)
    assert "mixture of experts (8 experts, 2 per token)" in notes and "sliding-window attention" in notes


def test_an_mla_model_caches_one_latent_per_token_and_layer(tmp_path):
    # DeepSeek-V3's attention: kv_lora_rank 512 + qk_rope_head_dim 64, one latent for K and V, not split by TP.
    folder = write_config(tmp_path / "mla", **{**LLAMA_8B, "kv_lora_rank": 512, "qk_rope_head_dim": 64})
    write_safetensors(folder / "model.safetensors", {"w": ("BF16", [16])})
    assert estimate(folder, {}, 1).kv_bytes_per_token == 32 * (512 + 64) * 2
    assert estimate(folder, {}, 8).kv_bytes_per_token == 32 * (512 + 64) * 2
