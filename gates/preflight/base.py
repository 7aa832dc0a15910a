"""What every preflight guard returns, and what it is given.

A guard is a function `check(context) -> GuardResult`: ok / warn / fail, with its evidence (what was
declared beside what is in effect) and a remedy a person can act on. Guards read files and the
facts in the context; they never talk to Ray, Django's database or pynvml themselves, so each one is
tested on real files a test makes, and the same guards run in the worker, the web page and the CLI.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

OK, WARN, FAIL = "ok", "warn", "fail"
STATUSES = (OK, WARN, FAIL)
_RANK = {OK: 0, WARN: 1, FAIL: 2}


def worst(statuses) -> str:
    return max(statuses, key=_RANK.__getitem__, default=OK)


@dataclass(frozen=True)
class Evidence:
    """One thing a guard compared: `declared` (the card, the spec) beside `effective` (the runtime,
    the store, the file). `item` names it: a card key, a secret's name, `prompts/a.txt:3`."""

    item: str
    declared: str
    effective: str
    status: str = OK
    note: str = ""

    def as_dict(self) -> dict:
        return {"item": self.item, "declared": self.declared, "effective": self.effective, "status": self.status, "note": self.note}

    @classmethod
    def from_dict(cls, data: dict) -> "Evidence":
        return cls(data["item"], data.get("declared", ""), data.get("effective", ""), data.get("status", OK), data.get("note", ""))


@dataclass(frozen=True)
class GuardResult:
    guard: str  # "versions" | "secrets" | "cuda" | "prompts"
    title: str  # the line's label, e.g. "checkpoint ↔ runtime"
    status: str
    summary: str  # one sentence: what was found
    evidence: tuple[Evidence, ...] = ()
    remedy: str = ""  # what to do about a warn or fail; "" when ok
    # A person may deploy past this fail with a recorded reason (version skew only: a missing
    # secret or an unresolved prompt variable breaks the model whoever signs for it).
    forceable: bool = False
    # Machine-readable extras, e.g. {"engine": "cpu"} when the CUDA probe falls back to the CPU engine.
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    def as_dict(self) -> dict:
        return {
            "guard": self.guard,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "evidence": [e.as_dict() for e in self.evidence],
            "remedy": self.remedy,
            "forceable": self.forceable,
            "data": dict(self.data),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "GuardResult":
        return cls(
            data["guard"],
            data.get("title", data["guard"]),
            data["status"],
            data.get("summary", ""),
            tuple(Evidence.from_dict(e) for e in data.get("evidence", ())),
            data.get("remedy", ""),
            bool(data.get("forceable", False)),
            dict(data.get("data", {})),
        )


@dataclass(frozen=True)
class NodeRuntime:
    """What one Ray node (or this machine, for the CLI) has installed, as gates/preflight/runtime.py
    reads it. Versions are strings as the packages report them; "" when not installed."""

    node_id: str
    packages: dict  # distribution name (lower case) -> version: torch, transformers, tokenizers, vllm, ray, ...
    torch_cuda: str = ""  # the CUDA torch was built with (torch.version.cuda); "" for a CPU build
    driver_version: str = ""  # NVIDIA driver, from NVML; "" when the node has no usable NVIDIA GPU
    driver_cuda: str = ""  # the newest CUDA the driver supports (NVML), e.g. "12.4"
    gpus: int = 0  # GPUs NVML sees
    nvml_error: str = ""  # why NVML gave no reading, when it did not
    error: str = ""  # why the node could not be read at all (it did not answer): nothing above is known

    def as_dict(self) -> dict:
        return {
            "node_id": self.node_id,
            "packages": dict(self.packages),
            "torch_cuda": self.torch_cuda,
            "driver_version": self.driver_version,
            "driver_cuda": self.driver_cuda,
            "gpus": self.gpus,
            "nvml_error": self.nvml_error,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "NodeRuntime":
        return cls(
            str(data.get("node_id", "")),
            dict(data.get("packages", {})),
            str(data.get("torch_cuda", "") or ""),
            str(data.get("driver_version", "") or ""),
            str(data.get("driver_cuda", "") or ""),
            int(data.get("gpus", 0) or 0),
            str(data.get("nvml_error", "") or ""),
            str(data.get("error", "") or ""),
        )


@dataclass(frozen=True)
class Runtime:
    """The runtime that will serve the model: every node of the Ray cluster, or this machine.

    `source` is "cluster" (asked on the cluster's nodes) or "local" (this process's machine, when no
    cluster reading exists: the CLI without a cluster); `read_at` is an ISO time, for the report.
    """

    source: str
    nodes: tuple[NodeRuntime, ...]
    read_at: str = ""
    note: str = ""  # e.g. why the cluster was not asked

    def as_dict(self) -> dict:
        return {"source": self.source, "nodes": [n.as_dict() for n in self.nodes], "read_at": self.read_at, "note": self.note}

    @classmethod
    def from_dict(cls, data: dict) -> "Runtime":
        return cls(data.get("source", "local"), tuple(NodeRuntime.from_dict(n) for n in data.get("nodes", ())), data.get("read_at", ""), data.get("note", ""))

    def described(self) -> str:
        return "the Ray cluster's workers" if self.source == "cluster" else "this machine's runtime (no cluster reading)"


@dataclass(frozen=True)
class PreflightConfig:
    """The spec's `preflight:` block over the installation's defaults (gates/preflight/config.py)."""

    ignore_versions: tuple[str, ...] = ()  # semver levels ("major", "minor", "patch") and/or card keys
    secrets: tuple[str, ...] = ()
    secret_timeout: float = 90.0
    prompt_files: tuple[str, ...] = ()  # paths inside the model folder
    cuda_probe_mode: str = "fallback"  # fallback | warn | fail

    def as_dict(self) -> dict:
        return {
            "ignore_versions": list(self.ignore_versions),
            "secrets": list(self.secrets),
            "secret_timeout": self.secret_timeout,
            "prompt_files": list(self.prompt_files),
            "cuda_probe": {"mode": self.cuda_probe_mode},
        }


class SecretNames:
    """Which secret names exist for the deploying user, asked again each time (a secret being
    provisioned appears while the guard waits). `names()` returns the set of names; never values."""

    def __init__(self, names: Callable[[], set[str]], where: str):
        self.names = names
        self.where = where  # how the report names the store: "alice's secrets in Gantry", "the environment"


@dataclass
class PreflightContext:
    folder: Path  # the resolved model folder
    config: PreflightConfig
    runtime: Runtime
    secrets: SecretNames
    engine: str = "cpu"  # the engine the cluster would use: "cpu" or "gpu"
    gpus_per_replica: int = 0
    # How long the secrets guard may wait; 0 checks once (pages, the API). The deploy waits secret_timeout.
    wait_for_secrets: bool = True
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
