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


def bulk_models(owner, count: int, *, start: int = 0, at=None, states: tuple[str, ...] = ("QUEUED",)) -> list[ServeModel]:
    """`count` models of `owner` (`m<start>`, `m<start+1>`, …) in one INSERT, for lists of thousands.

    Each is a second older than the one before, unless `at` gives them all the same creation instant;
    their states cycle through `states`. No events, no revisions: add what a test needs."""
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    rows = []
    for i in range(start, start + count):
        key = f"{owner.username}-m{i}"
        resolved = {"suffix": f"m{i}", "model_id": key, "model_source": "/hf/m", "num_replicas": 1, "gpus_per_replica": 0, "engine_kwargs": {}}
        created_at = at or now - timedelta(seconds=i)
        rows.append(ServeModel(model_key=key, model_id=key, owner=owner, suffix=f"m{i}", spec_yaml="model_id: m\n", resolved_spec=resolved, state=states[i % len(states)], created_at=created_at))
    return ServeModel.objects.bulk_create(rows, batch_size=500)
