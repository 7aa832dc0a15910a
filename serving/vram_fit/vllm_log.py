"""What vLLM itself logged about its memory while a replica started: the figures the estimate is scored
against after a deploy (NVML's reading of a replica is vLLM's share by design and measures nothing).

The lines, as vLLM 0.32 writes them (format_gib rounds to 2 decimals):
  gpu_model_runner.py  "Model loading took 14.99 GiB memory and 3.561512 seconds"
  gpu_worker.py        "Available KV cache memory: 58.11 GiB"
  kv_cache_utils.py    "GPU KV cache size: 476,016 tokens, Maximum concurrency for 8,192 tokens per request: 58.11x"
(older releases: "Model loading took 14.9889 GiB and 3.65 seconds", the size and concurrency on two
lines; the CPU engine says "CPU KV cache size"). The first of each in the text counts: a replica logs
its start once.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

GIB = 1024**3

_WEIGHTS = re.compile(r"Model loading took ([0-9.]+) GiB")
_AVAILABLE = re.compile(r"Available KV cache memory: ([0-9.]+) GiB")
_TOKENS = re.compile(r"(GPU|CPU|XPU)[^\n]{0,20}KV cache size: ([0-9,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([0-9,]+) tokens per request: ([0-9.]+)x")


@dataclass(frozen=True)
class Logged:
    weights_bytes: int | None = None
    kv_available_bytes: int | None = None
    kv_tokens: int | None = None
    max_model_len: int | None = None
    concurrency: float | None = None
    device: str = ""  # "GPU", or "CPU" for the CPU engine

    @property
    def found(self) -> bool:
        return self.weights_bytes is not None or self.kv_tokens is not None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}


def read_startup(text: str) -> Logged:
    weights, available = _WEIGHTS.search(text), _AVAILABLE.search(text)
    tokens, concurrency = _TOKENS.search(text), _CONCURRENCY.search(text)
    return Logged(
        weights_bytes=round(float(weights.group(1)) * GIB) if weights else None,
        kv_available_bytes=round(float(available.group(1)) * GIB) if available else None,
        kv_tokens=int(tokens.group(2).replace(",", "")) if tokens else None,
        max_model_len=int(concurrency.group(1).replace(",", "")) if concurrency else None,
        concurrency=float(concurrency.group(2)) if concurrency else None,
        device=tokens.group(1) if tokens else "",
    )
