"""A serving spec: parse the YAML (parsing), validate it (validation), resolve `model_source` to a
folder the user may serve (paths). Today's names, re-exported for the modules that import them from
here; new code imports the module that holds the name."""
from serving.spec.errors import ECHO_CHARS, PATH_ECHO_CHARS, SpecError, shown
from serving.spec.parsing import (
    ALIASES_REFUSED,
    MAX_SPEC_CHARS,
    SPEC_FIELDS,
    YamlRefused,
    load_yaml,
    parse_spec_yaml,
    yaml_error_place,
    yaml_error_problem,
)
from serving.spec.paths import (
    REGISTRY_SCHEME,
    NoUserRoot,
    ResolvedSpec,
    Roots,
    load_spec,
    resolve_model_source,
    resolve_spec,
    split_home_macro,
)
from serving.spec.validation import (
    AUTOSCALING_OPTIONS,
    ENGINE_KWARGS_ALLOWED,
    ENGINES,
    MAX_GPUS_PER_REPLICA,
    MAX_REPLICAS,
    SUFFIX_RE,
    SUFFIX_RULE,
    AutoscalingOption,
    EngineOption,
    ServingSpec,
    make_model_id,
    refuse_fixed_count,
    validate_autoscaling,
    validate_num_replicas,
    validate_spec,
)

__all__ = [
    "ECHO_CHARS", "PATH_ECHO_CHARS", "SpecError", "shown", "ALIASES_REFUSED", "MAX_SPEC_CHARS",
    "SPEC_FIELDS", "YamlRefused", "load_yaml", "parse_spec_yaml", "yaml_error_place",
    "yaml_error_problem", "REGISTRY_SCHEME", "NoUserRoot", "ResolvedSpec", "Roots", "load_spec",
    "resolve_model_source", "resolve_spec", "split_home_macro", "AUTOSCALING_OPTIONS",
    "ENGINE_KWARGS_ALLOWED", "ENGINES", "MAX_GPUS_PER_REPLICA", "MAX_REPLICAS", "SUFFIX_RE",
    "SUFFIX_RULE", "AutoscalingOption", "EngineOption", "ServingSpec", "make_model_id",
    "refuse_fixed_count", "validate_autoscaling", "validate_num_replicas", "validate_spec",
]
