"""Specs and models for the serving tests, made the way users make them."""
from __future__ import annotations

from serving import deployments
from serving.models import ServeModel


def spec(suffix: str = "demo", source: str = "$HOME/common/hf/tiny-llama", **fields) -> str:
    lines = [f"model_id: {suffix}", f"model_source: {source}"]
    lines += [f"{key}: {value}" for key, value in fields.items()]
    return "\n".join(lines) + "\n"


def create_model(user, suffix: str = "demo", **fields) -> ServeModel:
    model, _ = deployments.submit_spec(user, spec(suffix, **fields))
    return model
