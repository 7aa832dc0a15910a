"""Specs written to hurt: YAML alias bombs, values pasted to be huge, values YAML cannot turn into Python.

Every one of them must be refused with a short answer, through the API and through the page, and
leave nothing in the database, without building anything big on the way: the alias bomb this file
began with expanded to 531,441 items and came back as a 76 MB error. That is pinned as the peak of
what the request allocates (tracemalloc), which does not move with the machine's load; how long a
refusal takes is measured in bench/, not asserted here (a wall-clock bound failed CI under load).
"""
from __future__ import annotations

import tracemalloc

import pytest

from dashboard.models import ApiToken
from serving.models import ServeModel
from tests.serving.factories import create_model, spec
from tests.serving.test_api import URL, Api, error_of
from tests.serving.test_pages import form_post, text_of, yaml_post

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]

SHORT = 4096  # bytes: an error that says what is wrong fits in far less
SMALL = 16 * 1024 * 1024  # bytes allocated at the peak: a 64 KiB spec parsed and refused needs ~1 MB
SOURCE = "$HOME/common/hf/tiny-llama"


def laughs(levels: int = 6, width: int = 9) -> str:
    """A billion-laughs flow sequence: each anchor is `width` aliases of the one before.

    Six levels is the 453-byte spec that came back as a 76 MB error; each level more is nine times that.
    """
    items = ["&a0 [" + ", ".join(["lol"] * width) + "]"]
    items += [f"&a{n} [" + ", ".join([f"*a{n - 1}"] * width) + "]" for n in range(1, levels + 1)]
    return "[" + ", ".join(items) + "]"


def bomb_spec(field: str) -> str:
    fields = {"model_id": "demo", "model_source": SOURCE, field: laughs()}
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


@pytest.fixture
def api(client, alice):
    _, raw = ApiToken.issue(alice, "ci")
    api = Api(client, raw)
    # The process's first request imports the views, URLs and serializers: tens of MB that are not
    # the refusal's own, so one ordinary refusal goes first.
    assert api.post_yaml("model_id: [\n").status_code == 400
    return api


def measured(call):
    """call()'s response and the most memory it held at once while it ran."""
    tracemalloc.start()
    try:
        response = call()
        return response, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_short_refusal(response, peak: int, status: int = 400) -> None:
    assert response.status_code == status, response.content[:500]
    assert peak < SMALL, f"allocated {peak / 2**20:.1f} MiB at its peak"
    assert len(response.content) < SHORT, f"{len(response.content)} bytes"
    assert not ServeModel.objects.exists()


# --- anchors and aliases -----------------------------------------------------------------------
@pytest.mark.parametrize("field", ["num_replicas", "model_source", "engine_kwargs"])
def test_an_alias_bomb_posted_to_the_api_is_a_short_quick_400(api, field):
    response, peak = measured(lambda: api.post_yaml(bomb_spec(field)))
    assert_short_refusal(response, peak)
    error = error_of(response)
    assert error["code"] == "bad_yaml"
    line = bomb_spec(field).splitlines().index(f"{field}: {laughs()}") + 1
    assert "anchor" in error["message"] and f"line {line}," in error["message"]


def test_a_single_harmless_alias_is_refused_too_so_the_rule_is_simple(api):
    response = api.post_yaml("model_id: &name demo\nmodel_source: $HOME/common/hf/tiny-llama\nnum_replicas: 1\n")
    assert response.status_code == 400 and error_of(response)["code"] == "bad_yaml"
    assert "anchor" in error_of(response)["message"]
    assert not ServeModel.objects.exists()


def test_a_merge_key_needs_an_alias_and_is_refused(api):
    text = "base: &base {num_replicas: 1}\nmodel_id: demo\n<<: *base\n"
    response = api.post_yaml(text)
    assert response.status_code == 400 and "anchor" in error_of(response)["message"]


@pytest.fixture
def page_refusal(alice_client):
    """Posts to /serving/new; checks the refusal builds nothing big and adds under 4 KB to the blank page."""
    blank = len(alice_client.get("/serving/new").content)

    def post(data: dict):
        response, peak = measured(lambda: alice_client.post("/serving/new", data))
        assert response.status_code == 400, response.content[:500]
        assert peak < SMALL, f"allocated {peak / 2**20:.1f} MiB at its peak"
        grown = len(response.content) - blank
        assert grown < SHORT, f"{grown} bytes more than the blank page"
        assert not ServeModel.objects.exists()
        return response

    return post


def test_an_alias_bomb_in_the_yaml_tab_is_a_short_quick_400(page_refusal):
    response = page_refusal(yaml_post(bomb_spec("num_replicas")))
    assert "anchor" in text_of(response.text, "field-spec_yaml")


@pytest.mark.parametrize("typed", [
    f"seed: {laughs()}",
    f"seed={laughs()}",
    f'{{"seed": {laughs()}}}',
], ids=["yaml", "key=value", "flow"])
def test_an_alias_bomb_in_the_engine_options_field_is_a_short_quick_400(page_refusal, typed):
    response = page_refusal(form_post(model_id="demo", model_source=SOURCE, engine_options=typed))
    assert "anchor" in text_of(response.text, "field-engine_options")


def test_the_preview_button_refuses_an_alias_bomb_as_quickly(page_refusal):
    response = page_refusal({**yaml_post(bomb_spec("gpus_per_replica")), "preview": "yaml"})
    assert "anchor" in text_of(response.text, "field-spec_yaml")


# --- duplicate keys in the engine options field --------------------------------------------------
@pytest.mark.parametrize("typed", [
    "max_model_len: 2048\nmax_model_len: 4096",
    '{"seed": 1, "seed": 2}',
], ids=["yaml", "json"])
def test_an_engine_option_written_twice_as_yaml_or_json_is_refused(alice_client, typed):
    response = alice_client.post("/serving/new", form_post(model_id="demo", model_source=SOURCE, engine_options=typed))
    assert response.status_code == 400
    message = text_of(response.text, "field-engine_options")
    assert "appears twice" in message
    assert not ServeModel.objects.exists()


# --- values pasted to be huge --------------------------------------------------------------------
JUNK = "x" * 60_000  # inside the 64 KiB cap, so it reaches the rules that quote it
BASE = spec("demo")


def long_key(key: str, value: str, indent: str = "") -> str:
    # YAML allows a plain key of at most 1,024 characters; `? key` (an explicit key) has no limit.
    return f"{indent}? {key}\n{indent}: {value}\n"


@pytest.mark.parametrize("text,status,field", [
    (spec("demo", num_replicas=f'"{JUNK}"'), 422, "num_replicas"),
    (spec("demo", gpus_per_replica=f'"{JUNK}"'), 422, "gpus_per_replica"),
    (spec(JUNK), 422, "model_id"),
    (spec("demo", source=f"$HOME/{JUNK}"), 422, "model_source"),
    (spec("demo", source=f"/elsewhere/{JUNK}"), 403, "model_source"),
    (spec("demo", source=f"$HOME/{JUNK}/../x"), 403, "model_source"),
    (BASE + "engine_kwargs:\n" + long_key(JUNK, "1", "  "), 422, None),
    (spec("demo", engine_kwargs=f'{{seed: "{JUNK}"}}'), 422, "engine_kwargs.seed"),
    (spec("demo", engine_kwargs=f'"{JUNK}"'), 422, "engine_kwargs"),
    (BASE + long_key(JUNK, "1"), 422, None),
    (BASE + long_key(JUNK[:30_000], "1") + long_key(JUNK[:30_000], "2"), 400, None),
    (f"model_id: !{JUNK} demo\n", 400, None),
], ids=["num_replicas", "gpus", "model_id", "missing source", "outside source", "dotdot source",
        "engine key", "engine value", "engine kwargs", "unknown field", "duplicate key", "unknown tag"])
def test_a_huge_value_is_echoed_short(api, text, status, field):
    assert len(text) < 64 * 1024
    response, peak = measured(lambda: api.post_yaml(text))
    assert_short_refusal(response, peak, status)
    error = error_of(response)
    assert "xxxx" in error["message"]  # the user can still see which value it is about
    if field:
        assert error["field"] == field
    else:
        assert len(error.get("field", "")) < 100


# --- values YAML cannot turn into Python ----------------------------------------------------------
@pytest.mark.parametrize("value", ["1" * 5000, "2024-13-45", "2024-02-30 10:00:00"], ids=["5000 digits", "month 13", "february 30"])
def test_a_value_python_cannot_hold_is_a_400_not_a_crash(api, value):
    response = api.post_yaml(spec("demo", num_replicas=value))
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "bad_yaml" and "line 3" in error["message"]
    assert len(response.content) < SHORT
    assert not ServeModel.objects.exists()


def test_a_json_number_python_cannot_hold_is_a_400_not_a_crash(api, alice):
    model = create_model(alice, "demo", num_replicas=1)
    response = api.patch(f"{URL}/{model.model_key}", '{"num_replicas": ' + "9" * 5000 + "}")
    assert response.status_code == 400 and error_of(response)["code"] == "bad_json"
    assert len(response.content) < SHORT
    model.refresh_from_db()
    assert model.num_replicas == 1 and model.generation == 1
