"""Makes Serve match what users asked for, one model at a time, in one worker at a time.

Each tick: claim the lease (a conditional UPDATE; two workers never both hold it), read Serve's
status and the cluster's free GPUs once, then step every model that is not DELETED:

  QUEUED / changed spec -> GPU pre-check -> apply that model's application -> revision -> DEPLOYING
  DEPLOYING             -> RUNNING / FAILED from Serve's reported status, or FAILED at the deadline
  RUNNING               -> re-apply if Serve lost the application; DEPLOYING if Serve says UNHEALTHY
  DELETING              -> delete the application -> DELETED once Serve no longer lists it

and report applications Serve runs that Gantry does not know (never deleting them).
"""
from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from serving.choices import EventKind, State
from serving.client import ROUTER_APP, AppStatus, ServeClient, ServeUnavailable
from serving.engine import llm_config_for
from serving.models import Lease, ServeEvent, ServeModel, ServeRevision, config_hash

log = logging.getLogger(__name__)

LEASE_NAME = "serving-reconciler"
LEASE_TTL = timedelta(seconds=120)
UNKNOWN_APP_REPORT_EVERY = timedelta(hours=24)
APPLY_LISTING_GRACE_S = 30


@dataclass
class TickReport:
    ran: bool
    reason: str = ""
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unknown_apps: list[str] = field(default_factory=list)


# --- The lease --------------------------------------------------------------------------------

def claim_lease(holder: str) -> bool:
    now = timezone.now()
    try:
        Lease.objects.get_or_create(name=LEASE_NAME)
    except IntegrityError:
        pass  # created by a worker that started at the same moment
    claimed = (
        Lease.objects.filter(name=LEASE_NAME)
        .filter(Q(holder="") | Q(expires_at__lt=now))
        .update(holder=holder, expires_at=now + LEASE_TTL, rerun_requested=False)
    )
    if not claimed:
        # The holder runs once more before it lets go, so this change is not left for the next beat.
        Lease.objects.filter(name=LEASE_NAME).update(rerun_requested=True)
    return bool(claimed)


def renew_lease(holder: str) -> None:
    Lease.objects.filter(name=LEASE_NAME, holder=holder).update(expires_at=timezone.now() + LEASE_TTL)


def release_lease(holder: str) -> bool:
    """Let go, unless another reconcile asked for a rerun meanwhile: then keep it and say so."""
    if Lease.objects.filter(name=LEASE_NAME, holder=holder, rerun_requested=False).update(holder="", expires_at=None):
        return False
    return bool(
        Lease.objects.filter(name=LEASE_NAME, holder=holder).update(
            rerun_requested=False, expires_at=timezone.now() + LEASE_TTL
        )
    )


def reconcile(client: ServeClient, *, holder: str | None = None) -> TickReport:
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not claim_lease(holder):
        return TickReport(ran=False, reason="another reconcile holds the lease; it will run once more")
    try:
        report = Tick(client, holder).run()
        while release_lease(holder):
            report = Tick(client, holder).run()
        return report
    except BaseException:
        Lease.objects.filter(name=LEASE_NAME, holder=holder).update(holder="", expires_at=None)
        raise


# --- One tick ---------------------------------------------------------------------------------

class Tick:
    def __init__(self, client: ServeClient, holder: str):
        self.client = client
        self.holder = holder
        self.now = timezone.now()
        self.report = TickReport(ran=True)

    def run(self) -> TickReport:
        try:
            # Serve and the router come up with the first tick, so /v1/models answers before any
            # model exists; once they run this is one status read.
            self.client.ensure_started(settings.GANTRY_SERVE_PORT, wait=False)
            self.apps = self.client.status()
            self.resources = self.client.cluster_resources()
        except ServeUnavailable as exc:
            self.report.reason = f"Serve unavailable: {exc}"
            waiting = ServeModel.objects.filter(state__in=[State.QUEUED, State.DEPLOYING, State.DELETING]).select_related("owner")
            for model in waiting:
                observe(model, EventKind.SERVE_UNAVAILABLE, f"Cannot reach Ray Serve ({exc}); will retry.")
            return self.report
        self.free_gpus = self.resources.free_gpus
        models = list(ServeModel.objects.reconcilable().select_related("owner").order_by("created_at", "id"))
        for model in models:
            renew_lease(self.holder)
            try:
                self.step(model)
            except ServeUnavailable as exc:
                observe(model, EventKind.SERVE_UNAVAILABLE, f"Cannot reach Ray Serve ({exc}); will retry.")
        self.report_unknown_apps({m.model_key for m in models})
        return self.report

    def step(self, model: ServeModel) -> None:
        app = self.apps.get(model.model_key)
        if model.state == State.DELETING:
            return self.delete(model, app)
        if model.state == State.FAILED:
            return  # waits for a person: an update, a rollback or a delete
        config = llm_config_for(model)
        digest = config_hash(config)
        changed = digest not in (model.applied_config_hash, model.rejected_config_hash)
        if model.state == State.QUEUED or changed:
            return self.apply(model, config, digest, app)
        if model.change_reason:
            # A change that came to the config already applied (or already refused): nothing to do.
            model.change_reason = ""
            model.save(update_fields=["change_reason", "updated_at"])
            model.log(EventKind.SERVE_STATUS, f"Generation {model.generation} asks for the config Serve already has; nothing to apply.")
        if model.state == State.DEPLOYING:
            return self.observe_deploy(model, app)
        if model.state == State.RUNNING:
            return self.watch_running(model, config, digest, app)

    # QUEUED, or a changed spec: pre-check GPUs, apply, record the revision.
    def apply(self, model: ServeModel, config: dict, digest: str, app: AppStatus | None) -> None:
        previous = model.revisions.first()
        held = _gpus_of(previous) if (previous and app is not None) else 0
        needed = model.gpus_needed - held
        if needed > 0 and needed > self.free_gpus:
            return self.wait_for_gpus(model)
        reason = model.change_reason or _reason(previous, digest, config)
        try:
            if model.num_replicas == 0:
                self.client.delete_model(model.model_key)  # scale to zero: free the GPUs, keep the record
            else:
                self.client.apply_model(model.model_key, config, previous.config if (previous and app) else None)
        except ServeUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 — whatever Serve raised is the user's reason
            return self.refuse(model, digest, tail(f"{type(exc).__name__}: {exc}"), previous)
        with transaction.atomic():
            revision = ServeRevision.objects.create(
                model=model,
                model_key=model.model_key,
                number=(previous.number + 1) if previous else 1,
                generation=model.generation,
                resolved_spec=model.resolved_spec,
                config=config,
                config_hash=digest,
                reason=reason,
                actor_name="reconciler",
            )
            model.applied_config_hash, model.rejected_config_hash = digest, ""
            model.change_reason, model.last_observation = "", ""
            model.deadline = self.now + timedelta(seconds=settings.GANTRY_DEPLOY_TIMEOUT_S)
            model.move_to(
                State.DEPLOYING,
                EventKind.APPLIED,
                f"Applied revision {revision.number} ({reason}): {model.num_replicas} replica(s) × "
                f"{model.gpus_per_replica} GPU(s).",
                revision=revision.number,
            )
        self.free_gpus -= max(needed, 0)
        self.report.applied.append(model.model_key)

    def wait_for_gpus(self, model: ServeModel) -> None:
        message = (
            f"Needs {model.gpus_needed} GPU(s) ({model.num_replicas} replica(s) × {model.gpus_per_replica}); the "
            f"cluster has {self.free_gpus:g} free of {self.resources.total_gpus:g}. Waiting for GPUs."
        )
        if model.state == State.QUEUED:
            if model.deadline is None:
                model.deadline = self.now + timedelta(seconds=settings.GANTRY_PENDING_TIMEOUT_S)
                model.save(update_fields=["deadline", "updated_at"])
            elif self.now >= model.deadline:
                reason = f"No GPUs became free within {settings.GANTRY_PENDING_TIMEOUT_S} s. {message}"
                model.move_to(State.FAILED, EventKind.FAILED, reason, error=reason)
                return
        observe(model, EventKind.PENDING_RESOURCES, message)

    def refuse(self, model: ServeModel, digest: str, reason: str, previous: ServeRevision | None) -> None:
        """The apply raised: Serve kept what it had, so the model says why and does not retry alone."""
        model.rejected_config_hash = digest
        model.change_reason = ""  # nothing is pending any more: it was refused
        if model.state == State.RUNNING:
            model.error_summary = f"Generation {model.generation} was not applied: {reason}"
            model.save(update_fields=["rejected_config_hash", "change_reason", "error_summary", "updated_at"])
            still = f" Still serving revision {previous.number}." if previous else ""
            model.log(EventKind.APPLY_FAILED, f"Serve refused generation {model.generation}: {reason}.{still}")
        else:
            model.save(update_fields=["rejected_config_hash", "change_reason", "updated_at"])
            model.move_to(State.FAILED, EventKind.APPLY_FAILED, f"Applying to Serve failed: {reason}", error=reason)

    def observe_deploy(self, model: ServeModel, app: AppStatus | None) -> None:
        if model.num_replicas == 0:
            if app is None:
                model.move_to(State.RUNNING, EventKind.RUNNING, "Scaled to zero: the Serve application is removed; the model and its revisions stay.")
            return
        if app is not None and app.status == "RUNNING" and app.running_replicas == model.num_replicas:
            model.move_to(State.RUNNING, EventKind.RUNNING, f"Serve reports RUNNING with {app.running_replicas} replica(s).")
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            reason = f"Serve reports DEPLOY_FAILED: {tail(app.messages) or 'no message'}"
            model.move_to(State.FAILED, EventKind.FAILED, reason, error=reason)
            return
        if app is None and self.lost_since_apply(model):
            model.log(EventKind.DRIFT, "Serve no longer lists the application it was deploying (a restarted cluster?); re-applying it.")
            model.change_reason = "drift repair: Serve had lost the application"
            config = llm_config_for(model)
            return self.apply(model, config, config_hash(config), app)
        said = f"Serve reports {app.status}: {tail(app.messages) or 'no message yet'}" if app else "Serve does not list the application yet."
        if model.deadline and self.now >= model.deadline:
            reason = f"Not RUNNING {settings.GANTRY_DEPLOY_TIMEOUT_S} s after it was applied. {said}"
            model.move_to(State.FAILED, EventKind.FAILED, reason, error=reason)
            return
        observe(model, EventKind.SERVE_STATUS, said)

    def lost_since_apply(self, model: ServeModel) -> bool:
        """Serve lists an application as soon as it is applied; missing well after that, it was lost."""
        latest = model.revisions.first()
        return latest is not None and (self.now - latest.applied_at).total_seconds() > APPLY_LISTING_GRACE_S

    def watch_running(self, model: ServeModel, config: dict, digest: str, app: AppStatus | None) -> None:
        if model.num_replicas == 0:
            return
        if app is None:
            model.log(EventKind.DRIFT, "Serve no longer runs this model's application (a restarted cluster?); re-applying it.")
            model.change_reason = "drift repair: Serve had lost the application"
            return self.apply(model, config, digest, app)
        if app.status in ("UNHEALTHY", "DEPLOY_FAILED"):
            model.deadline = self.now + timedelta(seconds=settings.GANTRY_DEPLOY_TIMEOUT_S)
            model.move_to(State.DEPLOYING, EventKind.SERVE_STATUS, f"Serve reports {app.status}: {app.messages}; waiting for it to recover.")

    def delete(self, model: ServeModel, app: AppStatus | None) -> None:
        if app is None:
            model.move_to(State.DELETED, EventKind.DELETED, "Serve no longer lists the application; the model is deleted.")
            self.report.deleted.append(model.model_key)
            return
        if app.status == "DELETING":
            return observe(model, EventKind.SERVE_STATUS, "Serve is deleting the application.")
        try:
            self.client.delete_model(model.model_key)
        except ServeUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            observe(model, EventKind.DELETE_FAILED, f"Serve could not delete the application: {type(exc).__name__}: {exc}; will retry.")

    def report_unknown_apps(self, known: set[str]) -> None:
        since = self.now - UNKNOWN_APP_REPORT_EVERY
        for name, app in self.apps.items():
            if name in known or name == ROUTER_APP:
                continue
            self.report.unknown_apps.append(name)
            if not ServeEvent.objects.filter(model=None, model_key=name, kind=EventKind.UNKNOWN_APPLICATION, created_at__gte=since).exists():
                ServeEvent.record(
                    None,
                    EventKind.UNKNOWN_APPLICATION,
                    f"Serve runs application {name!r} ({app.status}) that Gantry does not manage; left running. "
                    "Delete it with `serve.delete` if nobody needs it.",
                    model_key=name,
                )


def tail(message: str, limit: int = 2000) -> str:
    """A long message cut in the middle: Serve's deploy failures open with what failed and end with
    the engine's exception; the traceback between them is what a person can spare."""
    if len(message) <= limit:
        return message
    head = message[: limit // 3].rstrip()
    return f"{head}\n…\n{message[-(limit - len(head)):].lstrip()}"


def observe(model: ServeModel, kind: str, message: str) -> None:
    """Log what Serve or the cluster says, once per distinct message, so a long wait is one event."""
    if model.last_observation == message:
        return
    model.last_observation = message
    model.save(update_fields=["last_observation", "updated_at"])
    model.log(kind, message)


def _gpus_of(revision: ServeRevision) -> int:
    spec = revision.resolved_spec
    return int(spec["num_replicas"]) * int(spec["gpus_per_replica"])


def _reason(previous: ServeRevision | None, digest: str, config: dict) -> str:
    if previous is None:
        return "create"
    if previous.config_hash == digest:
        return "re-apply"
    old, new = previous.config["deployment_config"]["num_replicas"], config["deployment_config"]["num_replicas"]
    same_otherwise = {**previous.config, "deployment_config": None} == {**config, "deployment_config": None}
    return f"scale {old} → {new}" if same_otherwise and old != new else "update"
