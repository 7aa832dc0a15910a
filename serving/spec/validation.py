"""A serving spec's fields and the rules each must meet, before any path is looked at.

Pure Python (no models, no ray) so the API, the form and the reconciler share one set of rules.
The `preflight:` block's rules are gates' (gates/preflight/config.py, which imports nothing of serving).
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple

from dashboard.text import did_you_mean
from gates.preflight.config import PreflightConfigError, validate_block
from serving.spec.errors import SpecError, as_field, invalid_spec, shown
from serving.spec.parsing import SPEC_FIELDS

SUFFIX_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}")
SUFFIX_RULE = "1 to 64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_REPLICAS = 64
MAX_GPUS_PER_REPLICA = 8
ENGINES = ("cpu", "gpu")


# --- engine_kwargs allow-list -------------------------------------------------------------------
class EngineOption(NamedTuple):
    rule: str  # completes "engine_kwargs.<key> must be ..."
    check: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    # YAML `true` is a bool, and bool is an int to Python; a count is never true/false.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # isfinite on a huge int would raise OverflowError; ints are finite anyway.
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


def _int_option(low: int | None = None, high: int | None = None) -> EngineOption:
    rule = "a whole number" + ("" if low is None else f" ≥ {low}" if high is None else f" from {low} to {high}")
    return EngineOption(rule, lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high))


def _choice_option(*choices: str | None) -> EngineOption:
    names = ", ".join("null" if c is None else c for c in choices)
    return EngineOption(f"one of {names}", lambda v: (v is None or isinstance(v, str)) and v in choices)


_BOOL = EngineOption("true or false", lambda v: isinstance(v, bool))

ENGINE_KWARGS_ALLOWED: dict[str, EngineOption] = {
    "max_model_len": _int_option(16, 1_048_576),
    "dtype": _choice_option("auto", "half", "float16", "bfloat16", "float", "float32"),
    "gpu_memory_utilization": EngineOption("a number above 0 and at most 1", lambda v: _is_number(v) and 0 < v <= 1),
    "enforce_eager": _BOOL,
    "max_num_seqs": _int_option(1, 4096),
    "max_num_batched_tokens": _int_option(1),
    "enable_prefix_caching": _BOOL,
    "enable_chunked_prefill": _BOOL,
    "seed": _int_option(),
    "kv_cache_dtype": _choice_option("auto", "fp8", "fp8_e4m3", "fp8_e5m2"),
    "quantization": _choice_option("awq", "gptq", "fp8", "bitsandbytes", None),
    "tensor_parallel_size": _int_option(1),
    "pipeline_parallel_size": _int_option(1),
    "swap_space": EngineOption("a number ≥ 0 (GiB)", lambda v: _is_number(v) and v >= 0),
    "max_logprobs": _int_option(0),
}


# --- autoscaling --------------------------------------------------------------------------------
# Serve's own autoscaler does the scaling: it measures ongoing requests per replica (queued plus
# running: the queue depth an LLM service should scale on, never CPU), and the two delays are the
# stabilization window against flapping. The defaults are Serve's.
class AutoscalingOption(NamedTuple):
    rule: str
    check: Callable[[Any], bool]
    default: Any


def _seconds_option(high: int, default: float) -> AutoscalingOption:
    return AutoscalingOption(f"a number of seconds from 0 to {high}", lambda v: _is_number(v) and 0 <= v <= high, default)


def _replicas_option(default: int | None) -> AutoscalingOption:
    return AutoscalingOption(f"a whole number from 1 to {MAX_REPLICAS}", lambda v: _is_int(v) and 1 <= v <= MAX_REPLICAS, default)


AUTOSCALING_OPTIONS: dict[str, AutoscalingOption] = {
    # At least 1: a model at zero replicas is what num_replicas: 0 means (its Serve app removed).
    "min_replicas": _replicas_option(1),
    "max_replicas": _replicas_option(None),
    "target_ongoing_requests": AutoscalingOption(
        "a number above 0 and at most 10000", lambda v: _is_number(v) and 0 < v <= 10_000, 2
    ),
    "upscale_delay_s": _seconds_option(3600, 30),
    "downscale_delay_s": _seconds_option(86_400, 600),
}


def validate_autoscaling(value: Any) -> dict:
    """The spec's `autoscaling:` block with Serve's defaults filled in, or {} when there is none."""
    if value is None:
        return {}
    names = ", ".join(AUTOSCALING_OPTIONS)
    if not isinstance(value, dict):
        raise invalid_spec("autoscaling", f"autoscaling must be a mapping of {names}; got {shown(value)}.")
    for key in value:
        if key not in AUTOSCALING_OPTIONS:
            hint = did_you_mean(key, AUTOSCALING_OPTIONS)
            raise invalid_spec(f"autoscaling.{as_field(key)}", f"{shown(key)} is not an autoscaling option.{hint} Allowed: {names}.")
    if "max_replicas" not in value:
        raise invalid_spec("autoscaling.max_replicas", "autoscaling needs max_replicas: the most replicas Serve may start.")
    filled = {}
    for key, option in AUTOSCALING_OPTIONS.items():
        option_value = value.get(key, option.default)
        if not option.check(option_value):
            raise invalid_spec(f"autoscaling.{key}", f"autoscaling.{key} must be {option.rule}; got {shown(option_value)}.")
        filled[key] = option_value
    if filled["min_replicas"] > filled["max_replicas"]:
        bounds = f"min_replicas ({filled['min_replicas']}) is above max_replicas ({filled['max_replicas']})"
        raise invalid_spec("autoscaling.min_replicas", f"autoscaling.{bounds}.")
    return filled


@dataclass(frozen=True)
class ServingSpec:
    suffix: str
    model_source: str
    num_replicas: int
    gpus_per_replica: int
    engine_kwargs: dict
    preflight: dict = dataclasses.field(default_factory=dict)
    autoscaling: dict = dataclasses.field(default_factory=dict)


def refuse_fixed_count(autoscaling: dict) -> SpecError:
    bounds = f"{autoscaling['min_replicas']} to {autoscaling['max_replicas']}"
    return invalid_spec(
        "num_replicas",
        f"This model autoscales from {bounds} replicas: change its autoscaling bounds instead, or submit "
        "its spec with num_replicas and without autoscaling for a fixed count.",
    )


def validate_num_replicas(value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_REPLICAS:
        rule = f"a whole number from 0 to {MAX_REPLICAS} (0 keeps the model but frees its GPUs)"
        raise invalid_spec("num_replicas", f"num_replicas must be {rule}; got {shown(value)}.")
    return value


def validate_gpus(value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_GPUS_PER_REPLICA:
        rule = f"a whole number from 0 to {MAX_GPUS_PER_REPLICA} (0 runs replicas on CPUs)"
        raise invalid_spec("gpus_per_replica", f"gpus_per_replica must be {rule}; got {shown(value)}.")
    return value


def validate_engine_kwargs(value: Any, gpus_per_replica: int) -> dict:
    if value is None:  # `engine_kwargs:` with nothing under it
        return {}
    if not isinstance(value, dict):
        raise invalid_spec("engine_kwargs", f"engine_kwargs must be a mapping of engine options; got {shown(value)}.")
    allowed = ", ".join(ENGINE_KWARGS_ALLOWED)
    for key, option_value in value.items():
        field = f"engine_kwargs.{as_field(key)}"
        if key == "trust_remote_code":
            why = "it would run code shipped inside the model folder on the serving machines"
            raise invalid_spec(field, f"trust_remote_code is not allowed: {why}. Use a model vLLM supports without it.")
        option = ENGINE_KWARGS_ALLOWED.get(key) if isinstance(key, str) else None
        if option is None:
            raise invalid_spec(field, f"{shown(key)} is not an allowed engine option; allowed: {allowed}.")
        if not option.check(option_value):
            raise invalid_spec(field, f"{field} must be {option.rule}; got {shown(option_value)}.")
    tp = value.get("tensor_parallel_size")
    if tp is not None:
        pp = value.get("pipeline_parallel_size", 1)
        # Each replica gets exactly gpus_per_replica GPUs; a model split over more or fewer would
        # either never be scheduled or leave GPUs reserved and idle.
        field = "engine_kwargs.tensor_parallel_size"
        if gpus_per_replica == 0 and tp != 1:
            raise invalid_spec(field, f"tensor_parallel_size is {tp} but gpus_per_replica is 0 (CPU replicas): use 1.")
        if gpus_per_replica > 0 and tp * pp != gpus_per_replica:
            product = f"tensor_parallel_size ({tp}) × pipeline_parallel_size ({pp})"
            fix = "Leave tensor_parallel_size out and Gantry sets it from gpus_per_replica."
            raise invalid_spec(field, f"{product} must equal gpus_per_replica ({gpus_per_replica}). {fix}")
    return dict(value)


def validate_preflight(value: Any) -> dict:
    try:
        return validate_block(value)
    except PreflightConfigError as exc:
        raise invalid_spec(exc.field, exc.message) from None


def validate_spec(data: dict, *, engine: str) -> ServingSpec:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if not isinstance(data, dict):
        raise invalid_spec(None, f"The spec must be a mapping of fields ({', '.join(SPEC_FIELDS)}).")
    for key in data:
        if key not in SPEC_FIELDS:
            hint = did_you_mean(key, SPEC_FIELDS)
            raise invalid_spec(as_field(key), f"Unknown field {shown(key)}.{hint} Allowed fields: {', '.join(SPEC_FIELDS)}.")

    suffix = data.get("model_id")
    if not isinstance(suffix, str) or not SUFFIX_RE.fullmatch(suffix):
        got = "it is missing" if suffix is None else f"got {shown(suffix)}"
        quote = " (quote it in YAML)" if suffix is not None and not isinstance(suffix, str) else ""
        raise invalid_spec("model_id", f"model_id must be a name of {SUFFIX_RULE}{quote}; {got}.")

    source = data.get("model_source")
    if not isinstance(source, str) or not source.strip():
        example = "the folder holding the model, e.g. $HOME/common/hf/<model> or $HOME/<folder>"
        raise invalid_spec("model_source", f"model_source is required: {example}; got {shown(source)}.")

    if "num_replicas" in data and "autoscaling" in data:
        raise invalid_spec(
            "autoscaling",
            "num_replicas and autoscaling are exclusive: give num_replicas for a fixed count, or autoscaling "
            "(min_replicas, max_replicas, …) for Serve to scale between them.",
        )
    autoscaling = validate_autoscaling(data.get("autoscaling"))
    num_replicas = autoscaling["min_replicas"] if autoscaling else validate_num_replicas(data.get("num_replicas", 1))
    gpus = validate_gpus(data.get("gpus_per_replica", 1 if engine == "gpu" else 0))
    engine_kwargs = validate_engine_kwargs(data.get("engine_kwargs"), gpus)
    preflight = validate_preflight(data.get("preflight"))
    return ServingSpec(suffix, source, num_replicas, gpus, engine_kwargs, preflight, autoscaling)


def make_model_id(username: str, created_at: datetime, suffix: str) -> str:
    if created_at.tzinfo is None or created_at.utcoffset() is None:
        # The minute in the id must mean the same instant on every server, whatever its local zone.
        raise ValueError("created_at must be timezone-aware")
    return f"{username}-{created_at.astimezone(timezone.utc):%Y%m%d%H%M}-{suffix}"

