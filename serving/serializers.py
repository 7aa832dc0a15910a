"""A model, its events and its revisions as the API shows them (shared/DESIGN.md, "API details")."""
from __future__ import annotations

import yaml
from django.conf import settings

from serving.models import ServeEvent, ServeModel, ServeRevision


def openai_base_url() -> str:
    return f"http://{settings.GANTRY_SERVE_HOST}:{settings.GANTRY_SERVE_PORT}/v1"


def model_json(model: ServeModel) -> dict:
    return {
        "model_key": model.model_key,
        "model_id": model.model_id,
        "suffix": model.suffix,
        "state": model.state,
        "generation": model.generation,
        "num_replicas": model.num_replicas,
        "gpus_per_replica": model.gpus_per_replica,
        "owner": model.owner.username,
        "created_at": model.created_at.isoformat(),
        "updated_at": model.updated_at.isoformat(),
        "error_summary": model.error_summary,
    }


def event_json(event: ServeEvent) -> dict:
    return {
        "id": event.pk,
        "at": event.created_at.isoformat(),
        "kind": event.kind,
        "message": event.message,
        "from_state": event.from_state or None,
        "to_state": event.to_state or None,
        "generation": event.generation,
        "actor": event.actor_name or None,
    }


def revision_json(revision: ServeRevision) -> dict:
    return {
        "number": revision.number,
        "generation": revision.generation,
        "reason": revision.reason,
        "applied_at": revision.applied_at.isoformat(),
        "config_hash": revision.config_hash,
        "num_replicas": revision.resolved_spec["num_replicas"],
        "gpus_per_replica": revision.resolved_spec["gpus_per_replica"],
    }


def resolved_spec_yaml(model: ServeModel) -> str:
    return yaml.safe_dump(model.resolved_spec, sort_keys=False)
