"""Reading a spec's YAML: a strict loader every spec input goes through, and the spec's outer shape.

Standard library and PyYAML only, beside serving/spec/errors.py (itself standard library only): gates'
hashing (gates/dvc_hash.py) reads dvc.yaml and dvc.lock with this same loader and must not pull in the
spec's validation or path resolution, which reach into gates and Django.
"""
from __future__ import annotations

from typing import Any

import yaml

from serving.spec.errors import SpecError, clipped, shown

SPEC_FIELDS = ("model_id", "model_source", "num_replicas", "autoscaling", "gpus_per_replica", "engine_kwargs", "preflight")
# A spec is a dozen lines; a cap keeps a pasted file or an alias bomb from reaching the parser.
MAX_SPEC_CHARS = 64 * 1024

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
    return clipped(getattr(exc, "problem", None) or str(exc))


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
