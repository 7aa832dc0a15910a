"""A serving spec: parse the YAML, validate it, resolve `model_source` to a folder the user may serve.

Pure Python (no models, no ray) so the API, the form and the reconciler share one set of rules.
"""
from __future__ import annotations

import dataclasses
import errno
import math
import os
import re
import reprlib
import stat
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, NamedTuple

import yaml

from dashboard.text import did_you_mean
from gates.preflight.config import PreflightConfigError, validate_block


class SpecError(Exception):
    """A spec the user must fix; the API renders it as {"error": {status, code, message, field}}."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def _invalid(field: str | None, message: str) -> SpecError:
    return SpecError(422, "invalid_spec", message, field)


def _forbidden(message: str) -> SpecError:
    return SpecError(403, "forbidden_path", message, "model_source")


# Messages quote what the user wrote so they can find it, but never whole: a value pasted (or built
# from YAML aliases) to be huge would come back as a response as big as the spec, or far bigger.
ECHO_CHARS = 80
PATH_ECHO_CHARS = 240  # a real path can be long and its middle is what tells folders apart


def shown(value: Any, limit: int = ECHO_CHARS) -> str:
    """repr(value), cut in the middle ('abc...xyz') and bounded in depth and length for containers."""
    echo = reprlib.Repr()
    echo.maxstring = echo.maxother = echo.maxlong = limit
    echo.maxlevel = 3
    return echo.repr(value)


def _clipped(text: str, limit: int = PATH_ECHO_CHARS) -> str:
    """Text that carries a user's value (a resolved path, a parser's complaint), kept to `limit`."""
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-(limit // 2):]}"


def _as_field(key: Any) -> str:
    # `field` names where the problem is; a key no field could have is named by its shortened echo.
    text = str(key)
    return text if len(text) <= ECHO_CHARS else shown(text)


SPEC_FIELDS = ("model_id", "model_source", "num_replicas", "autoscaling", "gpus_per_replica", "engine_kwargs", "preflight")
SUFFIX_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}")
SUFFIX_RULE = "1 to 64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_REPLICAS = 64
MAX_GPUS_PER_REPLICA = 8
# A spec is a dozen lines; a cap keeps a pasted file or an alias bomb from reaching the parser.
MAX_SPEC_CHARS = 64 * 1024
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
        raise _invalid("autoscaling", f"autoscaling must be a mapping of {names}; got {shown(value)}.")
    for key in value:
        if key not in AUTOSCALING_OPTIONS:
            hint = did_you_mean(key, AUTOSCALING_OPTIONS)
            raise _invalid(f"autoscaling.{_as_field(key)}", f"{shown(key)} is not an autoscaling option.{hint} Allowed: {names}.")
    if "max_replicas" not in value:
        raise _invalid("autoscaling.max_replicas", "autoscaling needs max_replicas: the most replicas Serve may start.")
    filled = {}
    for key, option in AUTOSCALING_OPTIONS.items():
        option_value = value.get(key, option.default)
        if not option.check(option_value):
            raise _invalid(f"autoscaling.{key}", f"autoscaling.{key} must be {option.rule}; got {shown(option_value)}.")
        filled[key] = option_value
    if filled["min_replicas"] > filled["max_replicas"]:
        bounds = f"min_replicas ({filled['min_replicas']}) is above max_replicas ({filled['max_replicas']})"
        raise _invalid("autoscaling.min_replicas", f"autoscaling.{bounds}.")
    return filled


# --- roots and specs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Roots:
    hf: Path
    datasets: Path
    users: Path

    def user_root(self, username: str) -> Path:
        # Django allows "." in usernames, so ".." is a legal name that would point above the users root.
        if not username or username in (".", "..") or "/" in username or "\0" in username:
            raise ValueError(f"{username!r} cannot be used as a folder name under {self.users}")
        return Path(self.users) / username

    @classmethod
    def from_settings(cls) -> "Roots":
        from django.conf import settings

        paths = (settings.GANTRY_HF_ROOT, settings.GANTRY_DATASETS_ROOT, settings.GANTRY_USERS_ROOT)
        return cls(*(Path(p) for p in paths))


@dataclass(frozen=True)
class ServingSpec:
    suffix: str
    model_source: str
    num_replicas: int
    gpus_per_replica: int
    engine_kwargs: dict
    preflight: dict = dataclasses.field(default_factory=dict)
    autoscaling: dict = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class ResolvedSpec:
    suffix: str
    model_id: str
    model_source: str
    num_replicas: int
    gpus_per_replica: int
    engine_kwargs: dict
    # The spec's `preflight:` block as written (gates/preflight/config.py); {} when it has none.
    preflight: dict = dataclasses.field(default_factory=dict)
    # The `autoscaling:` block with its defaults filled in; {} for a fixed replica count. An
    # autoscaled spec keeps num_replicas = min_replicas: what is placed (and GPU-checked) first.
    autoscaling: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        data = dataclasses.asdict(self)  # copies engine_kwargs, so callers cannot edit a frozen spec
        for block in ("preflight", "autoscaling"):
            if not data[block]:
                del data[block]  # specs without the block read (and hash) as they always did
        return {"model_id": data.pop("model_id"), **data}  # public id first: it is what a reader looks for

    def to_yaml(self) -> str:
        data = self.as_dict()
        if self.autoscaling:
            del data["num_replicas"]  # a spec names one or the other; this one came with autoscaling
        return yaml.safe_dump(data, sort_keys=False)

    def with_replicas(self, n: int) -> "ResolvedSpec":
        if self.autoscaling:
            raise refuse_fixed_count(self.autoscaling)
        return dataclasses.replace(self, num_replicas=validate_num_replicas(n))

    @classmethod
    def from_dict(cls, data: dict) -> "ResolvedSpec":
        # Stored revisions come back through here on rollback: hold them to today's rules, except the
        # path, which was resolved when it was stored and is checked again by whoever deploys it.
        keys = [f.name for f in dataclasses.fields(cls)]
        if isinstance(data, dict):
            data = {"preflight": {}, "autoscaling": {}, **data}
        if not isinstance(data, dict) or set(data) != set(keys):
            found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
            raise _invalid(None, f"a resolved spec needs exactly the keys {', '.join(keys)}; got {found}")
        for key in ("suffix", "model_id", "model_source"):
            if not isinstance(data[key], str) or not data[key]:
                raise _invalid(key, f"{key} must be a non-empty string")
        gpus = _validate_gpus(data["gpus_per_replica"])
        kwargs = _validate_engine_kwargs(data["engine_kwargs"], gpus)
        num_replicas = validate_num_replicas(data["num_replicas"])
        preflight = _validate_preflight(data["preflight"])
        autoscaling = validate_autoscaling(data["autoscaling"] or None)
        if autoscaling:
            num_replicas = autoscaling["min_replicas"]
        return cls(data["suffix"], data["model_id"], data["model_source"], num_replicas, gpus, kwargs, preflight, autoscaling)


# --- parse and validate -------------------------------------------------------------------------
ALIASES_REFUSED = (
    "YAML anchors and aliases ('&name', '*name', '<<: *name') are not accepted: a few of them can expand "
    "a few hundred bytes into gigabytes. Write each value out in full"
)


class YamlRefused(yaml.MarkedYAMLError):
    """Valid YAML that Gantry does not take: an anchor or alias, a key written twice."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases, and a key written twice (plain YAML: last wins)."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # Refused as the parser meets them, before any alias is resolved, let alone expanded.
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise YamlRefused(None, None, ALIASES_REFUSED, event.start_mark)
        return super().compose_node(parent, index)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except ValueError:
            # PyYAML lets Python's own checks escape: an int of over 4,300 digits, a date like 2024-13-45.
            kind = {"int": "a whole number", "timestamp": "a date"}.get(node.tag.rsplit(":", 1)[-1], "a value")
            problem = f"{shown(node.value)} cannot be read as {kind}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if (key_node.tag, key_node.value) in seen:
                    problem = f"the key {shown(key_node.value)} appears twice"
                    raise YamlRefused(None, None, problem, key_node.start_mark)
                seen.add((key_node.tag, key_node.value))
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML as every spec input is read (the spec, the form's engine options): safe, no anchors or
    aliases, no key twice. Raises yaml.YAMLError (YamlRefused for what is valid YAML but refused)."""
    return yaml.load(text, Loader=_StrictLoader)


def yaml_error_place(exc: yaml.YAMLError) -> str:
    """' at line L, column C' for a parser error that knows where it is, else ''."""
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def yaml_error_problem(exc: yaml.YAMLError) -> str:
    return _clipped(getattr(exc, "problem", None) or str(exc))


def parse_spec_yaml(text: str) -> dict:
    if len(text) > MAX_SPEC_CHARS:
        raise SpecError(400, "bad_yaml", f"The spec is {len(text)} characters; the limit is {MAX_SPEC_CHARS}.")
    try:
        data = load_yaml(text)
    except YamlRefused as exc:
        raise SpecError(400, "bad_yaml", f"The spec is refused{yaml_error_place(exc)}: {yaml_error_problem(exc)}.") from None
    except yaml.YAMLError as exc:
        where, problem = yaml_error_place(exc), yaml_error_problem(exc)
        raise SpecError(400, "bad_yaml", f"The spec is not valid YAML{where}: {problem}.") from None
    except RecursionError:
        raise SpecError(400, "bad_yaml", "The spec is nested too deeply to be a serving spec.") from None
    if data is None:
        raise SpecError(400, "bad_yaml", f"The spec is empty. Write a mapping with {', '.join(SPEC_FIELDS)}.")
    if not isinstance(data, dict):
        fields, kind = ", ".join(SPEC_FIELDS), type(data).__name__
        raise SpecError(400, "bad_yaml", f"The spec must be a mapping of fields ({fields}), not a {kind}.")
    return data


def refuse_fixed_count(autoscaling: dict) -> SpecError:
    bounds = f"{autoscaling['min_replicas']} to {autoscaling['max_replicas']}"
    return _invalid(
        "num_replicas",
        f"This model autoscales from {bounds} replicas: change its autoscaling bounds instead, or submit "
        "its spec with num_replicas and without autoscaling for a fixed count.",
    )


def validate_num_replicas(value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_REPLICAS:
        rule = f"a whole number from 0 to {MAX_REPLICAS} (0 keeps the model but frees its GPUs)"
        raise _invalid("num_replicas", f"num_replicas must be {rule}; got {shown(value)}.")
    return value


def _validate_gpus(value: Any) -> int:
    if not _is_int(value) or not 0 <= value <= MAX_GPUS_PER_REPLICA:
        rule = f"a whole number from 0 to {MAX_GPUS_PER_REPLICA} (0 runs replicas on CPUs)"
        raise _invalid("gpus_per_replica", f"gpus_per_replica must be {rule}; got {shown(value)}.")
    return value


def _validate_engine_kwargs(value: Any, gpus_per_replica: int) -> dict:
    if value is None:  # `engine_kwargs:` with nothing under it
        return {}
    if not isinstance(value, dict):
        raise _invalid("engine_kwargs", f"engine_kwargs must be a mapping of engine options; got {shown(value)}.")
    allowed = ", ".join(ENGINE_KWARGS_ALLOWED)
    for key, option_value in value.items():
        field = f"engine_kwargs.{_as_field(key)}"
        if key == "trust_remote_code":
            why = "it would run code shipped inside the model folder on the serving machines"
            raise _invalid(field, f"trust_remote_code is not allowed: {why}. Use a model vLLM supports without it.")
        option = ENGINE_KWARGS_ALLOWED.get(key) if isinstance(key, str) else None
        if option is None:
            raise _invalid(field, f"{shown(key)} is not an allowed engine option; allowed: {allowed}.")
        if not option.check(option_value):
            raise _invalid(field, f"{field} must be {option.rule}; got {shown(option_value)}.")
    tp = value.get("tensor_parallel_size")
    if tp is not None:
        pp = value.get("pipeline_parallel_size", 1)
        # Each replica gets exactly gpus_per_replica GPUs; a model split over more or fewer would
        # either never be scheduled or leave GPUs reserved and idle.
        field = "engine_kwargs.tensor_parallel_size"
        if gpus_per_replica == 0 and tp != 1:
            raise _invalid(field, f"tensor_parallel_size is {tp} but gpus_per_replica is 0 (CPU replicas): use 1.")
        if gpus_per_replica > 0 and tp * pp != gpus_per_replica:
            product = f"tensor_parallel_size ({tp}) × pipeline_parallel_size ({pp})"
            fix = "Leave tensor_parallel_size out and Gantry sets it from gpus_per_replica."
            raise _invalid(field, f"{product} must equal gpus_per_replica ({gpus_per_replica}). {fix}")
    return dict(value)


def _validate_preflight(value: Any) -> dict:
    try:
        return validate_block(value)
    except PreflightConfigError as exc:
        raise _invalid(exc.field, exc.message) from None


def validate_spec(data: dict, *, engine: str) -> ServingSpec:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
    if not isinstance(data, dict):
        raise _invalid(None, f"The spec must be a mapping of fields ({', '.join(SPEC_FIELDS)}).")
    for key in data:
        if key not in SPEC_FIELDS:
            hint = did_you_mean(key, SPEC_FIELDS)
            raise _invalid(_as_field(key), f"Unknown field {shown(key)}.{hint} Allowed fields: {', '.join(SPEC_FIELDS)}.")

    suffix = data.get("model_id")
    if not isinstance(suffix, str) or not SUFFIX_RE.fullmatch(suffix):
        got = "it is missing" if suffix is None else f"got {shown(suffix)}"
        quote = " (quote it in YAML)" if suffix is not None and not isinstance(suffix, str) else ""
        raise _invalid("model_id", f"model_id must be a name of {SUFFIX_RULE}{quote}; {got}.")

    source = data.get("model_source")
    if not isinstance(source, str) or not source.strip():
        example = "the folder holding the model, e.g. $HOME/common/hf/<model> or $HOME/<folder>"
        raise _invalid("model_source", f"model_source is required: {example}; got {shown(source)}.")

    if "num_replicas" in data and "autoscaling" in data:
        raise _invalid(
            "autoscaling",
            "num_replicas and autoscaling are exclusive: give num_replicas for a fixed count, or autoscaling "
            "(min_replicas, max_replicas, …) for Serve to scale between them.",
        )
    autoscaling = validate_autoscaling(data.get("autoscaling"))
    num_replicas = autoscaling["min_replicas"] if autoscaling else validate_num_replicas(data.get("num_replicas", 1))
    gpus = _validate_gpus(data.get("gpus_per_replica", 1 if engine == "gpu" else 0))
    engine_kwargs = _validate_engine_kwargs(data.get("engine_kwargs"), gpus)
    preflight = _validate_preflight(data.get("preflight"))
    return ServingSpec(suffix, source, num_replicas, gpus, engine_kwargs, preflight, autoscaling)


# --- resolve ------------------------------------------------------------------------------------
def make_model_id(username: str, created_at: datetime, suffix: str) -> str:
    if created_at.tzinfo is None or created_at.utcoffset() is None:
        # The minute in the id must mean the same instant on every server, whatever its local zone.
        raise ValueError("created_at must be timezone-aware")
    return f"{username}-{created_at.astimezone(timezone.utc):%Y%m%d%H%M}-{suffix}"


_VAR_RE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)?")


def _allowed_text(roots: Roots, user_root: Path) -> str:
    return (
        f"model_source must be a folder under the shared HF root ($HOME/common/hf = {roots.hf}) or "
        f"under your own folder ($HOME = {user_root}); write it as $HOME/common/hf/<model>, "
        "$HOME/<folder> or an absolute path into one of those."
    )


class NoUserRoot(ValueError):
    """A path starts with $HOME but no user was given to say whose."""


def split_home_macro(raw: str, *, roots: Roots, user_root: Path | None) -> tuple[str, str]:
    """(the root a leading $HOME macro stands for, the rest as written); ("", raw) without one.
    Raises NoUserRoot for a plain $HOME when `user_root` is None."""
    path = "$HOME" + raw[len("${HOME}"):] if raw.startswith("${HOME}") else raw
    macros = (("$HOME/common/datasets", roots.datasets), ("$HOME/common/hf", roots.hf), ("$HOME", user_root))
    for prefix, root in macros:  # longest first, so $HOME does not swallow the shared roots
        if path == prefix or path.startswith(prefix + "/"):
            if root is None:
                raise NoUserRoot(f"{raw} starts with $HOME: say whose")
            return str(root), path[len(prefix):]
    return "", path


REGISTRY_SCHEME = "models:/"


def _registry_root() -> str:
    from django.conf import settings

    return os.path.realpath(settings.GANTRY_REGISTRY_DIR)


def _from_registry(raw: str, copy: Path | None = None) -> str:
    """models:/<name>@<alias> (or /<version>) → the local copy of that version, which gates.registry
    downloads once under GANTRY_REGISTRY_DIR; a path into that folder (a stored spec, re-applied) →
    checked as a copy Gantry made, without asking MLflow. Gantry wrote these folders, not a user, so
    the users' jail does not apply to them."""
    from gates.registry import RegistryError, RegistryUnreachable, registered_copy, resolve_alias

    try:
        found = registered_copy(copy) if copy is not None else resolve_alias(raw)
    except RegistryUnreachable as exc:
        # 503, not 422: nothing is wrong with the spec, and the same request works once MLflow is up.
        raise SpecError(503, "registry_unavailable", exc.reason, "model_source") from None
    except RegistryError as exc:
        raise _invalid("model_source", f"model_source {shown(raw, PATH_ECHO_CHARS)}: {exc.reason}") from None
    return str(found.local_path)


def resolve_model_source(raw: str, *, username: str, roots: Roots) -> str:
    if isinstance(raw, str) and raw.startswith(REGISTRY_SCHEME):
        return _from_registry(raw)
    try:
        user_root = roots.user_root(username)
    except ValueError as exc:
        raise _forbidden(f"{exc}; ask an administrator to rename the account.") from None
    allowed = _allowed_text(roots, user_root)
    quoted = shown(raw, PATH_ECHO_CHARS)

    if not isinstance(raw, str) or not raw.strip():
        raise _forbidden(f"model_source is empty. {allowed}")
    if "\0" in raw:
        raise _forbidden(f"model_source contains a NUL byte. {allowed}")
    # Refused before resolution even when it would land inside: a '..' in a spec is nearly always a
    # probe for a way out, and a rule without exceptions is one a user can predict.
    if ".." in raw.split("/"):
        raise _forbidden(f"model_source may not contain a '..' segment: {quoted}. {allowed}")
    if raw.startswith("~"):
        raise _forbidden(f"'~' is not expanded in model_source; write $HOME instead. {allowed}")

    base, rest = split_home_macro(raw, roots=roots, user_root=user_root)
    # Only what the user wrote is searched: a configured root may itself contain a '$'.
    variable = _VAR_RE.search(rest)
    path = base + rest
    if variable:
        name = variable.group(0)
        macros_text = "only $HOME, $HOME/common/hf and $HOME/common/datasets, at the start of the path"
        raise _forbidden(f"model_source uses {shown(name)}, which Gantry does not expand: {macros_text}. {allowed}")
    if not os.path.isabs(path):
        raise _forbidden(f"model_source {quoted} is a relative path. {allowed}")

    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError) as exc:
        raise _forbidden(f"model_source {quoted} cannot be resolved ({_clipped(str(exc))}). {allowed}") from None
    hf_real = Path(os.path.realpath(roots.hf))
    user_real = Path(os.path.realpath(user_root))
    datasets_real = Path(os.path.realpath(roots.datasets))
    users_real = Path(os.path.realpath(roots.users))
    real_text = _clipped(str(real))
    resolves = "" if str(real) == raw else f" (resolves to {real_text})"
    if real.is_relative_to(_registry_root()):
        return _from_registry(raw, real)

    # Path.is_relative_to compares whole segments: /users/alice2 is not under /users/alice.
    if real.is_relative_to(datasets_real):
        where = f"is in the datasets root ({datasets_real}): the datasets root holds data, not models"
        raise _forbidden(f"model_source {quoted}{resolves} {where}. {allowed}")
    if not (real.is_relative_to(hf_real) or real.is_relative_to(user_real)):
        if real.is_relative_to(users_real):
            raise _forbidden(f"model_source {quoted}{resolves} belongs to another user's folder. {allowed}")
        raise _forbidden(f"model_source {quoted}{resolves} is outside the folders you may serve from. {allowed}")

    try:
        info = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise _invalid("model_source", f"model_source {quoted} does not exist: {real_text}.") from None
    except OSError as exc:
        reason = "is a symlink loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        raise _invalid("model_source", f"model_source {quoted} {reason}: {real_text}.") from None
    if not stat.S_ISDIR(info.st_mode):
        hint = "give the folder that holds config.json and the weights"
        raise _invalid("model_source", f"model_source {quoted} is a file ({real_text}); {hint}.")
    return str(real)


def resolve_spec(spec: ServingSpec, *, username: str, created_at: datetime, roots: Roots) -> ResolvedSpec:
    model_id = make_model_id(username, created_at, spec.suffix)
    source = resolve_model_source(spec.model_source, username=username, roots=roots)
    kwargs = dict(spec.engine_kwargs)
    return ResolvedSpec(
        spec.suffix, model_id, source, spec.num_replicas, spec.gpus_per_replica, kwargs, dict(spec.preflight), dict(spec.autoscaling)
    )


def load_spec(text: str, *, username: str, created_at: datetime, roots: Roots, engine: str) -> ResolvedSpec:
    spec = validate_spec(parse_spec_yaml(text), engine=engine)
    return resolve_spec(spec, username=username, created_at=created_at, roots=roots)
