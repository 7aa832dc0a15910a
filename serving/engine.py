"""Which inference engine this installation deploys with: the CUDA one or vLLM's CPU build."""
from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache

from django.conf import settings


@lru_cache(maxsize=1)
def _nvidia_gpu_present() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def current_engine() -> str:
    """GANTRY_ENGINE when it says cpu or gpu; otherwise what this host has (compose sets it)."""
    if settings.GANTRY_ENGINE in ("cpu", "gpu"):
        return settings.GANTRY_ENGINE
    return "gpu" if _nvidia_gpu_present() else "cpu"


def llm_config_for(model) -> dict:
    from serving.llm_config import build_llm_config

    return build_llm_config(
        model.resolved_spec,
        engine=current_engine(),
        accelerator_type=settings.GANTRY_ACCELERATOR_TYPE,
        hf_home=str(settings.GANTRY_HF_ROOT),
    )
