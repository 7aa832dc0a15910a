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
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import F, Q
from django.utils import timezone

from serving import snapshot
from serving.choices import MOVING_STATES, EventKind, State
from serving.cluster.connection import ServeUnavailable, call_with_timeout
from serving.cluster.serve import ROUTER_APP, ServeControl
from serving.engine import engine_for_cluster, llm_config_for
from serving.gpu_fit import GpuLedger
from serving.lease import LEASE_NAME, claim_lease, lease_ttl, release_lease, renew_lease
from serving.models import ClusterSnapshot, Lease, ModelChanged, ServeEvent, ServeModel, ServeRevision, config_hash
from serving.reconcile_apply import Applying, _gpus_per_replica, _replicas
from serving.reconcile_events import observe, tail
from serving.reconcile_watch import Watching
from serving.shm_sweep import reap_shared_memory

log = logging.getLogger(__name__)

UNKNOWN_APP_REPORT_EVERY = timedelta(hours=24)


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


# A tick that was asked to run again while it ran does so this many times at most in one task;
# after that the follow-up task carries on, so one task never outlives its time limit.
MAX_RERUNS = 3


def reconcile(client: ServeControl, *, holder: str | None = None, ask_rerun: bool = True, followup: bool = False) -> TickReport:
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


# --- One tick ---------------------------------------------------------------------------------

class Tick(Applying, Watching):
    """One pass over every model. A follow-up tick (`followup=True`, about a second after a tick
    while models deploy or delete) is the cheap kind: one status read, no start-up check, no
    cluster resources, and only the models that are moving; anything needing an apply is left to
    a full tick, which the task then enqueues."""

    def __init__(self, client: ServeControl, holder: str, *, followup: bool = False):
        self.client = client
        self.holder = holder
        self.followup = followup
        self.now = timezone.now()
        self.report = TickReport(ran=True)
        self.unavailable: ServeUnavailable | None = None
        self.left_serve = False  # a model's replicas stopped this tick (shared memory may have leaked)

    def call(self, method, *args, **kwargs):
        """Every call to the cluster: bounded in time, and with the lease renewed first. `method`
        names a ServeControl method, or is one of serving's node tasks, called with the client."""
        renew_lease(self.holder)
        if callable(method):
            what, function, args = method.__name__, method, (self.client, *args)
        else:
            what, function = method, getattr(self.client, method)
        return call_with_timeout(function, *args, timeout_s=settings.GANTRY_SERVE_CALL_TIMEOUT_S, what=what, **kwargs)

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
            removed = self.call(reap_shared_memory) or []
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
