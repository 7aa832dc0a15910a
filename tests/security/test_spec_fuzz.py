"""The whole spec path — text → YAML → validation → path resolution (serving.spec.load_spec) — given
anything: it answers with a SpecError (400, 403 or 422) and nothing else, and a spec it accepts
serves from a real folder inside the shared HF root or the user's own. The path jail's own
properties (segments, `..`, arbitrary tails) are tests/serving/test_spec_paths.py's; these drive
the same tricky paths through the parser, inside YAML a user or a script could send."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.spec import ENGINE_KWARGS_ALLOWED, SPEC_FIELDS, Roots, SpecError, load_spec
from tests.serving.test_spec_paths import PREFIXES, SEGMENTS, build_tree

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
FUZZ = settings(max_examples=150, deadline=None)
# Beyond test_spec_paths' segments: the tree's links that point out, loops, and what a shell would expand.
TRICKY = SEGMENTS + ["link_to_outside", "link_to_datasets", "link_to_hf_model", "loop", "loop_a", "~", "$USER", "${HOME}", "\0", "é", "models", "m1"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Roots:
    return build_tree(tmp_path_factory.mktemp("fuzz"))


# Folders that exist and may be served: a path starting at one of them is often taken, so the fuzz
# checks accepted specs as well as refusals.
SERVABLE = ["$HOME/x", "$HOME/models/m1", "$HOME/link_to_hf", "$HOME/common/hf/tiny", "${HOME}/hf", "{base}/hf/x"]


def sources(roots_base: str) -> st.SearchStrategy[str]:
    def built(prefixes: list[str], joiner: str) -> st.SearchStrategy[str]:
        return st.builds(
            lambda prefix, parts: prefix.replace("{base}", roots_base) + joiner + "/".join(parts),
            st.sampled_from(prefixes),
            st.lists(st.sampled_from(TRICKY), max_size=4),
        )

    return built(SERVABLE, "/") | st.sampled_from(SERVABLE).map(lambda p: p.replace("{base}", roots_base)) | built(PREFIXES, "") | st.text(max_size=30)


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def specs(roots_base: str) -> st.SearchStrategy[dict]:
    suffix = st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,10}", fullmatch=True)
    engine_option = st.sampled_from([("max_model_len", 256), ("dtype", "float32"), ("enforce_eager", True), ("max_num_seqs", 4)])
    return st.fixed_dictionaries(
        {"model_id": suffix | suffix | values, "model_source": sources(roots_base)},
        optional={
            "num_replicas": st.integers(0, 4) | st.integers() | values,
            "gpus_per_replica": st.integers(0, 2) | values,
            "engine_kwargs": st.dictionaries(st.sampled_from(sorted(ENGINE_KWARGS_ALLOWED)) | st.text(max_size=12), values, max_size=3)
            | st.lists(engine_option, max_size=3).map(dict),
            "preflight": values,
            "replica": values,  # a typo of a real field
        },
    )


# Pieces of YAML a hostile or careless user writes: anchors, tags, merge keys, directives, flow and
# block scalars, numbers Python reads differently, NUL and non-ASCII.
FRAGMENTS = [
    "model_id: demo", "model_source: $HOME/x", "model_source: $HOME/link_to_outside/m", "model_source: '$HOME/../bob'",
    "num_replicas: 1", "num_replicas: 1e999", "num_replicas: 0x10", "num_replicas: 99999999999999999999999",
    "gpus_per_replica: .inf", "engine_kwargs:", "  max_model_len: 256", "  trust_remote_code: true", "preflight:",
    "  secrets: [A, B]", "- a", "? x", ": y", "&a [1]", "*a", "<<: *a", "!!python/object/apply:os.system ['id']",
    "!!binary aGk=", "%YAML 1.1", "---", "...", "key: |", "  block", "{a: [b, {c: d}]}", '"\\0"', "\x00", "é: ü",
    "\t", "created: 2024-13-45", "model_id: &x demo",
]


@FUZZ
@given(data=st.data())
def test_any_structured_spec_is_taken_safely_or_refused(tree, data):
    spec = data.draw(specs(str(tree.hf.parent)))
    text = data.draw(st.sampled_from([yaml.safe_dump, lambda s: json.dumps(s, default=str)]))(spec)
    assert_taken_safely_or_refused(text, tree, data.draw(st.sampled_from(["gpu", "cpu"])))


@FUZZ
@given(lines=st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=15), max_size=8))
def test_any_yaml_ish_text_is_taken_safely_or_refused(tree, lines):
    assert_taken_safely_or_refused("\n".join(lines), tree, "gpu")


@FUZZ
@given(text=st.text(max_size=200))
def test_any_text_at_all_is_taken_safely_or_refused(tree, text):
    assert_taken_safely_or_refused(text, tree, "cpu")


def assert_taken_safely_or_refused(text: str, roots: Roots, engine: str) -> None:
    try:
        resolved = load_spec(text, username="alice", created_at=NOW, roots=roots, engine=engine)
    except SpecError as error:  # anything else escapes and fails the example
        assert error.status in (400, 403, 422) and error.message
        return
    source = Path(resolved.model_source)
    assert source.is_dir() and os.path.realpath(source) == str(source)
    assert source.is_relative_to(os.path.realpath(roots.hf)) or source.is_relative_to(os.path.realpath(roots.users / "alice"))
    assert set(resolved.as_dict()) <= set(SPEC_FIELDS) | {"suffix"}


def test_the_fuzzed_shapes_include_specs_that_are_taken(tree):
    # Guards the properties above against a tree or a parser that refuses everything.
    for text in ("model_id: demo\nmodel_source: $HOME/x\n", json.dumps({"model_id": "d", "model_source": "$HOME/link_to_hf/tiny"})):
        resolved = load_spec(text, username="alice", created_at=NOW, roots=tree, engine="gpu")
        assert Path(resolved.model_source).is_dir()
