"""The VRAM estimate and fit, on model folders these tests write: real safetensors files (the
safetensors library) and headers written by hand over sparse files, so an 8B-parameter checkpoint
takes no disk. Every figure is pinned to arithmetic done by hand in the comments."""
from __future__ import annotations

import json
import math
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest

from serving import vram_fit
from serving.vram_fit import GIB, VramEstimateError, estimate, fit, measure, serving_pids
from tests.health.gpu_readings import gpu, node

# Bytes per element as safetensors defines them, written out here so the tests do not lean on the
# module's own table.
ELEMENT_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I8": 1, "U8": 1, "I32": 4}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A safetensors file with these tensors' header and zero-filled (sparse) data; its data bytes."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * ELEMENT_BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)  # sparse: the zeros take no disk
    return offset


def write_config(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], **config}))
    return folder


LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, torch_dtype="bfloat16")


def llama_tensors(layers: range, c: dict, dtype: str, *, embed: bool, head: bool) -> dict:
    h, i, kv = c["hidden_size"], c["intermediate_size"], c["num_key_value_heads"] * (c["hidden_size"] // c["num_attention_heads"])
    tensors = {}
    if embed:
        tensors["model.embed_tokens.weight"] = (dtype, [c["vocab_size"], h])
    for n in layers:
        p = f"model.layers.{n}."
        tensors |= {
            p + "self_attn.q_proj.weight": (dtype, [h, h]), p + "self_attn.k_proj.weight": (dtype, [kv, h]),
            p + "self_attn.v_proj.weight": (dtype, [kv, h]), p + "self_attn.o_proj.weight": (dtype, [h, h]),
            p + "mlp.gate_proj.weight": (dtype, [i, h]), p + "mlp.up_proj.weight": (dtype, [i, h]),
            p + "mlp.down_proj.weight": (dtype, [h, i]),
            p + "input_layernorm.weight": (dtype, [h]), p + "post_attention_layernorm.weight": (dtype, [h]),
        }
    if head:
        tensors |= {"model.norm.weight": (dtype, [h]), "lm_head.weight": (dtype, [c["vocab_size"], h])}
    return tensors


def llama_8b(folder: Path) -> Path:
    """Llama-3.1-8B's shapes in two shards and an index, as Hugging Face publishes it."""
    write_config(folder, **LLAMA_8B)
    shards = {
        "model-00001-of-00002.safetensors": llama_tensors(range(0, 16), LLAMA_8B, "BF16", embed=True, head=False),
        "model-00002-of-00002.safetensors": llama_tensors(range(16, 32), LLAMA_8B, "BF16", embed=False, head=True),
    }
    weight_map = {}
    for name, tensors in shards.items():
        write_safetensors(folder / name, tensors)
        weight_map |= {tensor: name for tensor in tensors}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


# Llama-3.1-8B has 8,030,261,248 parameters: embed and lm_head 2 × 128256 × 4096; per layer
# q, o 2 × 4096² + k, v 2 × 1024 × 4096 + MLP 3 × 14336 × 4096 + norms 2 × 4096; final norm 4096.
LLAMA_8B_BF16_BYTES = 16_060_522_496
# KV per token: 32 layers × 8 KV heads × 128 head dim × 2 (K, V) × 2 bytes = 131,072 bytes.
LLAMA_8B_KV_PER_TOKEN = 131_072


def test_an_8b_sharded_checkpoint_weighs_what_its_headers_say(tmp_path):
    e = estimate(llama_8b(tmp_path / "llama-8b"), {"max_model_len": 8192}, 1)

    assert e.weights.files == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    assert e.weights.tensors == 2 + 32 * 9 + 1
    assert e.weights.checkpoint_bytes_by_dtype == {"BF16": LLAMA_8B_BF16_BYTES}
    assert e.weights_per_gpu == LLAMA_8B_BF16_BYTES
    assert e.kv_bytes_per_token == LLAMA_8B_KV_PER_TOKEN


def test_float_weights_are_held_in_the_serving_dtype_and_quantized_ones_as_stored(tmp_path):
    folder = write_config(tmp_path / "mixed", hidden_size=1024, intermediate_size=4096, vocab_size=1000, num_hidden_layers=2, num_attention_heads=8, max_position_embeddings=2048, torch_dtype="float32")
    write_safetensors(folder / "model.safetensors", {
        "a": ("F32", [1024, 1024]),  # 4 MiB stored, 1,048,576 elements
        "q": ("I8", [2048, 1024]),  # 2 MiB of int8, kept as is
        "s": ("F8_E4M3", [1024, 1024]),  # 1 MiB of fp8, kept as is
    })
    auto = estimate(folder, {"max_model_len": 16}, 1)
    assert auto.weights.checkpoint_bytes_by_dtype == {"F32": 4 * 2**20, "F8_E4M3": 2**20, "I8": 2 * 2**20}
    # "auto" on a float32 checkpoint: vLLM serves bfloat16, so the F32 tensor takes 2 MiB.
    assert auto.dtype == "bfloat16" and auto.weights_per_gpu == 2 * 2**20 + 2 * 2**20 + 2**20
    full = estimate(folder, {"dtype": "float32", "max_model_len": 16}, 1)
    assert full.weights_per_gpu == 4 * 2**20 + 2 * 2**20 + 2**20
    # KV follows the serving dtype too: 2 layers × 8 heads × 128 × 2 (K, V) × 4 B per token.
    assert full.kv_bytes_per_token == 2 * 8 * 128 * 2 * 4


def test_files_written_by_the_safetensors_library_read_the_same(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    folder = write_config(tmp_path / "real", hidden_size=64, intermediate_size=128, vocab_size=100, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=32, max_position_embeddings=128, dtype="float16")
    tensors = {
        "w16": torch.zeros(64, 64, dtype=torch.float16),
        "wbf": torch.zeros(3, 5, dtype=torch.bfloat16),
        "w8": torch.zeros(7, 11, dtype=torch.float8_e4m3fn),
        "i32": torch.zeros(2, 3, dtype=torch.int32),
    }
    save_file(tensors, str(folder / "model.safetensors"))

    e = estimate(folder, {"max_model_len": 128}, 1)
    assert e.weights.checkpoint_bytes_by_dtype == {"BF16": 30, "F16": 8192, "F8_E4M3": 77, "I32": 24}
    assert e.dtype == "float16" and e.weights_per_gpu == 2 * (64 * 64 + 15) + 77 + 24
    # head_dim from config (32, not hidden 64 / 4 heads), 2 KV heads: 1 layer × 2 × 32 × 2 (K, V) × 2 B.
    assert e.kv_bytes_per_token == 256


def test_the_tiny_demo_model_is_estimated_from_its_own_files(tiny_model):
    config = json.loads((tiny_model / "config.json").read_text())
    assert (config["vocab_size"], config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (512, 128, 256, 2)
    e = estimate(tiny_model, {"max_model_len": 256}, 1)
    # Tied embeddings, one copy: 512 × 128 + 2 × (4 × 128² + 3 × 128 × 256 + 2 × 128) + 128 = 393,856 F32 params.
    assert e.weights.checkpoint_bytes_by_dtype == {"F32": 393_856 * 4}
    assert e.weights_per_gpu == 393_856 * 2  # served as bfloat16
    assert e.kv_bytes_per_token == 2 * 4 * 32 * 2 * 2  # 2 layers × 4 heads × 32 dim × K,V × 2 B


# --- refused folders -------------------------------------------------------------------------------

def _raw_file(path: Path, header_length: int, body: bytes) -> None:
    path.write_bytes(struct.pack("<Q", header_length) + body)


def _header_file(path: Path, tensor: dict, data_bytes: int) -> None:
    raw = json.dumps({"w": tensor}).encode()
    _raw_file(path, len(raw), raw + b"\0" * data_bytes)


@pytest.mark.parametrize("write, reason", [
    (lambda p: _raw_file(p, 200_000_000, b"{}"), "safetensors allows at most 100,000,000"),
    (lambda p: _raw_file(p, 4096, b"{}"), "truncated or corrupt"),
    (lambda p: p.write_bytes(b"abc"), "shorter than the 8-byte header length"),
    (lambda p: _raw_file(p, 8, b"not json"), "not valid JSON"),
    (lambda p: _raw_file(p, 2, b"[]"), "not a JSON object"),
    (lambda p: _header_file(p, {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}, 1), "dtype 'Q9'"),
    (lambda p: _header_file(p, {"dtype": "F32", "shape": [4], "data_offsets": [0, 4]}, 16), "takes 16 bytes"),
    (lambda p: _header_file(p, {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, 8), "the file holds 8"),
    (lambda p: _header_file(p, {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, 16), "not a list of sizes"),
])
def test_a_corrupt_or_huge_header_is_refused_with_its_reason(tmp_path, write, reason):
    folder = write_config(tmp_path / "bad", **LLAMA_8B)
    write(folder / "model.safetensors")
    with pytest.raises(VramEstimateError, match=reason):
        estimate(folder, {}, 1)


def test_an_index_naming_a_shard_outside_the_folder_or_missing_is_refused(tmp_path):
    folder = write_config(tmp_path / "m", **LLAMA_8B)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../elsewhere.safetensors"}}))
    with pytest.raises(VramEstimateError, match="not a file name in the model folder"):
        estimate(folder, {}, 1)
    index.write_text(json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(VramEstimateError, match="lacks, e.g. model-00001-of-00002.safetensors"):
        estimate(folder, {}, 1)


def test_a_folder_without_config_or_weights_says_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VramEstimateError, match="no config.json"):
        estimate(tmp_path / "empty", {}, 1)
    with pytest.raises(VramEstimateError, match=r"no \*.safetensors weights"):
        estimate(write_config(tmp_path / "bin", **LLAMA_8B), {}, 1)
    folder = write_config(tmp_path / "nolayers", hidden_size=64, num_attention_heads=4, max_position_embeddings=64)
    write_safetensors(folder / "model.safetensors", {"w": ("F16", [4])})
    with pytest.raises(VramEstimateError, match="num_hidden_layers is None"):
        estimate(folder, {}, 1)


# --- fit ---------------------------------------------------------------------------------------------

def test_a_replicas_gpus_must_be_on_one_node(tmp_path):
    e = estimate(llama_8b(tmp_path / "llama-8b"), {"max_model_len": 8192}, 2)
    free = lambda i: gpu(i, memory_used_bytes=0, processes=[])  # noqa: E731
    busy = lambda i: gpu(i, memory_used_bytes=40 * GIB, processes=[{"pid": 9, "name": "python", "used_bytes": 40 * GIB, "kind": "compute"}])  # noqa: E731
    # One free GPU on each of two nodes: two GPUs free, but no node holds a 2-GPU replica.
    split = fit(e, [node("a" * 56, gpus=[free(0), busy(1)]), node("b" * 56, gpus=[free(0), busy(1)])])
    assert not split.fits and [n.replicas for n in split.nodes] == [0, 0]
    together = fit(e, [node("a" * 56, gpus=[free(0), free(1), free(2), free(3)])], replicas=2)
    assert together.fits and together.replicas_placeable == 2
    assert not fit(e, [node("a" * 56, gpus=[free(0), free(1), free(2), busy(3)])], replicas=2).fits


def test_without_gpu_readings_nothing_is_checked_and_the_reason_is_given(tmp_path):
    e = estimate(llama_8b(tmp_path / "llama-8b"), {"max_model_len": 8192}, 1)
    report = fit(e, [node(gpus=[], error="no NVIDIA driver on this machine")])
    assert not report.checked and not report.fits
    assert report.summary() == "Not checked: no GPU memory reading exists (no NVIDIA driver on this machine)."


def test_serving_pids_and_measure_read_the_replicas_processes(tmp_path):
    processes = [
        {"pid": 4242, "name": "ray::ServeReplica:k:LLMServer:k", "used_bytes": 3 * GIB, "kind": "compute"},
        {"pid": 4243, "name": "VLLM::EngineCore", "used_bytes": 70 * GIB, "kind": "compute"},
        {"pid": 5000, "name": "python3", "used_bytes": 1 * GIB, "kind": "compute"},
    ]
    reading = [node("a" * 56, gpus=[gpu(0, processes=processes)])]
    assert serving_pids(reading) == {("a" * 56, 4242), ("a" * 56, 4243)}
    measured = measure(reading, {("a" * 56, 4243)})
    assert measured.by_gpu == {("a" * 56, 0): 70 * GIB} and measured.peak_bytes == 70 * GIB


# --- the new-model preview -------------------------------------------------------------------------

class _Rows(HTMLParser):
    """The cells of each row of the table with one id, as a person reads them."""

    def __init__(self, table_id: str):
        super().__init__(convert_charrefs=True)
        self.table_id, self.inside, self.rows = table_id, False, []

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag in ("td", "th"):
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False

    def handle_data(self, data):
        if self.inside and self.rows and self.rows[-1]:
            self.rows[-1][-1] = " ".join((self.rows[-1][-1] + " " + data).split())


def rows(html: str, table_id: str) -> list[list[str]]:
    parser = _Rows(table_id)
    parser.feed(html)
    return parser.rows[1:]  # without the header row


def _preview(client, **fields):
    data = {"model_id": "big", "model_source": "$HOME/common/hf/llama-8b", "num_replicas": "1", "gpus_per_replica": "1",
            "engine_options": "max_model_len=8192\nmax_num_seqs=16", "preview": "form", **fields}
    return client.post("/serving/new/preview", data, HTTP_HX_REQUEST="true")


@pytest.mark.django_db
@pytest.mark.usefixtures("gpu_engine")
def test_the_preview_shows_each_term_and_the_fit_per_gpu(alice_client, roots):
    from health.probes.gpu_probe import record_nodes
    from serving.models import ServeModel
    from tests.serving.test_pages import text_of

    llama_8b(roots / "hf" / "llama-8b")
    stranger = {"pid": 4242, "name": "python3", "used_bytes": 20 * GIB, "kind": "compute"}
    record_nodes({"nodes": [node("a" * 56, gpus=[gpu(0, memory_used_bytes=20 * GIB, processes=[stranger]), gpu(1, memory_used_bytes=1 * GIB, processes=[])], address="10.0.0.1")], "error": ""})

    response = _preview(alice_client, num_replicas="2")

    assert response.status_code == 200
    terms = rows(response.text, "vram-terms")
    assert [row[0] for row in terms] == ["vLLM's share", "weights", "non-torch", "activations", "CUDA graphs", "KV cache"]
    assert terms[0][:2] == ["vLLM's share", "73.6 GiB"] and terms[1][:2] == ["weights", "15.0 GiB"]
    assert "one sequence of 8,192 tokens (engine_kwargs) needs 1.0 GiB" in terms[5][2]
    assert text_of(response.text, "vram-summary") == (
        "Does not fit: the GPUs have room for 1 of 2 replica(s) of 1 GPU(s). GPU 0 on node 10.0.0.1 has 60.0 GiB free of 80.0 GiB; "
        "vLLM asks for its share of 73.6 GiB at start and refuses with less free: 13.6 GiB short. "
        "PID 4242 (python3) holds 20.0 GiB and is not a replica."
    )
    # The share that is free still holds the weights and more than one sequence: asking for less starts.
    assert text_of(response.text, "vram-advice").startswith("gpu_memory_utilization: 0.75 asks only for what GPU 0 on node 10.0.0.1 has free")
    gpu0, gpu1 = rows(response.text, "vram-gpus")
    assert gpu0[:4] == ["10.0.0.1", "0 NVIDIA H100 80GB HBM3", "60.0 GiB of 80.0 GiB", "73.6 GiB"]
    assert gpu0[5].startswith("no, 13.6 GiB short GPU 0 on node 10.0.0.1 has 60.0 GiB free")
    assert gpu1[:4] == ["10.0.0.1", "1 NVIDIA H100 80GB HBM3", "79.0 GiB of 80.0 GiB", "73.6 GiB"] and gpu1[5] == "yes"
    assert not ServeModel.objects.exists()


@pytest.mark.django_db
@pytest.mark.usefixtures("gpu_engine")
def test_the_preview_says_not_checked_without_a_gpu_reading_and_why_a_folder_cannot_be_estimated(alice_client, roots):
    from tests.serving.test_pages import text_of

    llama_8b(roots / "hf" / "llama-8b")
    unread = _preview(alice_client)
    assert text_of(unread.text, "vram-summary").startswith("Not checked: the health probe has read no GPU")
    empty = _preview(alice_client, model_source="$HOME/common/hf/tiny-llama")  # the roots fixture's folder is empty
    assert "cannot be estimated" in text_of(empty.text, "vram-note") and "no config.json" in text_of(empty.text, "vram-note")


@pytest.mark.django_db
def test_the_preview_of_cpu_replicas_says_no_gpu_memory_is_used(alice_client, roots, settings):
    from tests.serving.test_pages import text_of

    settings.GANTRY_ENGINE = "cpu"
    response = _preview(alice_client, gpus_per_replica="0", model_source="$HOME/common/hf/tiny-llama")
    assert text_of(response.text, "vram-note") == "CPU replicas use no GPU memory; pick a GPU to see whether the model would fit on it."


@pytest.mark.django_db
def test_will_it_fit_on_a_picked_gpu_answers_before_any_gpu_exists(alice_client, roots, settings):
    from tests.serving.test_pages import text_of

    settings.GANTRY_ENGINE = "cpu"
    llama_8b(roots / "hf" / "llama-8b")
    on_l4 = _preview(alice_client, gpus_per_replica="0", engine_options="", fit_gpu="L4")
    assert text_of(on_l4.text, "vram-what-if").startswith("Does not fit on L4 of 22.0 GiB: one sequence of 131,072 tokens needs 16.0 GiB")
    assert "gpus_per_replica: 2" in text_of(on_l4.text, "vram-what-if-advice")
    assert '<option value="L4" selected>' in on_l4.text
    on_h100 = _preview(alice_client, gpus_per_replica="0", engine_options="", fit_gpu="H100-80GB")
    assert text_of(on_h100.text, "vram-what-if").startswith("Fits on H100-80GB of 79.2 GiB")
    assert [row[0] for row in rows(on_h100.text, "vram-terms")][-1] == "KV cache"
