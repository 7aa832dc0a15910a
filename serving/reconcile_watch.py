"""The reconciler's watching steps: a DEPLOYING model becomes RUNNING or FAILED from what Serve
reports, a RUNNING one is re-applied when Serve lost it or waits while Serve calls it unhealthy
(naming the node Ray lost), a DELETING one is deleted; the autoscaler's decisions become events.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import transaction

from dashboard.queues import task
from serving.choices import EventKind, State
from serving.cluster.connection import ServeUnavailable
from serving.cluster.serve import AppStatus
from serving.engine import llm_config_for
from serving.models import ServeModel, config_hash
from serving.reconcile_events import observe, serve_says, tail

log = logging.getLogger(__name__)

APPLY_LISTING_GRACE_S = 30
DRIFT_REASON = "drift repair: Serve had lost the application"
# How long after Serve called a model unhealthy the reconciler looks for a dead node to name: Ray
# declares a node dead after its missed heartbeats (~30 s by default), slower on a loaded head.
NODE_LOST_LOOKUP_S = 180


class Watching:
    """Tick's steps for models already applied (serving/reconciler.py's Tick mixes it in: `call`,
    `apply`, `report`, `now`, `engine`, `left_serve` and `leave_to_full_tick` are the tick's)."""

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


def observe_vram_soon(model: ServeModel) -> None:
    """Estimate vs measured GPU memory, read off the tick: the NVML and actor reads take seconds on
    a big cluster, and a tick must not wait on them."""
    pk, generation = model.pk, model.generation
    transaction.on_commit(lambda: task("serving.tasks.observe_vram").apply_async((pk, generation), queue="health"))
