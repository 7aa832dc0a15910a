"""Where model_source may point: macros, realpath containment, and the refusals a user can act on.

Every test runs against real folders and real symlinks on disk, never a mocked filesystem.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.spec import Roots, SpecError, load_spec, resolve_model_source


def build_tree(base: Path) -> Roots:
    """hf, datasets and users (alice, bob, alice2) with the links a user could try to escape through."""
    hf, datasets, users = base / "hf", base / "datasets", base / "users"
    alice, bob = users / "alice", users / "bob"
    for folder in (
        hf / "tiny", hf / "x", hf / "hf", hf / "alice", datasets / "d1", base / "outside" / "m",
        alice / "models" / "m1", alice / "x", alice / "common" / "x", alice / "hf",
        bob / "secret", bob / "x", users / "alice2" / "m",
    ):
        folder.mkdir(parents=True)
    for file in (hf / "tiny" / "config.json", hf / "weights.bin", alice / "weights.bin", bob / "secret" / "x.json"):
        file.write_text("{}")
    links = {
        alice / "link_to_bob": Path("../bob"),  # relative: resolved from inside alice's folder
        alice / "link_to_hf": hf,
        alice / "link_to_hf_model": hf / "tiny",
        alice / "link_to_datasets": datasets,
        alice / "link_to_outside": base / "outside",
        alice / "loop": Path("loop"),
        alice / "loop_a": Path("loop_b"),
        alice / "loop_b": Path("loop_a"),
        hf / "link_to_bob": bob,  # a link in the shared root must not open bob's folder either
        hf / "link_to_hf": hf,
        hf / "common": Path("common"),  # a loop reachable through the $HOME/common/hf macro
        bob / "link_to_hf": hf,
    }
    for link, target in links.items():
        link.symlink_to(target)
    return Roots(hf=hf, datasets=datasets, users=users)


@pytest.fixture
def roots(tmp_path: Path) -> Roots:
    return build_tree(tmp_path)


def real(path: Path) -> str:
    return os.path.realpath(path)


def resolve(raw: str, roots: Roots, username: str = "alice") -> str:
    return resolve_model_source(raw, username=username, roots=roots)


def refusal(raw: str, roots: Roots, username: str = "alice") -> SpecError:
    with pytest.raises(SpecError) as caught:
        resolve(raw, roots, username)
    assert caught.value.field == "model_source"
    return caught.value


def forbidden(raw: str, roots: Roots, username: str = "alice") -> SpecError:
    error = refusal(raw, roots, username)
    assert (error.status, error.code) == (403, "forbidden_path"), error.message
    return error


def missing(raw: str, roots: Roots) -> SpecError:
    error = refusal(raw, roots)
    assert (error.status, error.code) == (422, "invalid_spec"), error.message
    return error


# --- what is allowed ----------------------------------------------------------------------------
def test_home_expands_to_the_users_own_folder(roots):
    assert resolve("$HOME/models/m1", roots) == real(roots.users / "alice" / "models" / "m1")


def test_braced_home_is_the_same_macro(roots):
    assert resolve("${HOME}/models/m1", roots) == resolve("$HOME/models/m1", roots)


def test_home_alone_is_the_users_own_folder(roots):
    assert resolve("$HOME", roots) == real(roots.users / "alice")


def test_home_common_hf_expands_to_the_shared_hf_root(roots):
    assert resolve("$HOME/common/hf/tiny", roots) == real(roots.hf / "tiny")


def test_an_absolute_path_into_the_hf_root_is_allowed(roots):
    assert resolve(f"{roots.hf}/tiny", roots) == real(roots.hf / "tiny")


def test_an_absolute_path_into_the_users_own_folder_is_allowed(roots):
    assert resolve(f"{roots.users}/alice/x", roots) == real(roots.users / "alice" / "x")


def test_a_symlink_into_the_hf_root_is_allowed_and_resolved(roots):
    assert resolve("$HOME/link_to_hf_model", roots) == real(roots.hf / "tiny")
    assert resolve("$HOME/link_to_hf/tiny", roots) == real(roots.hf / "tiny")


def test_a_longer_name_that_only_starts_like_a_macro_stays_in_the_users_folder(roots):
    # "$HOME/common/hfx" is not the hf macro: it is alice's own "common/hfx", which does not exist.
    assert "does not exist" in missing("$HOME/common/hfx", roots).message
    assert resolve("$HOME/common/x", roots) == real(roots.users / "alice" / "common" / "x")


def test_roots_configured_through_a_symlink_still_contain_their_own_paths(tmp_path):
    roots = build_tree(tmp_path / "real")
    (tmp_path / "hf_link").symlink_to(roots.hf)
    via_link = Roots(hf=tmp_path / "hf_link", datasets=roots.datasets, users=roots.users)
    assert resolve("$HOME/common/hf/tiny", via_link) == real(roots.hf / "tiny")
    assert resolve(f"{roots.hf}/tiny", via_link) == real(roots.hf / "tiny")


# --- other users, the datasets root, everywhere else --------------------------------------------
def test_a_symlink_into_another_users_root_is_refused(roots):
    error = forbidden("$HOME/link_to_bob/secret", roots)
    assert "another user's folder" in error.message


def test_another_users_folder_by_absolute_path_is_refused(roots):
    assert "another user's folder" in forbidden(f"{roots.users}/bob/secret", roots).message


def test_a_symlink_inside_the_hf_root_that_points_to_another_user_is_refused(roots):
    assert "another user's folder" in forbidden("$HOME/common/hf/link_to_bob/secret", roots).message


def test_a_name_that_only_starts_with_the_users_name_is_another_users_folder(roots):
    # A string prefix check would let alice into /users/alice2.
    assert "another user's folder" in forbidden(f"{roots.users}/alice2/m", roots).message


def test_the_datasets_root_is_not_a_model_source(roots):
    assert "holds data, not models" in forbidden("$HOME/common/datasets/d1", roots).message
    assert "holds data, not models" in forbidden(f"{roots.datasets}/d1", roots).message
    assert "holds data, not models" in forbidden("$HOME/link_to_datasets/d1", roots).message


def test_a_path_outside_every_root_is_refused(roots):
    forbidden(f"{roots.hf.parent}/outside/m", roots)
    forbidden("$HOME/link_to_outside/m", roots)
    forbidden("/", roots)
    forbidden(str(roots.users), roots)


# --- what is refused before anything is resolved ------------------------------------------------
@pytest.mark.parametrize(
    "raw", ["$HOME/models/../models/m1", "$HOME/..", "..", "$HOME/common/hf/tiny/..", "{hf}/x/../tiny"]
)
def test_a_dotdot_segment_is_refused_even_when_it_would_stay_inside(roots, raw):
    assert "'..'" in forbidden(raw.format(hf=roots.hf), roots).message


def test_dots_inside_a_name_are_not_a_dotdot_segment(roots):
    (roots.hf / "llama..v2").mkdir()
    assert resolve("$HOME/common/hf/llama..v2", roots) == real(roots.hf / "llama..v2")


@pytest.mark.parametrize(
    "raw,says",
    [
        ("~/models/m1", "'~'"),
        ("~alice/models/m1", "'~'"),
        ("models/m1", "relative"),
        ("./models/m1", "relative"),
        ("$USER/models", "$USER"),
        ("${HOME/models", "${"),
        ("$HOMEDIR/models", "$HOMEDIR"),
        ("$HOME/$OTHER/m", "$OTHER"),
        ("/srv/$HOME/m", "$HOME"),
        ("$HOME/models\0/m1", "NUL"),
        ("", "empty"),
        ("   ", "empty"),
    ],
)
def test_a_path_that_cannot_be_resolved_safely_is_refused_with_the_reason(roots, raw, says):
    assert says in forbidden(raw, roots).message


def test_every_refusal_names_the_macros_and_the_roots(roots):
    message = forbidden("$HOME/link_to_bob/secret", roots).message
    assert "$HOME/common/hf" in message and str(roots.hf) in message
    assert "$HOME" in message and str(roots.users / "alice") in message


def test_a_username_that_would_climb_out_of_the_users_root_is_refused(roots):
    forbidden("$HOME", roots, username="..")
    forbidden(f"{roots.users}", roots, username="..")


# --- after containment: exists, a folder, no loop -----------------------------------------------
def test_a_path_that_does_not_exist_is_a_422_naming_the_resolved_path(roots):
    error = missing("$HOME/common/hf/nope", roots)
    assert "does not exist" in error.message and str(real(roots.hf)) + "/nope" in error.message


def test_a_path_through_a_file_does_not_exist(roots):
    assert "does not exist" in missing("$HOME/weights.bin/inner", roots).message


def test_a_file_is_not_a_model_folder(roots):
    assert "is a file" in missing("$HOME/common/hf/weights.bin", roots).message
    assert "is a file" in missing("$HOME/weights.bin", roots).message


@pytest.mark.parametrize("raw", ["$HOME/loop", "$HOME/loop/x", "$HOME/loop_a", "$HOME/common/hf/common/x"])
def test_a_symlink_loop_is_refused_without_a_crash(roots, raw):
    assert refusal(raw, roots).status in (403, 422)


def test_a_nonexistent_path_in_another_users_folder_is_still_forbidden_first(roots):
    # Containment comes before existence, so a 422 never confirms what lies in bob's folder.
    forbidden("$HOME/link_to_bob/nope", roots)


# --- the whole spec -----------------------------------------------------------------------------
def test_load_spec_parses_validates_and_resolves(roots):
    text = "model_id: tiny\nmodel_source: $HOME/link_to_hf_model\nnum_replicas: 0\nengine_kwargs:\n  dtype: float32\n"
    created_at = datetime(2026, 3, 4, 5, 6, tzinfo=timezone.utc)
    resolved = load_spec(text, username="alice", created_at=created_at, roots=roots, engine="cpu")
    assert resolved.as_dict() == {
        "model_id": "alice-202603040506-tiny",
        "suffix": "tiny",
        "model_source": real(roots.hf / "tiny"),
        "num_replicas": 0,
        "gpus_per_replica": 0,
        "engine_kwargs": {"dtype": "float32"},
    }


def test_load_spec_refuses_a_source_in_another_users_folder(roots):
    text = f"model_id: tiny\nmodel_source: {roots.users}/bob/secret\n"
    with pytest.raises(SpecError) as caught:
        load_spec(text, username="alice", created_at=datetime.now(timezone.utc), roots=roots, engine="gpu")
    assert caught.value.status == 403


def test_roots_come_from_the_gantry_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", "dashboard.settings"))
    from django.test import override_settings

    hf, datasets, users = tmp_path / "h", tmp_path / "d", tmp_path / "u"
    with override_settings(GANTRY_HF_ROOT=hf, GANTRY_DATASETS_ROOT=datasets, GANTRY_USERS_ROOT=users):
        assert Roots.from_settings() == Roots(hf=hf, datasets=datasets, users=users)


# --- properties ---------------------------------------------------------------------------------
SEGMENTS = ["..", ".", "", "alice", "bob", "common", "hf", "$HOME", "link_to_bob", "link_to_hf", "x"]
PREFIXES = [
    "", "/", "$HOME/", "${HOME}/", "$HOME/common/hf/", "$HOME/common/datasets/",
    "{base}/", "{base}/hf/", "{base}/users/", "{base}/users/alice/", "{base}/users/bob/", "{base}/datasets/",
]
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Roots:
    # One tree for the whole module: hypothesis runs many examples per test, and none of them writes.
    return build_tree(tmp_path_factory.mktemp("tree"))


def raw_path(roots: Roots, prefix: str, segments: list[str]) -> str:
    return prefix.replace("{base}", str(roots.hf.parent)) + "/".join(segments)


def assert_safe(raw: str, roots: Roots) -> None:
    """Either refused with a user-facing status, or a folder inside hf or alice's own root."""
    try:
        resolved = resolve(raw, roots)
    except SpecError as error:
        assert (error.status, error.code) in ((403, "forbidden_path"), (422, "invalid_spec"))
        assert error.field == "model_source"
        return
    path = Path(resolved)
    assert path.is_dir() and os.path.realpath(path) == resolved
    assert path.is_relative_to(real(roots.hf)) or path.is_relative_to(real(roots.users / "alice"))


@PROPERTY_SETTINGS
@given(prefix=st.sampled_from(PREFIXES), segments=st.lists(st.sampled_from(SEGMENTS), max_size=6))
def test_any_path_built_from_tricky_segments_resolves_inside_or_is_refused(tree, prefix, segments):
    assert_safe(raw_path(tree, prefix, segments), tree)


@PROPERTY_SETTINGS
@given(
    prefix=st.sampled_from(PREFIXES),
    segments=st.lists(st.sampled_from(SEGMENTS), max_size=6),
    at=st.integers(min_value=0, max_value=6),
)
def test_no_path_with_a_dotdot_segment_is_ever_accepted(tree, prefix, segments, at):
    segments.insert(min(at, len(segments)), "..")
    raw = raw_path(tree, prefix, segments)
    with pytest.raises(SpecError) as caught:
        resolve(raw, tree)
    assert caught.value.status == 403


@PROPERTY_SETTINGS
@given(prefix=st.sampled_from(PREFIXES), tail=st.text(max_size=40))
def test_arbitrary_text_never_escapes_or_crashes(tree, prefix, tail):
    assert_safe(raw_path(tree, prefix, [tail]), tree)


def test_the_properties_tree_accepts_some_paths(tree):
    # Guards the properties above against a tree in which everything is refused.
    for raw in ("$HOME/x", "$HOME/link_to_hf/x", "$HOME/common/hf/hf", f"{tree.hf}/alice", "$HOME/hf"):
        assert_safe(raw, tree)
        assert resolve(raw, tree)
