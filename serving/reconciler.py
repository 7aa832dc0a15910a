"""Makes Serve match what users asked for, one model at a time, in one worker at a time.

Each tick: claim the lease (a conditional UPDATE; two workers never both hold it), read Serve's
status and the cluster's free GPUs once (and store them as the snapshot pages read), then step
every model that is not DELETED:

  QUEUED / changed spec -> path and GPU pre-checks -> apply that model's application -> revision -> DEPLOYING
  DEPLOYING             -> RUNNING / FAILED from Serve's reported status, or FAILED at the deadline
  RUNNING               -> DEPLOYING + re-apply if Serve lost the application, or if Serve says UNHEALTHY
  DELETING              -> delete the application -> DELETED once Serve no longer lists it

and report applications Serve runs that Gantry does not know (never deleting them).

Users change models at any moment, from other processes. So each model is read afresh when its
step starts, and every write is conditional on the state and generation read (ServeModel.move_to,
ServeModel.update_if_unchanged): a change that arrived meanwhile wins, and the next pass — at most
a second away while anything moves — applies it. Every call to Serve is bounded in time.
"""
from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from serving import snapshot
from serving.choices import MOVING_STATES, EventKind, State
from serving.client import ROUTER_APP, AppStatus, ServeClient, ServeUnavailable, call_with_timeout
from serving.deployments import is_managed_source
from serving.engine import engine_for_cluster, llm_config_for
from serving.gpu_fit import GpuLedger
from serving.models import ClusterSnapshot, Lease, ModelChanged, ServeEvent, ServeModel, ServeRevision, config_hash
from serving.spec import Roots, SpecError, resolve_model_source

log = logging.getLogger(__name__)

LEASE_NAME = "serving-reconciler"
UNKNOWN_APP_REPORT_EVERY = timedelta(hours=24)
APPLY_LISTING_GRACE_S = 30
DRIFT_REASON = "drift repair: Serve had lost the application"
# How long after Serve called a model unhealthy the reconciler looks for a dead node to name: Ray
# declares a node dead after its missed heartbeats (~30 s by default), slower on a loaded head.
NODE_LOST_LOOKUP_S = 180


def lease_ttl() -> timedelta:
    """The lease is renewed before every Serve call, and each call is bounded: it only has to outlast
    the longest call plus the database work around it, so a worker killed mid-tick blocks the
    others for one TTL at most, and a slow tick never lets a second reconciler in."""
    return timedelta(seconds=2 * settings.GANTRY_SERVE_CALL_TIMEOUT_S + 30)


@dataclass
class TickReport:
    ran: bool
    reason: str = ""
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unknown_apps: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    serve_unavailable: bool = False
    # A follow-up met a model that needs an apply (a change, a lost application): that is a full
    # tick's work, so the task enqueues one rather than leave it to beat.
    needs_full_tick: bool = False


# --- The lease --------------------------------------------------------------------------------

def claim_lease(holder: str, *, ask_rerun: bool = True) -> bool:
    now = timezone.now()
    try:
        Lease.objects.get_or_create(name=LEASE_NAME)
    except IntegrityError:
        pass  # created by a worker that started at the same moment
    claimed = (
        Lease.objects.filter(name=LEASE_NAME)
        .filter(Q(holder="") | Q(expires_at__lt=now))
        .update(holder=holder, expires_at=now + lease_ttl(), rerun_requested=False)
    )
    if not claimed and ask_rerun:
        # The holder runs once more before it lets go, so this change is not left for the next beat.
        Lease.objects.filter(name=LEASE_NAME).update(rerun_requested=True)
    return bool(claimed)


def renew_lease(holder: str) -> None:
    Lease.objects.filter(name=LEASE_NAME, holder=holder).update(expires_at=timezone.now() + lease_ttl())


# How often a tick the database dropped under tries again to let go of the lease.
RELEASE_RETRY_S = 1.0


def let_go(holder: str) -> None:
    """Free the lease after a tick that failed, so the next tick need not wait out the TTL.

    When the failure was the database going away (a restart, a failover) the release cannot be
    written either, and the lease would block every worker for up to a TTL after the database came
    back (a fault run waited 2 min after a 30 s outage). So keep trying, each time on a fresh
    connection, until it is back or the lease would have expired anyway; the process has nothing
    else to do without a database."""
    started = time.monotonic()
    deadline = started + lease_ttl().total_seconds()
    tries = 0
    while True:
        try:
            Lease.objects.filter(name=LEASE_NAME, holder=holder).update(holder="", expires_at=None)
            if tries:
                log.info("reconcile lease released %.1f s after the database went away", time.monotonic() - started)
            return
        except DatabaseError as exc:
            # Inside a caller's transaction a fresh connection would drop the caller's work.
            if connection.in_atomic_block or time.monotonic() >= deadline:
                log.warning("could not release the reconcile lease (%s); it expires within %s", exc, lease_ttl())
                return
            if not tries:
                log.warning("the database is away (%s); releasing the reconcile lease once it is back", exc)
            tries += 1
            connection.close()
            time.sleep(RELEASE_RETRY_S)


def release_lease(holder: str) -> bool:
    """Let go, unless another reconcile asked for a rerun meanwhile: then keep it and say so."""
    if Lease.objects.filter(name=LEASE_NAME, holder=holder, rerun_requested=False).update(holder="", expires_at=None):
        return False
    return bool(
        Lease.objects.filter(name=LEASE_NAME, holder=holder).update(
            rerun_requested=False, expires_at=timezone.now() + lease_ttl()
        )
    )


# A tick that was asked to run again while it ran does so this many times at most in one task;
# after that the follow-up task carries on, so one task never outlives its time limit.
MAX_RERUNS = 3


def reconcile(client: ServeClient, *, holder: str | None = None, ask_rerun: bool = True, followup: bool = False) -> TickReport:
    """One tick under the lease. A tick that finds the lease held asks the holder to run once more
    (a user's change must not wait for beat) unless `ask_rerun` is False: a follow-up only looks
    again, and a tick running anyway looks already — asking would only chain ticks back to back.

    A `followup` tick only reads Serve's status and steps the models that are moving (see Tick);
    a rerun asked for meanwhile is a full tick, since a change asked for it."""
    holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    if not claim_lease(holder, ask_rerun=ask_rerun):
        return TickReport(ran=False, reason="another reconcile holds the lease; it will run once more")
    try:
        report = Tick(client, holder, followup=followup).run()
        reruns = 0
        while release_lease(holder):
            reruns += 1
            if reruns > MAX_RERUNS:
                Lease.objects.filter(name=LEASE_NAME, holder=holder).update(holder="", expires_at=None)
                report.reason = report.reason or "rerun requested again; left to the follow-up"
                break
            report = Tick(client, holder).run()
        return report
    except BaseException:
        let_go(holder)
        raise


def followup_due() -> bool:
    """Whether to look again within about a second: something is moving, so beat's period is too slow."""
    # Not a model still waiting to be applied (QUEUED, a RUNNING one's pending change, a DEPLOYING
    # one Serve lost): those wait for GPUs, which free up on the cluster's schedule, not Gantry's;
    # beat's period is the pace for them.
    waiting_to_apply = Q(state=State.DEPLOYING, applied_config_hash="")
    return ServeModel.objects.filter(state__in=MOVING_STATES).exclude(waiting_to_apply).exists()


def claim_followup(delay_s: float) -> bool:
    """One follow-up at a time, however many ticks (beat, changes, follow-ups) ask for one: the
    first to move `followup_at` forward schedules it, the others see it already due."""
    now = timezone.now()
    try:
        Lease.objects.get_or_create(name=LEASE_NAME)
    except IntegrityError:
        pass
    due = now + timedelta(seconds=delay_s)
    pending = Q(followup_at__isnull=True) | Q(followup_at__lte=now)
    return bool(Lease.objects.filter(name=LEASE_NAME).filter(pending).update(followup_at=due))


# --- One tick ---------------------------------------------------------------------------------

class Tick:
    """One pass over every model. A follow-up tick (`followup=True`, about a second after a tick
    while models deploy or delete) is the cheap kind: one status read, no start-up check, no
    cluster resources, and only the models that are moving; anything needing an apply is left to
    a full tick, which the task then enqueues."""

    def __init__(self, client: ServeClient, holder: str, *, followup: bool = False):
        self.client = client
        self.holder = holder
        self.followup = followup
        self.now = timezone.now()
        self.report = TickReport(ran=True)
        self.unavailable: ServeUnavailable | None = None
        self.left_serve = False  # a model's replicas stopped this tick (shared memory may have leaked)

    def call(self, method: str, *args, **kwargs):
        """Every call to Serve: bounded in time, and with the lease renewed first."""
        renew_lease(self.holder)
        function = getattr(self.client, method)
        return call_with_timeout(function, *args, timeout_s=settings.GANTRY_SERVE_CALL_TIMEOUT_S, what=method, **kwargs)

    def run(self) -> TickReport:
        if self.followup:
            self.engine = ClusterSnapshot.current().engine
            if not self.engine:  # no full tick has read the cluster yet
                self.followup = False
        try:
            if self.followup:
                self.apps = self.call("status")
            else:
                # Serve and the router come up with the first tick, so /v1/models answers before any
                # model exists; once they run this is one status read.
                self.call("ensure_started", settings.GANTRY_SERVE_PORT, wait=False)
                # Serve's target replica counts cost one more read: only for autoscaled models' events.
                autoscaled = ServeModel.objects.reconcilable().filter(resolved_spec__has_key="autoscaling").exists()
                self.apps = self.call("status", targets=autoscaled)
                self.resources = self.call("cluster_resources")
        except ServeUnavailable as exc:
            self.report.reason = f"Serve unavailable: {exc}"
            self.report.serve_unavailable = True
            snapshot.record_unavailable(str(exc), self.now)
            self.tell_waiting(ServeModel.objects.waiting_on_serve(), exc)
            return self.report
        if self.followup:
            snapshot.record_apps(self.apps, self.now)
            ids = list(ServeModel.objects.filter(state__in=MOVING_STATES).order_by("created_at", "id").values_list("pk", flat=True))
        else:
            self.engine = engine_for_cluster(self.resources.total_gpus)
            snapshot.record(self.apps, self.resources, self.engine, self.now)
            self.ledger = self.gpu_ledger()
            ids = list(ServeModel.objects.reconcilable().order_by("created_at", "id").values_list("pk", flat=True))
        for position, pk in enumerate(ids):
            if self.unavailable is not None:
                waiting = ServeModel.objects.filter(pk__in=ids[position:]).waiting_on_serve()
                self.tell_waiting(waiting, self.unavailable)
                break
            self.step_safely(pk)
        if not self.followup:
            self.report_unknown_apps(set(ServeModel.objects.reconcilable().values_list("model_key", flat=True)))
        self.reap_shared_memory()
        return self.report

    def leave_to_full_tick(self, model: ServeModel) -> bool:
        """In a follow-up: say this model needs a full tick (GPU check, apply) and do nothing now."""
        if self.followup:
            self.report.needs_full_tick = True
            log.debug("%s needs an apply; left to a full tick", model.model_key)
        return self.followup

    def step_safely(self, pk: int) -> None:
        # Read afresh: a user may have changed it since the tick began (or since the last model's apply).
        model = ServeModel.objects.select_related("owner").filter(pk=pk).exclude(state=State.DELETED).first()
        if model is None:
            return
        try:
            self.step(model)
        except ModelChanged:
            log.info("%s changed while it was reconciled; the change wins and is applied on the next pass", model.model_key)
        except ServeUnavailable as exc:
            self.unavailable = exc
            self.report.reason = f"Serve unavailable: {exc}"
            self.report.serve_unavailable = True
            observe(model, EventKind.SERVE_UNAVAILABLE, f"Cannot reach Ray Serve ({exc}); will retry.")
        except Exception as exc:  # noqa: BLE001 — one model's error must not stop the others
            log.exception("reconciling %s failed", model.model_key)
            self.report.errors.append(model.model_key)
            observe(model, EventKind.RECONCILE_ERROR, f"Gantry could not reconcile this model ({type(exc).__name__}: {tail(str(exc), 500)}); it retries on the next pass.")

    def tell_waiting(self, models, exc: ServeUnavailable) -> None:
        for model in models.select_related("owner"):
            observe(model, EventKind.SERVE_UNAVAILABLE, f"Cannot reach Ray Serve ({exc}); will retry.")

    def step(self, model: ServeModel) -> None:
        app = self.apps.get(model.model_key)
        if model.state == State.DELETING:
            return self.delete(model, app)
        if model.state == State.FAILED:
            return  # waits for a person: an update, a rollback or a delete
        config = llm_config_for(model, engine=self.engine)
        digest = config_hash(config)
        changed = digest not in (model.applied_config_hash, model.rejected_config_hash)
        if model.state == State.QUEUED or changed:
            return self.apply(model, config, digest, app)
        if model.change_reason and model.update_if_unchanged(change_reason=""):
            # A change that came to the config already applied (or already refused): nothing to do.
            model.log(EventKind.SERVE_STATUS, f"Generation {model.generation} asks for the config Serve already has; nothing to apply.")
        if model.state == State.DEPLOYING:
            return self.observe_deploy(model, app)
        if model.state == State.RUNNING:
            return self.watch_running(model, app)

    # QUEUED, or a changed spec: check the path and the GPUs, apply, record the revision.
    def apply(self, model: ServeModel, config: dict, digest: str, app: AppStatus | None) -> None:
        if self.leave_to_full_tick(model):
            return
        previous = model.revisions.first()
        try:
            self.check_source(model)
        except SpecError as exc:
            return self.refuse(model, digest, f"model_source is no longer a folder you may serve: {exc.message}", previous, app)
        engine_before = model.engine_override
        if not self.passes_preflight(model, digest, previous, app):
            return
        if model.engine_override != engine_before:
            # The preflight moved the model to the CPU engine (or back): the config follows.
            config = llm_config_for(model, engine=self.engine)
            digest = config_hash(config)
        replicas = self.replicas_to_place(model, previous, app)
        if not self.ledger.fits(replicas, model.placed_gpus_per_replica):
            return self.wait_for_gpus(model, replicas)
        self.warn_if_scaling_up_may_wait(model, replicas)
        reason = model.change_reason or _reason(previous, digest, config)
        try:
            if model.num_replicas == 0:
                self.call("delete_model", model.model_key)  # scale to zero: free the GPUs, keep the record
                self.left_serve = app is not None
            else:
                secrets = self.secrets_for(model)
                self.call("apply_model", model.model_key, config, previous.config if (previous and app) else None, secrets=secrets)
        except ServeUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 — whatever Serve raised is the user's reason
            return self.refuse(model, digest, tail(f"{type(exc).__name__}: {exc}"), previous, app)
        self.ledger.take(replicas, model.placed_gpus_per_replica)
        self.record_applied(model, config, digest, reason, previous)
        self.report.applied.append(model.model_key)

    def passes_preflight(self, model: ServeModel, digest: str, previous: ServeRevision | None, app: AppStatus | None) -> bool:
        """The four preflight guards (gates/preflights.py) stand before every apply of a new spec;
        a run of them is a task on the gates queue, which wakes this reconciler when it is done."""
        from gates.preflights import verdict_for_apply

        verdict = verdict_for_apply(model)
        if verdict.state == "pending":
            observe(model, EventKind.PREFLIGHT, verdict.message)
            return False
        if verdict.state == "failed":
            self.refuse(model, digest, verdict.message, previous, app, kind=EventKind.PREFLIGHT_FAILED)
            return False
        engine = verdict.run.engine
        if engine != model.engine_override and model.update_if_unchanged(engine_override=engine):
            if engine:
                cuda = next((r for r in verdict.run.guard_results if r.guard == "cuda"), None)
                why = cuda.summary if cuda else "the CUDA probe asked for it"
                model.log(EventKind.ENGINE_FALLBACK, f"Deploying on the CPU engine instead of the GPU: {why} (preflight #{verdict.run.pk}).")
            else:
                model.log(EventKind.ENGINE_FALLBACK, f"Back on the cluster's engine: preflight #{verdict.run.pk} found the GPU driver fit.")
        return True

    def check_source(self, model: ServeModel) -> None:
        """The path jail again, at every apply: a folder checked at submit can since have become a
        symlink into another user's root, and scale, drift repair and rollback all re-apply it."""
        source = model.resolved_spec["model_source"]
        if is_managed_source(source):
            return  # a folder Gantry wrote for itself (a gate run's candidate), outside every user's root
        resolved = resolve_model_source(source, username=model.owner.username, roots=Roots.from_settings())
        if resolved != model.resolved_spec["model_source"]:
            raise SpecError(403, "forbidden_path", f"{model.resolved_spec['model_source']} now resolves to {resolved}; submit the spec again to serve that folder.", "model_source")

    def replicas_to_place(self, model: ServeModel, previous: ServeRevision | None, app: AppStatus | None) -> int:
        """Replicas that need GPUs they do not hold yet: all of them, or a scale-up's difference."""
        if previous is None or app is None or _gpus_per_replica(previous) != model.placed_gpus_per_replica:
            return model.num_replicas
        return max(model.num_replicas - _replicas(previous), 0)

    def record_applied(self, model: ServeModel, config: dict, digest: str, reason: str, previous: ServeRevision | None) -> None:
        with transaction.atomic():
            # Locked (and, on SQLite, the whole write is one IMMEDIATE transaction): no user change
            # lands between this read and the write below.
            current = ServeModel.objects.select_for_update().get(pk=model.pk)
            revision = ServeRevision.objects.create(
                model=current,
                model_key=model.model_key,
                number=(previous.number + 1) if previous else 1,
                generation=model.generation,
                resolved_spec=model.resolved_spec,
                config=config,
                config_hash=digest,
                reason=reason,
                actor_name="reconciler",
            )
            # What Serve now has is a fact whatever happened meanwhile; a pending change is the
            # user's, and stays for the next pass unless it is the one just applied.
            fields = {"applied_config_hash": digest, "rejected_config_hash": "", "last_observation": "", "observed_target_replicas": None}
            if current.generation == model.generation:
                fields["change_reason"] = ""
            message = (
                f"Applied revision {revision.number} ({reason}): {model.num_replicas} replica(s) × "
                f"{model.placed_gpus_per_replica} GPU(s)."
            )
            if current.state == model.state:
                fields["deadline"] = self.now + timedelta(seconds=settings.GANTRY_DEPLOY_TIMEOUT_S)
                model.move_to(State.DEPLOYING, EventKind.APPLIED, message, also=fields, revision=revision.number)
            else:
                ServeModel.objects.filter(pk=model.pk).update(**fields)
                current.log(
                    EventKind.APPLIED,
                    f"{message} Meanwhile the model became {current.state}; that change wins and is taken up next.",
                    revision=revision.number,
                )

    def warn_if_scaling_up_may_wait(self, model: ServeModel, replicas: int) -> None:
        """An autoscaled model is placed at min_replicas; say plainly, before it is needed, when the
        cluster has no GPUs for max_replicas: Serve's autoscaler would then wait for them."""
        most = (model.autoscaling or {}).get("max_replicas", 0)
        gpus = model.placed_gpus_per_replica
        if most <= model.num_replicas or gpus == 0 or self.ledger.fits(replicas + most - model.num_replicas, gpus):
            return
        observe(
            model,
            EventKind.AUTOSCALED,
            f"Scaling up to max_replicas ({most} × {gpus} GPU(s)) may wait for GPUs: {self.ledger.describe()}. "
            f"The model starts with {model.num_replicas} replica(s); Serve's autoscaler adds more only where GPUs are free.",
        )

    def observe_autoscaler(self, model: ServeModel, app: AppStatus | None) -> None:
        """Every decision of Serve's autoscaler as an event: its target replica count, when it moves."""
        if not model.autoscaling or app is None or app.target_replicas is None:
            return
        target, seen = app.target_replicas, model.observed_target_replicas
        if target == seen or not model.update_if_unchanged(observed_target_replicas=target):
            return
        if seen is None:
            return  # the first reading after an apply: the count the apply asked for, not a decision
        bounds = model.autoscaling
        way = "up" if target > seen else "down"
        model.log(
            EventKind.AUTOSCALED,
            f"Serve's autoscaler scales {way}: {seen} → {target} replica(s) ({app.running_replicas} running; target "
            f"{bounds['target_ongoing_requests']:g} ongoing request(s) per replica, {bounds['min_replicas']}–{bounds['max_replicas']} replicas).",
        )

    def wait_for_gpus(self, model: ServeModel, replicas: int) -> None:
        message = (
            f"Needs {replicas * model.placed_gpus_per_replica} GPU(s) ({replicas} replica(s) × {model.placed_gpus_per_replica}, each "
            f"replica's on one node); {self.ledger.describe()}. Waiting for GPUs."
        )
        if model.state in (State.QUEUED, State.DEPLOYING):
            if model.deadline is None:
                model.update_if_unchanged(deadline=self.now + timedelta(seconds=settings.GANTRY_PENDING_TIMEOUT_S))
            elif self.now >= model.deadline:
                reason = f"No GPUs became free in time. {message}"
                model.move_to(State.FAILED, EventKind.FAILED, reason, error=reason, expect_generation=model.generation)
                return
        observe(model, EventKind.PENDING_RESOURCES, message)

    def refuse(
        self, model: ServeModel, digest: str, reason: str, previous: ServeRevision | None, app: AppStatus | None, *, kind: str = EventKind.APPLY_FAILED
    ) -> None:
        """The apply raised (or was not allowed): Serve kept what it had, so the model says why and
        does not retry by itself. A model Serve still runs keeps serving; any other fails."""
        reason = self.redact(model, reason)
        if model.state == State.RUNNING and app is not None:
            still = f" Still serving revision {previous.number}." if previous else ""
            summary = f"Generation {model.generation} was not applied: {reason}"
            if model.update_if_unchanged(rejected_config_hash=digest, change_reason="", error_summary=summary):
                refused = "Gantry did not apply" if kind == EventKind.PREFLIGHT_FAILED else "Serve refused"
                model.log(kind, f"{refused} generation {model.generation}: {reason}.{still}")
            return
        also = {"rejected_config_hash": digest, "change_reason": ""}
        message = reason if kind == EventKind.PREFLIGHT_FAILED else f"Applying to Serve failed: {reason}"
        model.move_to(State.FAILED, kind, message, error=reason, expect_generation=model.generation, also=also)

    def secrets_for(self, model: ServeModel) -> dict[str, str]:
        """The values of the secrets the spec names, for this apply only (never stored with the config)."""
        from gates.preflight.config import effective_config
        from gates.secrets import values_for

        names = effective_config(model.resolved_spec.get("preflight")).secrets
        return values_for(model.owner, names) if names else {}

    def redact(self, model: ServeModel, text: str) -> str:
        """Whatever Serve or the engine said, with any of the model's secret values blanked out."""
        from gates.secrets import redact

        try:
            values = self.secrets_for(model)
        except Exception:  # noqa: BLE001 — a secret deleted meanwhile has no value to hide
            return text
        return redact(text, values.values()) if values else text

    def observe_deploy(self, model: ServeModel, app: AppStatus | None) -> None:
        if model.num_replicas == 0:
            if app is None:
                model.move_to(State.RUNNING, EventKind.RUNNING, "Scaled to zero: the Serve application is removed; the model and its revisions stay.", expect_generation=model.generation)
            else:
                self.remove_scaled_to_zero(model, app)
            return
        if app is not None and app.status == "RUNNING" and self.enough_running(model, app):
            model.move_to(State.RUNNING, EventKind.RUNNING, f"Serve reports RUNNING with {app.running_replicas} replica(s).", expect_generation=model.generation)
            if model.placed_gpus_per_replica > 0:
                observe_vram_soon(model)
            return
        if app is not None and app.status == "DEPLOY_FAILED":
            reason = f"Serve reports DEPLOY_FAILED: {tail(app.messages) or 'no message'}"
            cause = self.failure_cause(model)
            if cause:
                reason = f"{reason}\nRoot cause, from the replica's log: {cause}"
            model.move_to(State.FAILED, EventKind.FAILED, reason, error=reason, expect_generation=model.generation)
            return
        if app is None and self.lost_since_apply(model):
            return self.reapply_lost(model, "Serve no longer lists the application it was deploying (a restarted cluster?); re-applying it.")
        said = serve_says(app) if app else "Serve does not list the application yet."
        self.say_lost_nodes(model)
        if model.deadline and self.now >= model.deadline:
            reason = f"Not RUNNING {settings.GANTRY_DEPLOY_TIMEOUT_S} s after it was applied. {said}"
            model.move_to(State.FAILED, EventKind.FAILED, reason, error=reason, expect_generation=model.generation)
            return
        observe(model, EventKind.SERVE_STATUS, said)

    @staticmethod
    def enough_running(model: ServeModel, app: AppStatus) -> bool:
        # An autoscaled model may already run more than min_replicas when its deploy completes.
        if model.autoscaling:
            return app.running_replicas >= model.num_replicas
        return app.running_replicas == model.num_replicas

    def failure_cause(self, model: ServeModel) -> str:
        """The failing replica's own words (Serve's message only says "see root cause above")."""
        try:
            return self.call("failure_cause", model.model_key) or ""
        except Exception as exc:  # noqa: BLE001 — the cause is a courtesy; the failure is recorded anyway
            log.warning("could not read the root cause of %s: %s", model.model_key, exc)
            return ""

    def lost_since_apply(self, model: ServeModel) -> bool:
        """Serve lists an application as soon as it is applied; missing well after that, it was lost."""
        latest = model.revisions.first()
        return latest is not None and (self.now - latest.applied_at).total_seconds() > APPLY_LISTING_GRACE_S

    def reapply_lost(self, model: ServeModel, message: str) -> None:
        """Serve runs nothing for this model: say so by state (DEPLOYING, not RUNNING), forget the
        applied config (Serve no longer has it), and apply it again — now, or once GPUs are free
        (waiting at most the pending timeout, then FAILED with the reason)."""
        if self.leave_to_full_tick(model):
            return
        also = {
            "applied_config_hash": "",
            "last_observation": "",
            "deadline": self.now + timedelta(seconds=settings.GANTRY_PENDING_TIMEOUT_S),
        }
        if not model.change_reason:
            also["change_reason"] = DRIFT_REASON
        model.move_to(State.DEPLOYING, EventKind.DRIFT, message, expect_generation=model.generation, also=also)
        config = llm_config_for(model, engine=self.engine)
        self.apply(model, config, config_hash(config), None)

    def remove_scaled_to_zero(self, model: ServeModel, app: AppStatus) -> None:
        if app.status == "DELETING":
            return observe(model, EventKind.SERVE_STATUS, "Scaled to zero: Serve is removing the application.")
        observe(model, EventKind.DRIFT, "Scaled to zero, but Serve still runs the application; removing it.")
        self.call("delete_model", model.model_key)
        self.left_serve = True

    def watch_running(self, model: ServeModel, app: AppStatus | None) -> None:
        if model.num_replicas == 0:
            if app is not None:
                self.remove_scaled_to_zero(model, app)
            return
        if app is None:
            return self.reapply_lost(model, "Serve no longer runs this model's application (a restarted cluster?); re-applying it.")
        self.observe_autoscaler(model, app)
        if app.status in ("UNHEALTHY", "DEPLOY_FAILED"):
            deadline = self.now + timedelta(seconds=settings.GANTRY_DEPLOY_TIMEOUT_S)
            said = serve_says(app)
            # Observed as said, so the next tick's DEPLOYING step does not log Serve's same words again.
            also = {"deadline": deadline, "last_observation": said}
            model.move_to(State.DEPLOYING, EventKind.SERVE_STATUS, f"{said}; waiting for it to recover.", expect_generation=model.generation, also=also)
            self.say_lost_nodes(model)

    def say_lost_nodes(self, model: ServeModel) -> None:
        """A NODE_LOST event for each Ray node that died with the model's replicas on it: Serve only
        says a replica is unhealthy, an admin needs to know the machine went.

        Serve can call a replica unhealthy (its health checks time out) seconds before Ray declares
        the node dead (missed heartbeats), so this asks on every tick for NODE_LOST_LOOKUP_S after
        the model left RUNNING as unhealthy, until a node is named; each node once."""
        left = (
            model.events.filter(kind=EventKind.SERVE_STATUS, from_state=State.RUNNING, to_state=State.DEPLOYING)
            .values_list("created_at", flat=True).first()
        )
        if left is None or (self.now - left).total_seconds() > NODE_LOST_LOOKUP_S:
            return
        if model.events.filter(kind=EventKind.NODE_LOST, created_at__gte=left).exists():
            return
        told = set(model.events.filter(kind=EventKind.NODE_LOST).values_list("payload__node_id", flat=True))
        became_running = model.events.filter(to_state=State.RUNNING, created_at__lte=left).values_list("created_at", flat=True).first()
        # Ray's clock is the head's; a minute of slack for a skewed one.
        since = became_running.timestamp() - 60 if became_running else 0
        try:
            lost = self.call("lost_nodes", model.model_key, since) or []
        except Exception as exc:  # noqa: BLE001 — naming the node is a courtesy; the state is recorded
            log.warning("could not read which nodes %s lost: %s", model.model_key, exc)
            return
        for node in lost:
            if node["node_id"] in told:
                continue
            died = datetime.fromtimestamp(node["died_at"], tz=dt_timezone.utc).strftime("%H:%M:%S UTC") if node["died_at"] else "recently"
            name = node["node_name"] or node["address"] or "a node"
            reason = f" ({tail(node['reason'])})" if node["reason"] else ""
            model.log(
                EventKind.NODE_LOST,
                f"Ray lost node {name} ({node['address']}, id {node['node_id'][:12]}) at {died}{reason} while it ran this "
                "model's replicas; Serve starts replacements where resources allow.",
                node_id=node["node_id"], node_name=node["node_name"], address=node["address"],
            )

    def delete(self, model: ServeModel, app: AppStatus | None) -> None:
        if app is None:
            model.move_to(State.DELETED, EventKind.DELETED, "Serve no longer lists the application; the model is deleted.")
            self.report.deleted.append(model.model_key)
            self.left_serve = True
            return
        if app.status == "DELETING":
            return observe(model, EventKind.SERVE_STATUS, "Serve is deleting the application.")
        try:
            self.call("delete_model", model.model_key)
        except ServeUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001
            observe(model, EventKind.DELETE_FAILED, f"Serve could not delete the application: {type(exc).__name__}: {exc}; will retry.")

    # --- GPUs -----------------------------------------------------------------------------------

    def gpu_ledger(self) -> GpuLedger:
        """Free GPUs per node, less what applies Serve has not placed yet will take. Ray's free count
        lags placement-group creation, so without this two back-to-back ticks could promise the
        same GPUs twice."""
        promised: list[int] = []
        moving = ServeRevision.objects.filter(
            model__state__in=[State.DEPLOYING, State.RUNNING], config_hash=F("model__applied_config_hash")
        ).select_related("model").order_by("model_id", "-number")
        seen: set[int] = set()
        for revision in moving:
            if revision.model_id in seen:
                continue
            seen.add(revision.model_id)
            per_replica, replicas = _gpus_per_replica(revision), _replicas(revision)
            if per_replica <= 0 or replicas <= 0:
                continue
            key = revision.model_key
            app = self.apps.get(key)
            if app is None:
                continue  # Serve has nothing of it to place; its re-apply goes through this check itself
            held = self.resources.reserved_gpus.get(key)
            if held is None:  # a client that cannot see placement groups: trust running replicas
                held = (app.running_replicas if app else 0) * per_replica
            promised += [per_replica] * max(math.ceil((replicas * per_replica - held) / per_replica), 0)
        return GpuLedger.from_nodes(self.resources.free_nodes(), self.resources.total_gpus, promised)

    # --- Housekeeping ---------------------------------------------------------------------------

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

    def reap_shared_memory(self) -> None:
        """vLLM leaves /dev/shm segments behind when a replica stops; remove those no process holds,
        on every node, now and then and whenever replicas stopped."""
        if self.unavailable is not None:
            return
        if self.followup and not self.left_serve:
            return  # the periodic look is a full tick's; a follow-up reaps only after replicas stopped
        last = ClusterSnapshot.objects.filter(name=ClusterSnapshot.ONE).values_list("reaped_at", flat=True).first()
        due = last is None or (self.now - last).total_seconds() >= settings.GANTRY_SHM_REAP_INTERVAL_S
        if not (due or self.left_serve):
            return
        ClusterSnapshot.objects.filter(name=ClusterSnapshot.ONE).update(reaped_at=self.now)
        try:
            removed = self.call("reap_shared_memory") or []
        except Exception as exc:  # noqa: BLE001 — housekeeping must not fail the tick
            log.warning("could not look for leaked shared memory: %s", exc)
            return
        if removed:
            total = sum(int(item.get("bytes", 0)) for item in removed)
            nodes = sorted({str(item.get("node_id", ""))[:12] for item in removed})
            names = ", ".join(str(item.get("name")) for item in removed[:10]) + (" …" if len(removed) > 10 else "")
            ServeEvent.record(
                None,
                EventKind.LEAK_REMOVED,
                f"Removed {len(removed)} shared-memory segment(s) in /dev/shm that no process held "
                f"({total / 2**20:.1f} MiB apparent) on node(s) {', '.join(nodes)}: {names}.",
                model_key="/dev/shm",
                segments=removed[:100],
            )


def tail(message: str, limit: int = 2000) -> str:
    """A long message cut in the middle: Serve's deploy failures open with what failed and end with
    the engine's exception; the traceback between them is what a person can spare."""
    if len(message) <= limit:
        return message
    head = message[: limit // 3].rstrip()
    return f"{head}\n…\n{message[-(limit - len(head)):].lstrip()}"


def serve_says(app: AppStatus) -> str:
    return f"Serve reports {app.status}: {tail(app.messages) or 'no message yet'}"


def observe(model: ServeModel, kind: str, message: str) -> None:
    """Log what Serve or the cluster says, once per distinct message, so a long wait is one event.
    Written only if the model is still as read: a changed model is observed afresh next pass."""
    if model.last_observation == message:
        return
    if model.update_if_unchanged(last_observation=message):
        model.log(kind, message)


def _replicas(revision: ServeRevision) -> int:
    return int(revision.resolved_spec["num_replicas"])


def _gpus_per_replica(revision: ServeRevision) -> int:
    if (revision.config.get("accelerator_config") or {}).get("kind") == "cpu":
        return 0  # applied on the CPU engine (the CUDA probe's fallback, or a CPU cluster)
    return int(revision.resolved_spec["gpus_per_replica"])


def _reason(previous: ServeRevision | None, digest: str, config: dict) -> str:
    if previous is None:
        return "create"
    if previous.config_hash == digest:
        return "re-apply"
    same_otherwise = {**previous.config, "deployment_config": None} == {**config, "deployment_config": None}
    old, new = previous.config["deployment_config"], config["deployment_config"]
    if same_otherwise and "num_replicas" in old and "num_replicas" in new and old != new:
        return f"scale {old['num_replicas']} → {new['num_replicas']}"
    if same_otherwise and "autoscaling_config" in new:
        return "autoscaling bounds"
    return "update"


def observe_vram_soon(model: ServeModel) -> None:
    """Estimate vs measured GPU memory, read off the tick: the NVML and actor reads take seconds on
    a big cluster, and a tick must not wait on them."""
    from serving.tasks import observe_vram

    pk, generation = model.pk, model.generation
    transaction.on_commit(lambda: observe_vram.apply_async((pk, generation), queue="health"))
