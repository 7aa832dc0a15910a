"""The reconciler's apply step: a QUEUED model, or one whose spec changed, goes to Serve.

Path jail again, the apply gates (serving/apply_gates.py: the preflight answers there), the GPU
ledger, then one apply of that model's application and its revision, all or nothing: a refused
apply leaves Serve as it was and the model says why.
"""
from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import transaction

# The secret store and the preflight block's parser are gates' libraries, below serving's domain
# (the import-linter contracts list them as the only parts of gates serving may use).
from gates.preflight.config import effective_config
from gates.secrets import redact, values_for
from serving import apply_gates
from serving.choices import EventKind, State
from serving.cluster.connection import ServeUnavailable
from serving.cluster.serve import AppStatus
from serving.deployments import is_managed_source
from serving.engine import llm_config_for
from serving.models import ServeModel, ServeRevision, config_hash
from serving.reconcile_events import observe, tail
from serving.spec import Roots, SpecError, resolve_model_source


class Applying:
    """Tick's apply step (serving/reconciler.py's Tick mixes it in: `call`, `ledger`, `report`,
    `now`, `engine` and `leave_to_full_tick` are the tick's)."""

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
        """The apply gates (the four preflight guards, gates/preflights.py) stand before every apply
        of a new spec; a run of them is a task on the gates queue, which wakes this reconciler when
        it is done."""
        verdict = apply_gates.verdict_for_apply(model)
        if verdict.state == apply_gates.PENDING:
            observe(model, EventKind.PREFLIGHT, verdict.message)
            return False
        if verdict.state == apply_gates.FAILED:
            self.refuse(model, digest, verdict.message, previous, app, kind=EventKind.PREFLIGHT_FAILED)
            return False
        engine = verdict.engine
        if engine is not None and engine != model.engine_override and model.update_if_unchanged(engine_override=engine):
            if engine:
                model.log(EventKind.ENGINE_FALLBACK, f"Deploying on the CPU engine instead of the GPU: {verdict.engine_note} ({verdict.source}).")
            else:
                model.log(EventKind.ENGINE_FALLBACK, f"Back on the cluster's engine: {verdict.source} found the GPU driver fit.")
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
        names = effective_config(model.resolved_spec.get("preflight")).secrets
        return values_for(model.owner, names) if names else {}

    def redact(self, model: ServeModel, text: str) -> str:
        """Whatever Serve or the engine said, with any of the model's secret values blanked out."""
        try:
            values = self.secrets_for(model)
        except Exception:  # noqa: BLE001 — a secret deleted meanwhile has no value to hide
            return text
        return redact(text, values.values()) if values else text


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
