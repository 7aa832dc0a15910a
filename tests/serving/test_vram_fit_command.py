"""`manage.py vram_fit`: "will it fit on…" from a model folder alone, no GPU, no Ray, no database —
exit 0 fits, 1 does not, 2 unreadable — on the tiny demo model and header-only Llama layouts."""
from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from serving.vram_fit import GIB
from serving.vram_fit.gpus import find_gpu, known_gpus, parse_gpu
from tests.serving.test_vram_fit import llama_8b
from tests.serving.test_vram_rule import llama_70b


def run(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("vram_fit", *args, stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue() + str(exc)
    return 0, out.getvalue()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(llama_8b(tmp_path_factory.mktemp("m") / "llama-8b"))


def test_the_tiny_model_fits_an_h100(tiny_model):
    code, out = run(str(tiny_model), "--gpu", "H100-80GB")
    assert code == 0 and out.count("✔ Fits on H100-80GB") == 1


def test_llama_8b_fits_an_h100_at_its_full_context(llama):
    code, out = run(llama, "--gpu", "H100-80GB")
    assert code == 0
    assert "max_model_len 131,072 (config.json max_position_embeddings)" in out
    assert "✔ Fits on H100-80GB of 79.2 GiB: the KV cache holds " in out


def test_llama_8b_does_not_fit_an_l4_at_131072_and_names_the_largest_context_that_does(llama):
    code, out = run(llama, "--gpu", "L4", "--json")
    assert code == 1
    [row] = json.loads(out[: out.rindex("}") + 1])["gpus"]
    assert row["gpu"] == "L4" and not row["fits"] and not row["starts"]
    largest = row["largest_max_model_len"]
    assert 0 < largest < 131072
    assert f"max_model_len: {largest:,}" in row["advice"]
    # What it names is what fits: asked again with that context, the same GPU says yes.
    code, out = run(llama, "--gpu", "L4", "--engine-kwargs", json.dumps({"max_model_len": largest}))
    assert code == 0 and "✔ Fits on L4" in out


def test_a_70b_layout_is_told_how_many_80_gb_gpus_a_replica_needs(tmp_path):
    folder = str(llama_70b(tmp_path / "llama-70b"))
    code, out = run(folder, "--gpu", "H100-80GB", "--gpu", "A100-80GB", "--json")
    assert code == 1
    rows = json.loads(out[: out.rindex("}") + 1])["gpus"]
    assert [r["smallest_gpus_per_replica"] for r in rows] == [4, 4]
    assert all("gpus_per_replica: 4" in r["advice"] for r in rows)
    code, out = run(folder, "--gpu", "H100-80GB", "--gpus-per-replica", "4")
    assert code == 0 and "4 GPU(s) per replica" in out


def test_a_gpu_busy_with_something_else_is_one_vllm_refuses_at_start(llama):
    code, out = run(llama, "--gpu", "H100-80GB:79.2:40", "--engine-kwargs", '{"max_model_len": 8192}')
    assert code == 1
    assert "only 40.0 GiB is free: it refuses to start" in out


def test_with_no_gpu_every_known_gpu_is_checked(llama):
    code, out = run(llama, "--engine-kwargs", '{"max_model_len": 8192}')
    assert code == 0  # fits on at least one
    assert out.count("Fits on") + out.count("Does not fit on") == len(known_gpus())


@pytest.mark.parametrize("args, says", [
    (["/nowhere"], "no config.json"),
    (["FOLDER", "--gpu", "B9000"], "'B9000' is not a GPU the check knows"),
    (["FOLDER", "--gpu", "X:40:50"], "free no more than total"),
    (["FOLDER", "--engine-kwargs", "[1]"], "not a JSON object"),
    (["FOLDER", "--engine-kwargs", '{"max_model_len": "long"}'], "max_model_len is 'long', not a whole number"),
])
def test_what_cannot_be_read_exits_2_with_the_reason(llama, args, says):
    code, out = run(*[llama if a == "FOLDER" else a for a in args])
    assert code == 2 and says in out


def test_known_gpus_cite_where_their_size_comes_from():
    for gpu in known_gpus():
        assert gpu.source.startswith("https://"), gpu.name
        assert 14 * GIB < gpu.total_bytes < 150 * GIB
    assert find_gpu("nvidia h100 80gb hbm3") == find_gpu("H100-80GB")
    custom = parse_gpu("A6000:47.5:40")
    assert (custom.name, custom.total_bytes, custom.free) == ("A6000", int(47.5 * GIB), 40 * GIB)
