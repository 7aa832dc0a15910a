"""Where a spec's model is: `model_source` resolved to a folder the user may serve, and the spec
that results (`ResolvedSpec`, what a revision stores and Serve is given).

`models:/<name>@<alias>` sources are MLflow registry versions, which gates.registry (the registry
adapter, a layer below this one) resolves and downloads. It is imported inside `_from_registry`, on
purpose and only there: gates.registry is the one module that imports mlflow, which takes seconds to
import, and a spec naming a folder (nearly all of them) must not pay for it.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from serving.spec.errors import PATH_ECHO_CHARS, SpecError, clipped, forbidden_path, invalid_spec, shown
from serving.spec.parsing import parse_spec_yaml
from serving.spec.validation import (
    ServingSpec,
    make_model_id,
    refuse_fixed_count,
    validate_autoscaling,
    validate_engine_kwargs,
    validate_gpus,
    validate_num_replicas,
    validate_preflight,
    validate_spec,
)


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
            raise invalid_spec(None, f"a resolved spec needs exactly the keys {', '.join(keys)}; got {found}")
        for key in ("suffix", "model_id", "model_source"):
            if not isinstance(data[key], str) or not data[key]:
                raise invalid_spec(key, f"{key} must be a non-empty string")
        gpus = validate_gpus(data["gpus_per_replica"])
        kwargs = validate_engine_kwargs(data["engine_kwargs"], gpus)
        num_replicas = validate_num_replicas(data["num_replicas"])
        preflight = validate_preflight(data["preflight"])
        autoscaling = validate_autoscaling(data["autoscaling"] or None)
        if autoscaling:
            num_replicas = autoscaling["min_replicas"]
        return cls(data["suffix"], data["model_id"], data["model_source"], num_replicas, gpus, kwargs, preflight, autoscaling)


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
    # Imported here, not at the top: gates.registry imports mlflow (see the module docstring).
    from gates.registry import RegistryError, RegistryUnreachable, registered_copy, resolve_alias

    try:
        found = registered_copy(copy) if copy is not None else resolve_alias(raw)
    except RegistryUnreachable as exc:
        # 503, not 422: nothing is wrong with the spec, and the same request works once MLflow is up.
        raise SpecError(503, "registry_unavailable", exc.reason, "model_source") from None
    except RegistryError as exc:
        raise invalid_spec("model_source", f"model_source {shown(raw, PATH_ECHO_CHARS)}: {exc.reason}") from None
    return str(found.local_path)


def resolve_model_source(raw: str, *, username: str, roots: Roots) -> str:
    if isinstance(raw, str) and raw.startswith(REGISTRY_SCHEME):
        return _from_registry(raw)
    try:
        user_root = roots.user_root(username)
    except ValueError as exc:
        raise forbidden_path(f"{exc}; ask an administrator to rename the account.") from None
    allowed = _allowed_text(roots, user_root)
    quoted = shown(raw, PATH_ECHO_CHARS)

    if not isinstance(raw, str) or not raw.strip():
        raise forbidden_path(f"model_source is empty. {allowed}")
    if "\0" in raw:
        raise forbidden_path(f"model_source contains a NUL byte. {allowed}")
    # Refused before resolution even when it would land inside: a '..' in a spec is nearly always a
    # probe for a way out, and a rule without exceptions is one a user can predict.
    if ".." in raw.split("/"):
        raise forbidden_path(f"model_source may not contain a '..' segment: {quoted}. {allowed}")
    if raw.startswith("~"):
        raise forbidden_path(f"'~' is not expanded in model_source; write $HOME instead. {allowed}")

    base, rest = split_home_macro(raw, roots=roots, user_root=user_root)
    # Only what the user wrote is searched: a configured root may itself contain a '$'.
    variable = _VAR_RE.search(rest)
    path = base + rest
    if variable:
        name = variable.group(0)
        macros_text = "only $HOME, $HOME/common/hf and $HOME/common/datasets, at the start of the path"
        raise forbidden_path(f"model_source uses {shown(name)}, which Gantry does not expand: {macros_text}. {allowed}")
    if not os.path.isabs(path):
        raise forbidden_path(f"model_source {quoted} is a relative path. {allowed}")

    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError) as exc:
        raise forbidden_path(f"model_source {quoted} cannot be resolved ({clipped(str(exc))}). {allowed}") from None
    hf_real = Path(os.path.realpath(roots.hf))
    user_real = Path(os.path.realpath(user_root))
    datasets_real = Path(os.path.realpath(roots.datasets))
    users_real = Path(os.path.realpath(roots.users))
    real_text = clipped(str(real))
    resolves = "" if str(real) == raw else f" (resolves to {real_text})"
    if real.is_relative_to(_registry_root()):
        return _from_registry(raw, real)

    # Path.is_relative_to compares whole segments: /users/alice2 is not under /users/alice.
    if real.is_relative_to(datasets_real):
        where = f"is in the datasets root ({datasets_real}): the datasets root holds data, not models"
        raise forbidden_path(f"model_source {quoted}{resolves} {where}. {allowed}")
    if not (real.is_relative_to(hf_real) or real.is_relative_to(user_real)):
        if real.is_relative_to(users_real):
            raise forbidden_path(f"model_source {quoted}{resolves} belongs to another user's folder. {allowed}")
        raise forbidden_path(f"model_source {quoted}{resolves} is outside the folders you may serve from. {allowed}")

    try:
        info = os.stat(real)
    except (FileNotFoundError, NotADirectoryError):
        raise invalid_spec("model_source", f"model_source {quoted} does not exist: {real_text}.") from None
    except OSError as exc:
        reason = "is a symlink loop" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        raise invalid_spec("model_source", f"model_source {quoted} {reason}: {real_text}.") from None
    if not stat.S_ISDIR(info.st_mode):
        hint = "give the folder that holds config.json and the weights"
        raise invalid_spec("model_source", f"model_source {quoted} is a file ({real_text}); {hint}.")
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
