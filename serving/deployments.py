"""What users ask of their models: create or update from a spec, scale, delete, roll back.

Each change is one transaction that updates the desired state and logs an event; the reconciler
is enqueued when it commits and does the slow work against Serve.
"""
from __future__ import annotations

import yaml
from django.db import IntegrityError, transaction
from django.utils import timezone

from dashboard.models import AuditEntry
from dashboard.queues import task
from serving.choices import EventKind, State
from serving.engine import current_engine
from serving.models import ServeModel, ServeRevision
from serving.spec import (
    ResolvedSpec,
    Roots,
    SpecError,
    parse_spec_yaml,
    refuse_fixed_count,
    resolve_spec,
    validate_autoscaling,
    validate_num_replicas,
    validate_spec,
)


class ChangeRefused(Exception):
    """The model's current state cannot take this change (409)."""


def _locked(rows):
    """The model's row, locked until the change commits, with its owner read in the same query: the
    event every change logs names the owner. `of=("self",)` locks the model alone, not the user's
    row too (a plain FOR UPDATE over the join would)."""
    return rows.select_related("owner").select_for_update(of=("self",))


def reconcile_soon() -> None:
    # Robust: the change is committed by then, so a broker that is down must not turn it into a 500
    # (Django logs the error); beat's periodic reconcile applies it once the broker is back.
    transaction.on_commit(lambda: task("serving.tasks.reconcile").delay(), robust=True)


def _requeue_or_log(model: ServeModel, kind: str, message: str, actor) -> None:
    # A FAILED or DELETED model comes back to life through QUEUED; a live one just records the change.
    if model.state in (State.FAILED, State.DELETED):
        model.deadline = None
        model.save()  # the user's fields; move_to writes only the state's
        model.move_to(State.QUEUED, kind, message, actor=actor)
    else:
        model.save()
        model.log(kind, message, actor=actor)


def submit_spec(user, text: str) -> tuple[ServeModel, bool]:
    """Create the model, or update it when this user already has one with the same suffix.

    Raises SpecError (400/403/422) for bad input and ChangeRefused (409) for a model being deleted.
    """
    spec = validate_spec(parse_spec_yaml(text), engine=current_engine())
    with transaction.atomic():
        model = _locked(ServeModel.objects.filter(owner=user, suffix=spec.suffix)).first()
        # The public id keeps its creation minute across updates: resolve against the stored one.
        created_at = model.created_at if model else timezone.now()
        resolved = resolve_spec(spec, username=user.username, created_at=created_at, roots=Roots.from_settings())
        if model is None:
            return _create(user, text, resolved, created_at), True
        if model.state == State.DELETING:
            raise ChangeRefused(f"{model.model_id} is being deleted; post the spec again once it is DELETED.")
        model.spec_yaml = text
        model.resolved_spec = resolved.as_dict()
        model.generation += 1
        model.change_reason = "update"
        model.rejected_config_hash = ""
        _requeue_or_log(model, EventKind.UPDATED, f"Spec updated to generation {model.generation}: {_summary(resolved)}.", user)
    reconcile_soon()
    return model, False


def _create(user, text: str, resolved: ResolvedSpec, created_at, note: str = "") -> ServeModel:
    try:
        with transaction.atomic():
            model = ServeModel.objects.create(
                model_key=resolved.model_id,
                model_id=resolved.model_id,
                owner=user,
                suffix=resolved.suffix,
                spec_yaml=text,
                resolved_spec=resolved.as_dict(),
                change_reason="create",
                created_at=created_at,
            )
    except IntegrityError:
        raise ChangeRefused(f"A model with suffix {resolved.suffix!r} was just created by another request; retry to update it.") from None
    model.log(EventKind.CREATED, f"Created: {_summary(resolved)}{note}.", actor=user)
    reconcile_soon()
    return model


def scale(model: ServeModel, num_replicas, actor) -> ServeModel:
    replicas = validate_num_replicas(num_replicas)
    with transaction.atomic():
        model = _locked(ServeModel.objects).get(pk=model.pk)
        if model.state in (State.DELETING, State.DELETED):
            raise ChangeRefused(f"{model.model_id} is {model.state}; it cannot be scaled.")
        if model.resolved_spec.get("autoscaling"):
            raise refuse_fixed_count(model.resolved_spec["autoscaling"])
        before = model.num_replicas
        model.resolved_spec = {**model.resolved_spec, "num_replicas": replicas}
        model.generation += 1
        model.change_reason = f"scale {before} → {replicas}"
        model.rejected_config_hash = ""
        _requeue_or_log(model, EventKind.SCALED, f"Scale {before} → {replicas} replica(s) requested.", actor)
    reconcile_soon()
    return model


def set_autoscaling(model: ServeModel, bounds, actor) -> ServeModel:
    """Change the bounds or the target Serve's autoscaler keeps to (a partial mapping keeps the rest
    as they are), or start autoscaling a model that had a fixed count. Applied in place: the model's
    replicas keep running (serving/cluster/ray_serve.py, _apply_autoscaled)."""
    if not isinstance(bounds, dict):
        names = "min_replicas, max_replicas, target_ongoing_requests, upscale_delay_s, downscale_delay_s"
        raise SpecError(422, "invalid_spec", f"autoscaling must be a mapping of {names}.", "autoscaling")
    with transaction.atomic():
        model = _locked(ServeModel.objects).get(pk=model.pk)
        if model.state in (State.DELETING, State.DELETED):
            raise ChangeRefused(f"{model.model_id} is {model.state}; its autoscaling cannot be changed.")
        before = model.autoscaling
        filled = validate_autoscaling({**before, **bounds})
        if filled == before:
            return model
        model.resolved_spec = {**model.resolved_spec, "autoscaling": filled, "num_replicas": filled["min_replicas"]}
        model.generation += 1
        model.change_reason = "autoscaling bounds" if before else "start autoscaling"
        model.rejected_config_hash = ""
        _requeue_or_log(model, EventKind.SCALED, f"Autoscaling set to {_bounds(filled)}.", actor)
    reconcile_soon()
    return model


def _bounds(autoscaling: dict) -> str:
    return (
        f"{autoscaling['min_replicas']}–{autoscaling['max_replicas']} replicas, "
        f"target {autoscaling['target_ongoing_requests']:g} ongoing request(s) per replica, "
        f"up after {autoscaling['upscale_delay_s']:g} s, down after {autoscaling['downscale_delay_s']:g} s"
    )


def request_delete(model: ServeModel, actor) -> ServeModel:
    with transaction.atomic():
        model = _locked(ServeModel.objects).get(pk=model.pk)
        if model.state == State.DELETED:
            raise ChangeRefused(f"{model.model_id} is already deleted.")
        if model.state != State.DELETING:
            model.move_to(State.DELETING, EventKind.DELETE_REQUESTED, "Delete requested.", actor=actor)
            AuditEntry.record(actor, "serve.delete", f"model {model.model_id} of {model.owner.username}")
    reconcile_soon()
    return model


def rollback(model: ServeModel, revision_number: int, actor) -> ServeModel:
    with transaction.atomic():
        model = _locked(ServeModel.objects).get(pk=model.pk)
        revision = ServeRevision.objects.filter(model=model, number=revision_number).first()
        if revision is None:
            raise LookupError(f"{model.model_id} has no revision {revision_number}.")
        if model.state in (State.DELETING, State.DELETED):
            raise ChangeRefused(f"{model.model_id} is {model.state}; it cannot be rolled back.")
        model.resolved_spec = revision.resolved_spec
        # As stored, not re-validated: the revision ran, even if today's allow-list is narrower.
        model.spec_yaml = spec_yaml_of(model)
        model.generation += 1
        model.change_reason = f"rollback to revision {revision.number}"
        model.rejected_config_hash = ""
        _requeue_or_log(model, EventKind.ROLLBACK, f"Rollback to revision {revision.number} requested.", actor)
        AuditEntry.record(actor, "serve.rollback", f"model {model.model_id} of {model.owner.username}", f"to revision {revision.number}")
    reconcile_soon()
    return model


def retry(model: ServeModel, actor) -> ServeModel:
    """A FAILED model tried again as it is (after its folder, card or secrets were fixed): a new
    generation, so it gets a fresh preflight and a fresh deploy."""
    with transaction.atomic():
        model = _locked(ServeModel.objects).get(pk=model.pk)
        if model.state != State.FAILED:
            raise ChangeRefused(f"{model.model_id} is {model.state}; only a FAILED model is retried.")
        model.generation += 1
        model.change_reason = "retry"
        model.rejected_config_hash = ""
        _requeue_or_log(model, EventKind.RETRY, f"Retry requested (generation {model.generation}).", actor)
    reconcile_soon()
    return model


def resume_after_force(model: ServeModel, run, actor) -> ServeModel:
    """A person forced the preflight of the model's current generation: deploy it. A model changed
    since (a newer generation) gets its own preflight instead, so the force is only recorded."""
    message = f"Preflight #{run.pk} forced by {actor.username}: {run.force_reason}"
    with transaction.atomic():
        model = _locked(ServeModel.objects).get(pk=model.pk)
        if model.generation != run.generation or model.state in (State.DELETING, State.DELETED):
            model.log(EventKind.PREFLIGHT_FORCED, f"{message} (generation {run.generation}; the model has moved on, so nothing is re-applied)", actor=actor)
            return model
        if model.state == State.FAILED:
            model.move_to(State.QUEUED, EventKind.PREFLIGHT_FORCED, message, actor=actor, also={"rejected_config_hash": "", "deadline": None})
        else:
            ServeModel.objects.filter(pk=model.pk).update(rejected_config_hash="")
            model.log(EventKind.PREFLIGHT_FORCED, message, actor=actor)
    reconcile_soon()
    return model


def _summary(resolved: ResolvedSpec) -> str:
    if resolved.autoscaling:
        return f"autoscaled, {_bounds(resolved.autoscaling)}, × {resolved.gpus_per_replica} GPU(s) from {resolved.model_source}"
    return f"{resolved.num_replicas} replica(s) × {resolved.gpus_per_replica} GPU(s) from {resolved.model_source}"


def spec_yaml_of(model: ServeModel) -> str:
    return yaml.safe_dump(model.resolved_spec, sort_keys=False)


# --- models Gantry deploys for itself (a gate run's short-lived deployment) ------------------------
def managed_root():
    """The folder of models Gantry fetched for itself (gate runs' candidates): served without the
    user path jail, since no user can write there, and a spec can never name it (only Gantry's
    own submit_for_gantry deploys from it). Registry versions have their own folder and rules
    (GANTRY_REGISTRY_DIR, serving/spec/paths.py)."""
    from pathlib import Path

    from django.conf import settings

    return Path(settings.VAR_DIR).resolve() / "gate-candidates"


def is_managed_source(source: str) -> bool:
    import os
    from pathlib import Path

    real = Path(os.path.realpath(source))
    return real == Path(source) and real.is_relative_to(managed_root()) and real.is_dir()


def resolved_for_gantry(user, spec, *, created_at=None) -> ResolvedSpec:
    """A spec whose model_source is a folder under managed_root(): resolved without the user path
    jail (Gantry wrote it), refused if it lies anywhere else."""
    from serving.spec import SpecError, make_model_id

    if not is_managed_source(spec.model_source):
        raise SpecError(403, "forbidden_path", f"{spec.model_source} is not a folder Gantry manages.", "model_source")
    created_at = created_at or timezone.now()
    return ResolvedSpec(spec.suffix, make_model_id(user.username, created_at, spec.suffix), spec.model_source,
                        spec.num_replicas, spec.gpus_per_replica, dict(spec.engine_kwargs), dict(spec.preflight),
                        dict(spec.autoscaling))


def submit_for_gantry(user, spec, *, note: str) -> ServeModel:
    """Create a model Gantry deploys on `user`'s behalf from a managed folder; the event says why."""
    created_at = timezone.now()
    resolved = resolved_for_gantry(user, spec, created_at=created_at)
    return _create(user, resolved.to_yaml(), resolved, created_at, note=f", by Gantry: {note}")


def registry_version(model: ServeModel):
    """The registry version a model serves (gates.registry.ResolvedModel), or None when its folder
    is not a copy of one. Read from the copy's own marker: no MLflow call on a page view."""
    import os
    from pathlib import Path

    from django.conf import settings

    source = Path(os.path.realpath(model.resolved_spec.get("model_source", "")))
    if not source.is_relative_to(Path(os.path.realpath(settings.GANTRY_REGISTRY_DIR))):
        return None
    from gates.registry import RegistryError, registered_copy

    try:
        return registered_copy(source)
    except RegistryError:
        return None
