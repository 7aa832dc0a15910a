"""Which inference engine a model deploys with: the CUDA one or vLLM's CPU build.

The cluster decides, not the host asking: in the production shape the web and worker containers
have no GPU while the Ray nodes do. The reconciler reads the cluster's resources every tick and
records the engine it chose in the cluster snapshot; the web process reads it from there.
"""
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


def engine_for_cluster(total_gpus: float) -> str:
    """GANTRY_ENGINE when it says cpu or gpu; otherwise gpu exactly when the Ray cluster has GPUs."""
    if settings.GANTRY_ENGINE in ("cpu", "gpu"):
        return settings.GANTRY_ENGINE
    return "gpu" if total_gpus > 0 else "cpu"


def current_engine() -> str:
    """For the web process (spec defaults): the setting, else what the reconciler last saw on the
    cluster, else — before the first reconcile ever ran — what this host has."""
    if settings.GANTRY_ENGINE in ("cpu", "gpu"):
        return settings.GANTRY_ENGINE
    from serving.models import ClusterSnapshot

    seen = ClusterSnapshot.current().engine
    if seen in ("cpu", "gpu"):
        return seen
    return "gpu" if _nvidia_gpu_present() else "cpu"


def llm_config_for(model, engine: str | None = None) -> dict:
    """The model's config for Serve. A model the CUDA probe moved to the CPU engine (its
    `engine_override`) keeps that engine whatever the cluster's default is."""
    from gates.preflight.config import effective_config
    from serving.llm_config import build_llm_config

    return build_llm_config(
        model.resolved_spec,
        engine=getattr(model, "engine_override", "") or engine or current_engine(),
        accelerator_type=settings.GANTRY_ACCELERATOR_TYPE,
        hf_home=str(settings.GANTRY_HF_ROOT),
        secret_names=effective_config(model.resolved_spec.get("preflight")).secrets,
    )
