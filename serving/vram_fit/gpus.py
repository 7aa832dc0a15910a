"""GPUs to ask "will it fit on…" about without one: each known GPU's total memory as the software sees it
(what vLLM multiplies by gpu_memory_utilization), from public logs cited in gpu_catalog.json, and the
`NAME:TOTAL_GiB[:FREE_GiB]` form for any other.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from serving.vram_fit.checkpoint import VramEstimateError
from serving.vram_fit.estimation import GIB

CATALOG = Path(__file__).with_name("gpu_catalog.json")


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int
    free_bytes: int | None = None  # None: as good as empty (the what-if of a GPU nobody else uses)
    source: str = ""  # where the total comes from: a URL, or "given"

    @property
    def free(self) -> int:
        return self.total_bytes if self.free_bytes is None else self.free_bytes


@cache
def _entries() -> tuple[dict, ...]:
    return tuple(json.loads(CATALOG.read_text(encoding="utf-8"))["gpus"])


@cache
def known_gpus() -> tuple[Gpu, ...]:
    return tuple(Gpu(e["name"], int(e["total_bytes"]), None, e["source"]) for e in _entries())


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


@cache
def _by_key() -> dict[str, Gpu]:
    found = {}
    for entry, gpu in zip(_entries(), known_gpus()):
        for alias in [entry["name"], *entry.get("aliases", [])]:
            found.setdefault(_key(alias), gpu)
    return found


def find_gpu(name: str) -> Gpu | None:
    return _by_key().get(_key(name))


def parse_gpu(text: str) -> Gpu:
    """A known GPU's name (H100-80GB, L4, …), or NAME:TOTAL_GiB[:FREE_GiB] for any other."""
    name, _, sizes = text.strip().partition(":")
    if not sizes:
        gpu = find_gpu(name)
        if gpu is None:
            known = ", ".join(g.name for g in known_gpus())
            raise VramEstimateError(f"{name!r} is not a GPU the check knows ({known}); give its size as NAME:TOTAL_GiB[:FREE_GiB].")
        return gpu
    parts = sizes.split(":")
    try:
        figures = [float(p) for p in parts]
    except ValueError:
        raise VramEstimateError(f"{text!r}: the sizes after the name are GiB figures, e.g. A6000:47.5 or A6000:47.5:40.") from None
    if len(figures) > 2 or any(f <= 0 for f in figures) or (len(figures) == 2 and figures[1] > figures[0]):
        raise VramEstimateError(f"{text!r}: give NAME:TOTAL_GiB or NAME:TOTAL_GiB:FREE_GiB, free no more than total.")
    free = int(figures[1] * GIB) if len(figures) == 2 else None
    known = find_gpu(name)
    return Gpu(known.name if known else name, int(figures[0] * GIB), free, "given")
