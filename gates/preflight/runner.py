"""Runs the guards in order and never lets one guard's bug hide the others' findings."""
from __future__ import annotations

import importlib
import logging

from gates.preflight.base import FAIL, GuardResult, PreflightContext, worst

log = logging.getLogger(__name__)

# Secrets last: it is the one guard that may wait (for a secret being provisioned), and the
# others' findings should not wait behind it.
GUARDS = ("versions", "cuda", "vram", "prompts", "secrets")
TITLES = {"versions": "checkpoint ↔ runtime", "cuda": "GPU driver ↔ CUDA build", "vram": "VRAM fit", "prompts": "prompt variables", "secrets": "required secrets"}


def run_guards(context: PreflightContext, guards: tuple[str, ...] = GUARDS) -> list[GuardResult]:
    results = []
    for name in guards:
        try:
            results.append(importlib.import_module(f"gates.preflight.{name}").check(context))
        except Exception as exc:  # noqa: BLE001 — a broken guard is a failed check, not a crashed run
            log.exception("preflight guard %s raised", name)
            results.append(
                GuardResult(
                    name,
                    TITLES.get(name, name),
                    FAIL,
                    f"The guard itself failed ({type(exc).__name__}: {str(exc)[:300]}).",
                    remedy="This is a bug in Gantry, not in your model: tell the Gantry admins, with this report.",
                )
            )
    return results


def verdict(results: list[GuardResult]) -> str:
    return worst(r.status for r in results)


def engine_from(results: list[GuardResult]) -> str:
    """'cpu' when a guard (the CUDA probe, in fallback mode) asks to deploy on the CPU engine."""
    for result in results:
        if result.data.get("engine") == "cpu":
            return "cpu"
    return ""
