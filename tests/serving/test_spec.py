"""The spec's fields: what YAML parses, what validates, the public id, and the stored form's round trip."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml

from serving.spec import (
    ENGINE_KWARGS_ALLOWED,
    SPEC_FIELDS,
    ResolvedSpec,
    SpecError,
    make_model_id,
    parse_spec_yaml,
    validate_num_replicas,
    validate_spec,
)

SOURCE = "$HOME/common/hf/tiny"


def spec(**fields) -> dict:
    return {"model_id": "tiny", "model_source": SOURCE, **fields}


def refused(data: dict, *, engine: str = "gpu") -> SpecError:
    with pytest.raises(SpecError) as caught:
        validate_spec(data, engine=engine)
    assert caught.value.status == 422 and caught.value.code == "invalid_spec"
    return caught.value


# --- YAML ---------------------------------------------------------------------------------------
def test_a_yaml_mapping_parses_to_a_dict():
    assert parse_spec_yaml("model_id: tiny\nnum_replicas: 2\n") == {"model_id": "tiny", "num_replicas": 2}


def test_yaml_that_does_not_parse_is_a_400_that_names_the_line():
    with pytest.raises(SpecError) as caught:
        parse_spec_yaml("model_id: tiny\nmodel_source: [unclosed\nnum_replicas: 1\n")
    error = caught.value
    assert (error.status, error.code) == (400, "bad_yaml")
    assert "line " in error.message and str(error) == error.message


@pytest.mark.parametrize("text", ["- model_id: tiny\n- num_replicas: 1\n", "just a string\n", "42\n"])
def test_a_top_level_that_is_not_a_mapping_is_a_400(text):
    with pytest.raises(SpecError) as caught:
        parse_spec_yaml(text)
    assert (caught.value.status, caught.value.code) == (400, "bad_yaml")
    assert "mapping" in caught.value.message


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n"])
def test_an_empty_document_is_a_400(text):
    with pytest.raises(SpecError) as caught:
        parse_spec_yaml(text)
    assert (caught.value.status, caught.value.code) == (400, "bad_yaml")
    assert "empty" in caught.value.message


def test_a_key_written_twice_is_a_400_instead_of_last_one_wins():
    with pytest.raises(SpecError) as caught:
        parse_spec_yaml("model_id: tiny\nnum_replicas: 1\nnum_replicas: 4\n")
    assert caught.value.status == 400
    assert "num_replicas" in caught.value.message and "line 3" in caught.value.message


def test_python_object_tags_are_refused_by_the_safe_loader():
    with pytest.raises(SpecError) as caught:
        parse_spec_yaml("model_id: !!python/object/apply:os.system ['true']\n")
    assert caught.value.status == 400


def test_a_huge_spec_is_refused_before_parsing():
    with pytest.raises(SpecError) as caught:
        parse_spec_yaml("a: " + "x" * 100_000)
    assert caught.value.status == 400


# --- top-level fields ---------------------------------------------------------------------------
def test_a_typo_in_a_field_name_is_refused_with_the_closest_name():
    error = refused(spec(replica=2))
    assert error.field == "replica"
    assert "'num_replicas'" in error.message
    assert all(name in error.message for name in SPEC_FIELDS)


def test_an_unknown_field_with_no_close_name_lists_the_allowed_ones():
    error = refused(spec(colour="blue"))
    assert error.field == "colour" and "Did you mean" not in error.message
    assert "model_source" in error.message


def test_a_spec_that_is_not_a_mapping_is_refused():
    with pytest.raises(SpecError) as caught:
        validate_spec(["model_id"], engine="gpu")  # type: ignore[arg-type]
    assert caught.value.status == 422


def test_an_unknown_engine_is_a_programming_error():
    with pytest.raises(ValueError):
        validate_spec(spec(), engine="tpu")


@pytest.mark.parametrize("suffix", ["a", "tiny", "Llama-3.1-8B_instruct", "0", "x" * 64, "a.b-c_d"])
def test_a_valid_suffix_is_kept(suffix):
    assert validate_spec(spec(model_id=suffix), engine="gpu").suffix == suffix


@pytest.mark.parametrize(
    "suffix",
    ["", "-lead", ".hidden", "_x", "x" * 65, "has space", "slash/no", "ünï", "tiny\n", "a$b", 7, 1.5, True, None],
)
def test_an_invalid_suffix_is_refused_with_the_rule(suffix):
    error = refused(spec(model_id=suffix))
    assert error.field == "model_id"
    assert "letters, digits" in error.message and "64" in error.message


def test_a_missing_suffix_is_refused():
    data = spec()
    del data["model_id"]
    error = refused(data)
    assert error.field == "model_id" and "missing" in error.message


@pytest.mark.parametrize("source", [None, "", "   ", 3, ["a"]])
def test_a_missing_or_empty_or_non_string_source_is_refused(source):
    data = spec(model_source=source)
    if source is None:
        del data["model_source"]
    assert refused(data).field == "model_source"


# --- replicas and GPUs --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 64])
def test_num_replicas_within_bounds_is_kept(n):
    assert validate_spec(spec(num_replicas=n), engine="gpu").num_replicas == n


@pytest.mark.parametrize("n", [-1, 65, 1.5, 2.0, True, False, "2", None])
def test_num_replicas_outside_bounds_or_not_a_whole_number_is_refused(n):
    error = refused(spec(num_replicas=n))
    assert error.field == "num_replicas" and "0 to 64" in error.message


@pytest.mark.parametrize("n", [0, 1, 8])
def test_gpus_per_replica_within_bounds_is_kept(n):
    assert validate_spec(spec(gpus_per_replica=n), engine="gpu").gpus_per_replica == n


@pytest.mark.parametrize("n", [-1, 9, 1.5, True, "2"])
def test_gpus_per_replica_outside_bounds_is_refused(n):
    assert refused(spec(gpus_per_replica=n)).field == "gpus_per_replica"


def test_defaults_on_the_gpu_engine_are_one_replica_with_one_gpu():
    result = validate_spec(spec(), engine="gpu")
    assert (result.num_replicas, result.gpus_per_replica, result.engine_kwargs) == (1, 1, {})


def test_defaults_on_the_cpu_engine_are_one_replica_with_no_gpu():
    result = validate_spec(spec(), engine="cpu")
    assert (result.num_replicas, result.gpus_per_replica) == (1, 0)


def test_validate_num_replicas_alone_is_what_a_patch_uses():
    assert validate_num_replicas(3) == 3
    with pytest.raises(SpecError) as caught:
        validate_num_replicas(True)
    assert (caught.value.status, caught.value.field) == (422, "num_replicas")


# --- engine_kwargs ------------------------------------------------------------------------------
def test_allowed_engine_options_pass_through_unchanged():
    kwargs = {
        "max_model_len": 256, "dtype": "float32", "gpu_memory_utilization": 0.9, "enforce_eager": True,
        "max_num_seqs": 4, "max_num_batched_tokens": 2048, "enable_prefix_caching": False,
        "enable_chunked_prefill": True, "seed": -3, "kv_cache_dtype": "fp8", "quantization": None,
        "tensor_parallel_size": 1, "pipeline_parallel_size": 1, "swap_space": 0, "max_logprobs": 0,
    }
    assert set(kwargs) == set(ENGINE_KWARGS_ALLOWED)
    assert validate_spec(spec(engine_kwargs=kwargs), engine="gpu").engine_kwargs == kwargs


def test_an_empty_engine_kwargs_block_means_none():
    data = parse_spec_yaml(f"model_id: t\nmodel_source: {SOURCE}\nengine_kwargs:\n")
    assert validate_spec(data, engine="cpu").engine_kwargs == {}


def test_an_engine_option_outside_the_allow_list_is_refused_not_dropped():
    error = refused(spec(engine_kwargs={"max_model_len": 256, "block_size": 16}))
    assert error.field == "engine_kwargs.block_size"
    assert "not an allowed engine option" in error.message and "max_model_len" in error.message


def test_trust_remote_code_is_refused_with_its_own_reason():
    error = refused(spec(engine_kwargs={"trust_remote_code": False}))
    assert error.field == "engine_kwargs.trust_remote_code"
    assert "code" in error.message and "not an allowed engine option" not in error.message


def test_engine_kwargs_that_is_not_a_mapping_is_refused():
    assert refused(spec(engine_kwargs=["enforce_eager"])).field == "engine_kwargs"


@pytest.mark.parametrize(
    "key,value",
    [
        ("max_model_len", 15), ("max_model_len", 1_048_577), ("max_model_len", "256"), ("max_model_len", 256.0),
        ("dtype", "fp64"), ("dtype", None), ("gpu_memory_utilization", 0), ("gpu_memory_utilization", 1.01),
        ("gpu_memory_utilization", True), ("gpu_memory_utilization", float("nan")), ("enforce_eager", 1),
        ("enforce_eager", "yes"), ("max_num_seqs", 0), ("max_num_seqs", 4097), ("max_num_batched_tokens", 0),
        ("enable_prefix_caching", None), ("seed", True), ("seed", 1.0), ("kv_cache_dtype", "int8"),
        ("quantization", "None"), ("quantization", "int4"), ("tensor_parallel_size", 0),
        ("pipeline_parallel_size", 0), ("swap_space", -1), ("swap_space", float("inf")), ("swap_space", False),
        ("max_logprobs", -1),
    ],
)
def test_an_engine_option_of_the_wrong_type_or_range_is_refused(key, value):
    error = refused(spec(gpus_per_replica=1, engine_kwargs={key: value}))
    assert error.field == f"engine_kwargs.{key}"
    assert ENGINE_KWARGS_ALLOWED[key].rule in error.message


def test_a_huge_integer_is_range_checked_without_an_overflow():
    error = refused(spec(engine_kwargs={"gpu_memory_utilization": 10**400}))
    assert error.field == "engine_kwargs.gpu_memory_utilization"


def test_tensor_parallel_size_equal_to_gpus_per_replica_is_kept():
    result = validate_spec(spec(gpus_per_replica=4, engine_kwargs={"tensor_parallel_size": 4}), engine="gpu")
    assert result.engine_kwargs == {"tensor_parallel_size": 4}


def test_tensor_parallel_size_contradicting_gpus_per_replica_is_refused():
    error = refused(spec(gpus_per_replica=2, engine_kwargs={"tensor_parallel_size": 4}))
    assert error.field == "engine_kwargs.tensor_parallel_size" and "gpus_per_replica (2)" in error.message


def test_tensor_parallel_size_times_pipeline_parallel_size_must_fill_the_replica():
    kwargs = {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    assert validate_spec(spec(gpus_per_replica=4, engine_kwargs=kwargs), engine="gpu").gpus_per_replica == 4
    assert refused(spec(gpus_per_replica=2, engine_kwargs=kwargs)).field == "engine_kwargs.tensor_parallel_size"


def test_cpu_replicas_only_take_a_tensor_parallel_size_of_one():
    assert validate_spec(spec(engine_kwargs={"tensor_parallel_size": 1}), engine="cpu").gpus_per_replica == 0
    error = refused(spec(engine_kwargs={"tensor_parallel_size": 2}), engine="cpu")
    assert error.field == "engine_kwargs.tensor_parallel_size" and "CPU" in error.message


# --- public id ----------------------------------------------------------------------------------
def test_the_public_id_uses_utc_minutes_whatever_the_zone_of_created_at():
    tokyo = timezone(timedelta(hours=9))
    created_at = datetime(2026, 1, 1, 8, 30, 59, tzinfo=tokyo)  # 2025-12-31 23:30 UTC
    assert make_model_id("alice", created_at, "tiny") == "alice-202512312330-tiny"


def test_a_naive_created_at_is_refused():
    with pytest.raises(ValueError):
        make_model_id("alice", datetime(2026, 1, 1, 8, 30), "tiny")


# --- stored form --------------------------------------------------------------------------------
RESOLVED = ResolvedSpec(
    suffix="tiny",
    model_id="alice-202601010830-tiny",
    model_source="/srv/hf/tiny",
    num_replicas=2,
    gpus_per_replica=1,
    engine_kwargs={"max_model_len": 256, "dtype": "bfloat16", "quantization": None},
)


def test_as_dict_round_trips_through_from_dict():
    assert ResolvedSpec.from_dict(RESOLVED.as_dict()) == RESOLVED
    assert list(RESOLVED.as_dict()) == [
        "model_id", "suffix", "model_source", "num_replicas", "gpus_per_replica", "engine_kwargs",
    ]


def test_to_yaml_parses_back_to_as_dict_with_the_public_id_first():
    text = RESOLVED.to_yaml()
    assert yaml.safe_load(text) == RESOLVED.as_dict()
    assert text.startswith("model_id: alice-202601010830-tiny\n")


def test_as_dict_hands_out_a_copy_of_engine_kwargs():
    RESOLVED.as_dict()["engine_kwargs"]["dtype"] = "half"
    assert RESOLVED.engine_kwargs["dtype"] == "bfloat16"


def test_from_dict_refuses_missing_or_extra_keys_and_bad_values():
    data = RESOLVED.as_dict()
    for broken in (
        {k: v for k, v in data.items() if k != "num_replicas"},
        {**data, "replicas": 1},
        {**data, "num_replicas": -1},
        {**data, "engine_kwargs": {"trust_remote_code": True}},
    ):
        with pytest.raises(SpecError) as caught:
            ResolvedSpec.from_dict(broken)
        assert caught.value.status == 422


def test_with_replicas_changes_only_the_replica_count_and_validates_it():
    scaled = RESOLVED.with_replicas(0)
    assert scaled.num_replicas == 0 and scaled.model_id == RESOLVED.model_id and RESOLVED.num_replicas == 2
    with pytest.raises(SpecError) as caught:
        RESOLVED.with_replicas(65)
    assert caught.value.field == "num_replicas"
