"""The local copies of registry versions under GANTRY_REGISTRY_DIR, one folder per <name>/<version>,
each with a marker saying which version it is. What a serving spec's model_source points at.

Apart from gates/registry.py because a copy is read back without MLflow (re-applying a deployed
version must not depend on MLflow being up, and a page view makes no MLflow call) and because its
layout on disk changes for its own reasons; gates/registry.py only supplies the bytes.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from django.conf import settings

from gates.registry_names import RegistryError, refuse_dev_in_prod

# Written into each local copy of a version: what it is, read back without asking MLflow.
COPY_MARKER = ".gantry-registry.json"


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    semver: str
    env: str
    run_id: str
    local_path: Path


def resolved(marker: dict, folder: Path) -> ResolvedModel:
    return ResolvedModel(marker["name"], marker["version"], marker["semver"], marker["env"], marker["run_id"], folder)


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / COPY_MARKER).read_text())
    except (OSError, ValueError):
        return None


def local_copy(marker: dict, download: Callable[[Path], Path]) -> Path:
    """The copy of the version `marker` names, made once: `download(dest)` fetches the version's
    model folder under `dest` and returns where it put it."""
    final = Path(settings.GANTRY_REGISTRY_DIR) / marker["name"] / marker["version"]
    if read_marker(final) == marker:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded beside its final place and renamed into it, so a reader sees a whole copy or none;
    # a copy of another run under the same number (the registry was reset) is replaced.
    work = Path(tempfile.mkdtemp(prefix=f".{marker['version']}.", dir=final.parent))
    try:
        got = download(work / "download")
        if not (got / "config.json").is_file():
            holds = ", ".join(sorted(p.name for p in got.iterdir())) if got.is_dir() else "a single file"
            raise RegistryError("resolve", f"Version {marker['version']} of {marker['name']} is not a model folder: no config.json in {holds}.")
        (got / COPY_MARKER).write_text(json.dumps(marker, indent=2))
        if final.exists():
            if read_marker(final) == marker:
                return final  # another process finished the same copy first
            final.rename(work / "replaced")
        got.rename(final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def registered_copy(folder: Path) -> ResolvedModel:
    """A folder under GANTRY_REGISTRY_DIR named by a stored spec, known from its marker alone — no
    MLflow call, so re-applying a deployed version does not depend on MLflow being up."""
    marker = read_marker(Path(folder))
    if not marker or Path(folder).name != str(marker.get("version")) or Path(folder).parent.name != marker.get("name"):
        raise RegistryError("resolve", f"{folder} is not a copy Gantry made of a registry version; name the model as models:/<name>@<alias>.")
    refuse_dev_in_prod("resolve", marker.get("semver", ""), f"models:/{marker['name']}/{marker['version']}")
    return resolved(marker, Path(folder))
