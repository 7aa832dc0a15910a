"""The `preflight:` block of a serving spec (or a `preflight.yaml` beside a model folder).

Validated like the rest of the spec — unknown keys refused, each value checked, the error naming
its field — and stored as the user wrote it (normalized); the installation's defaults from
settings fill what it leaves out when a preflight runs, so changing a default applies to every
model's next run. Pure Python: serving/spec/validation.py calls it, and it imports nothing of serving.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from dashboard.text import did_you_mean
from gates.preflight.base import PreflightConfig

BLOCK_KEYS = ("ignore_versions", "secrets", "secret_timeout", "prompt_files", "cuda_probe", "vram_fit")
SEMVER_LEVELS = ("major", "minor", "patch")
CUDA_PROBE_MODES = ("fallback", "warn", "fail")
VRAM_FIT_MODES = ("warn", "fail", "off")
SECRET_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
SECRET_NAME_RULE = "upper-case letters, digits and '_', not starting with a digit, at most 128 characters (an environment variable's name)"
CARD_KEY_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_SECRET_TIMEOUT_S = 3600
MAX_ITEMS = 64


class PreflightConfigError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:38]}…{text[-38:]}"


def _strings(key: str, value: Any, check) -> list[str]:
    field = f"preflight.{key}"
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]  # `secrets: OPENAI_API_KEY` means the one name
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise PreflightConfigError(field, f"{field} must be a list of at most {MAX_ITEMS} names; got {_short(value)}.")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise PreflightConfigError(field, f"{field} holds {_short(item)}, which is not a name; quote it in YAML.")
        check(item)
        if item not in out:
            out.append(item)
    return out


def _check_ignore(item: str) -> None:
    if item.lower() in SEMVER_LEVELS:
        return
    if not CARD_KEY_RE.fullmatch(item):
        levels = ", ".join(SEMVER_LEVELS)
        raise PreflightConfigError("preflight.ignore_versions", f"preflight.ignore_versions takes semver levels ({levels}) or model-card keys such as cuda; got {_short(item)}.")


# Names the serving runtime itself reads: a secret under one of them would change how Ray, vLLM or
# Python start rather than hand a value to the model's code.
RESERVED_PREFIXES = ("RAY_", "VLLM_", "CUDA_", "NVIDIA_", "HF_", "TRANSFORMERS_", "PYTHON", "LD_", "OMP_")
RESERVED_NAMES = ("PATH", "HOME", "USER", "SHELL", "TMPDIR")
# Tokens a model's own code may read (gated Hugging Face repos): values for the model, not settings.
ALLOWED_DESPITE_PREFIX = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def _check_secret(item: str) -> None:
    if not SECRET_NAME_RE.fullmatch(item):
        raise PreflightConfigError("preflight.secrets", f"preflight.secrets: {_short(item)} is not a secret name: use {SECRET_NAME_RULE}.")
    if item in RESERVED_NAMES or (item.startswith(RESERVED_PREFIXES) and item not in ALLOWED_DESPITE_PREFIX):
        why = "the serving runtime reads it itself (Ray, vLLM, CUDA, Hugging Face or Python settings)"
        raise PreflightConfigError("preflight.secrets", f"preflight.secrets: {item} cannot be a secret: {why}. Choose another name.")


def _check_prompt_file(item: str) -> None:
    field = "preflight.prompt_files"
    if not item.strip() or "\0" in item or item.startswith(("/", "~")) or ".." in item.replace("\\", "/").split("/"):
        raise PreflightConfigError(field, f"{field}: {_short(item)} must be a relative path inside the model folder, without '..'.")


def _seconds(value: Any) -> float:
    field = "preflight.secret_timeout"
    text = value
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*s?\s*", value):
        text = float(value.strip().rstrip("s"))  # the seed writes `secret_timeout = 90s`
    if isinstance(text, bool) or not isinstance(text, (int, float)) or not math.isfinite(text) or not 0 <= text <= MAX_SECRET_TIMEOUT_S:
        raise PreflightConfigError(field, f"{field} must be a number of seconds from 0 to {MAX_SECRET_TIMEOUT_S} (e.g. 90 or \"90s\"); got {_short(value)}.")
    return float(text)


def validate_block(block: Any) -> dict:
    """The block as stored: only the keys the user wrote, each normalized. Raises PreflightConfigError."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise PreflightConfigError("preflight", f"preflight must be a mapping with any of {', '.join(BLOCK_KEYS)}; got {_short(block)}.")
    for key in block:
        if key not in BLOCK_KEYS:
            hint = did_you_mean(key, BLOCK_KEYS)
            raise PreflightConfigError(f"preflight.{str(key)[:64]}", f"Unknown preflight setting {_short(key)}.{hint} Allowed: {', '.join(BLOCK_KEYS)}.")
    out: dict = {}
    if "ignore_versions" in block:
        out["ignore_versions"] = [i.lower() if i.lower() in SEMVER_LEVELS else i for i in _strings("ignore_versions", block["ignore_versions"], _check_ignore)]
    if "secrets" in block:
        out["secrets"] = _strings("secrets", block["secrets"], _check_secret)
    if "secret_timeout" in block:
        out["secret_timeout"] = _seconds(block["secret_timeout"])
    if "prompt_files" in block:
        out["prompt_files"] = _strings("prompt_files", block["prompt_files"], _check_prompt_file)
    if "cuda_probe" in block:
        probe = block["cuda_probe"]
        if isinstance(probe, str):
            probe = {"mode": probe}
        if not isinstance(probe, dict) or set(probe) - {"mode"} or probe.get("mode") not in CUDA_PROBE_MODES:
            raise PreflightConfigError("preflight.cuda_probe", f"preflight.cuda_probe must be {{mode: {' | '.join(CUDA_PROBE_MODES)}}}; got {_short(block['cuda_probe'])}.")
        out["cuda_probe"] = {"mode": probe["mode"]}
    if "vram_fit" in block:
        if block["vram_fit"] not in VRAM_FIT_MODES:
            raise PreflightConfigError("preflight.vram_fit", f"preflight.vram_fit must be one of {' | '.join(VRAM_FIT_MODES)}; got {_short(block['vram_fit'])}.")
        out["vram_fit"] = block["vram_fit"]
    return out


def installation_defaults() -> dict:
    from django.conf import settings

    return {
        "ignore_versions": list(settings.GANTRY_PREFLIGHT_IGNORE_VERSIONS),
        "secrets": list(settings.GANTRY_PREFLIGHT_SECRETS),
        "secret_timeout": float(settings.GANTRY_PREFLIGHT_SECRET_TIMEOUT_S),
        "prompt_files": [],
        "cuda_probe": {"mode": settings.GANTRY_PREFLIGHT_CUDA_PROBE_MODE},
        "vram_fit": settings.GANTRY_PREFLIGHT_VRAM_FIT,
    }


@dataclass(frozen=True)
class EffectiveConfig(PreflightConfig):
    """PreflightConfig with the VRAM fit guard's mode (warn | fail | off). Kept here because the
    base class is outside this change; folding the field into PreflightConfig makes this go away."""

    vram_fit: str = "warn"

    def as_dict(self) -> dict:
        return {**super().as_dict(), "vram_fit": self.vram_fit}


def effective_config(block: dict | None, defaults: dict | None = None) -> EffectiveConfig:
    """The stored block over the installation's defaults: a key the spec gives replaces the default."""
    merged = {**(installation_defaults() if defaults is None else defaults), **(block or {})}
    return EffectiveConfig(
        ignore_versions=tuple(merged.get("ignore_versions", ())),
        secrets=tuple(merged.get("secrets", ())),
        secret_timeout=float(merged.get("secret_timeout", 90.0)),
        prompt_files=tuple(merged.get("prompt_files", ())),
        cuda_probe_mode=(merged.get("cuda_probe") or {}).get("mode", "fallback"),
        vram_fit=merged.get("vram_fit", "warn"),
    )
