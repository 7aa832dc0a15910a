"""Preflight runs: before a deploy (in a worker, on the `gates` queue), on demand (the model's page,
the API), and from the CLI. The guards are in gates/preflight/; this module gives them their inputs
(the folder, the effective settings, the runtime, the owner's secret names), stores what they
found, and records what a person decided (a force, with who and why).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils import timezone

from dashboard.models import AuditEntry
from dashboard.queues import task
from gates.models import PreflightRun, RuntimeReading, spec_digest
from gates.preflight.base import NodeRuntime, PreflightContext, Runtime, SecretNames
from gates.preflight.config import effective_config
from gates.preflight.runner import engine_from, run_guards, verdict
from gates.preflight.vram import GpuMemory, VramContext
from serving.vram_fit import Budget, FitReport, VramEstimateError, estimate, fit, fixes

log = logging.getLogger(__name__)


class ForceRefused(Exception):
    """This run cannot be forced (nothing failed, or what failed is not a version skew)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message, self.field = message, field


# --- The runtime the versions and drivers are compared with ----------------------------------------

def _alive_node_ids() -> list[str]:
    from serving.models import ClusterSnapshot

    nodes = (ClusterSnapshot.current().resources or {}).get("nodes") or []
    return sorted(str(n.get("node_id", "")) for n in nodes)


def read_cluster_runtime(client) -> Runtime:
    """In a worker: the cluster's runtime, read again when older than GANTRY_PREFLIGHT_RUNTIME_TTL_S or
    when the cluster's nodes changed (a node added with another image is exactly the skew to catch)."""
    from gates.node_runtimes import node_runtimes
    from serving.cluster.connection import call_with_timeout

    reading = RuntimeReading.objects.filter(name=RuntimeReading.ONE).first()
    now = timezone.now()
    alive = _alive_node_ids()
    if reading and reading.read_at and (now - reading.read_at).total_seconds() < settings.GANTRY_PREFLIGHT_RUNTIME_TTL_S:
        if not alive or sorted(reading.node_ids) == alive:
            return Runtime.from_dict(reading.runtime)
    try:
        nodes = call_with_timeout(node_runtimes, client, timeout_s=settings.GANTRY_SERVE_CALL_TIMEOUT_S, what="node_runtimes") or []
        why = "the cluster reported no nodes" if not nodes else ""
    except Exception as exc:  # noqa: BLE001 — an unreachable cluster is said in the report, not raised
        nodes, why = [], f"{type(exc).__name__}: {str(exc)[:200]}"
    if nodes:
        runtime = Runtime("cluster", tuple(NodeRuntime.from_dict(n) for n in nodes), read_at=now.isoformat())
        if any(n.error for n in runtime.nodes):
            return runtime  # used once, not kept: a node that did not answer is asked again next time
        RuntimeReading.objects.update_or_create(
            name=RuntimeReading.ONE, defaults={"runtime": runtime.as_dict(), "node_ids": sorted(n.node_id for n in runtime.nodes), "read_at": now}
        )
        return runtime
    if reading:
        old = Runtime.from_dict(reading.runtime)
        return Runtime(old.source, old.nodes, old.read_at, f"could not read the cluster again ({why}); using the reading of {old.read_at}")
    return local_runtime_instead(f"the cluster could not be asked ({why})")


def cached_runtime() -> Runtime:
    """For the web process and the CLI, which never ask Ray: the workers' last reading of the cluster."""
    reading = RuntimeReading.objects.filter(name=RuntimeReading.ONE).first()
    if reading and reading.runtime:
        return Runtime.from_dict(reading.runtime)
    return local_runtime_instead("no worker has read the cluster's runtime yet")


def local_runtime_instead(why: str) -> Runtime:
    from gates.preflight.runtime import local_runtime

    return local_runtime(f"{why}; compared with this machine's runtime instead")


# --- Running ---------------------------------------------------------------------------------------

def _secret_names(owner) -> SecretNames:
    if owner is None:  # the CLI without --user: a CI step passes secrets as environment variables
        return SecretNames(lambda: set(os.environ), "this process's environment")
    from gates.secrets import store_names

    return store_names(owner)


def gpu_memory_reading() -> GpuMemory:
    """Every GPU's memory as the health probe last read it (one probe cycle's GpuSample rows), for
    the VRAM fit check; none when that reading is stale or there is no database (the CLI)."""
    from health.models import GpuSample
    from health.choices import STALE_INTERVALS
    from serving.vram_fit import serving_pids

    try:
        newest = GpuSample.objects.order_by("-at").values_list("at", flat=True).first()
        if newest is None:
            return GpuMemory(note="the health probe has read no GPU (no GPU node, or the probe has not run yet)")
        limit_s = STALE_INTERVALS * settings.GANTRY_HEALTH_INTERVAL_S
        if (timezone.now() - newest).total_seconds() > limit_s:
            return GpuMemory(read_at=newest.isoformat(), note=f"the newest GPU reading, of {newest:%Y-%m-%d %H:%M:%S} UTC, is older than {limit_s} s")
        samples = list(GpuSample.objects.filter(at=newest).order_by("node_id", "gpu_index"))
    except DatabaseError as exc:
        return GpuMemory(note=f"no GPU reading could be read from the database ({type(exc).__name__})")
    nodes: dict[str, dict] = {}
    for sample in samples:
        details = sample.details or {}
        node = nodes.setdefault(sample.node_id, {"node_id": sample.node_id, "address": details.get("address", ""), "gpus": []})
        node["gpus"].append({
            "index": sample.gpu_index, "name": sample.name, "memory_total_bytes": sample.memory_total_bytes,
            "memory_used_bytes": sample.memory_used_bytes, "processes": details.get("processes") or [],
        })
    readings = tuple(nodes.values())
    return GpuMemory(readings, frozenset(serving_pids(readings)), newest.isoformat())


@dataclass(frozen=True)
class VramPreview:
    """The VRAM fit of a spec before it is submitted: the report against the cluster's GPUs, the
    what-if on a GPU the user picked ("Will it fit on…"), or why there is none."""

    report: FitReport | None = None
    note: str = ""  # why the folder could not be estimated
    what_if: Budget | None = None
    what_if_name: str = ""
    gpu_choices: tuple[str, ...] = ()

    @property
    def budget(self) -> Budget | None:
        """The budget whose terms the page lists: the picked GPU's, else the first GPU read."""
        if self.what_if is not None:
            return self.what_if
        return next((g.budget for g in (self.report.gpus if self.report else ()) if g.budget is not None), None)

    @property
    def what_if_advice(self) -> str:
        return "" if self.what_if is None or self.what_if.fits else fixes(self.what_if)


def vram_preview(resolved_spec: dict, engine: str, what_if: str = "") -> VramPreview:
    """For the new-model preview: the estimate against the GPUs' latest reading (GPU replicas on the GPU
    engine), and against the picked GPU for anyone, CPU replicas too (one GPU each, as they would run)."""
    from serving.vram_fit.gpus import known_gpus, parse_gpu

    choices = tuple(g.name for g in known_gpus())
    gpus = int(resolved_spec.get("gpus_per_replica", 0))
    on_cpu = engine != "gpu" or gpus <= 0
    if on_cpu and not what_if:
        return VramPreview(note="CPU replicas use no GPU memory; pick a GPU to see whether the model would fit on it.", gpu_choices=choices)
    try:
        need = estimate(resolved_spec["model_source"], resolved_spec.get("engine_kwargs"), max(1, gpus))
        picked = parse_gpu(what_if) if what_if else None
    except VramEstimateError as exc:
        return VramPreview(note=f"The memory a replica needs cannot be estimated: {exc}", gpu_choices=choices)
    budget = need.on_gpu(picked.total_bytes, picked.name) if picked else None
    if on_cpu:
        return VramPreview(what_if=budget, what_if_name=picked.name, gpu_choices=choices)
    report, _ = cluster_fit(need, resolved_spec)
    return VramPreview(report, what_if=budget, what_if_name=picked.name if picked else "", gpu_choices=choices)


def cluster_fit(need, resolved_spec: dict) -> tuple[FitReport, GpuMemory]:
    """`need` against the GPUs' newest reading, for the spec's replicas; and that reading."""
    memory = gpu_memory_reading()
    replicas = int(resolved_spec.get("num_replicas", 1))
    return fit(need, memory.nodes, replica_pids=memory.replica_pids, replicas=replicas, unread=memory.note), memory


def context_for(run: PreflightRun, runtime: Runtime, *, wait_for_secrets: bool, engine: str | None = None) -> PreflightContext:
    from serving.engine import current_engine

    spec = run.resolved_spec
    return VramContext(
        folder=Path(run.folder),
        config=effective_config(spec.get("preflight")),
        runtime=runtime,
        secrets=_secret_names(run.owner),
        engine=engine or current_engine(),
        gpus_per_replica=int(spec.get("gpus_per_replica", 0)),
        wait_for_secrets=wait_for_secrets,
        engine_kwargs=dict(spec.get("engine_kwargs") or {}),
        num_replicas=int(spec.get("num_replicas", 1)),
        gpu_memory=gpu_memory_reading(),
    )


def new_run(resolved_spec: dict, *, trigger: str, owner=None, model=None, status: str = PreflightRun.Status.PENDING) -> PreflightRun:
    return PreflightRun.objects.create(
        model=model,
        model_key=model.model_key if model else "",
        generation=model.generation if model else None,
        spec_digest=spec_digest(resolved_spec),
        owner=owner,
        owner_name=getattr(owner, "username", "") or "",
        trigger=trigger,
        status=status,
        folder=resolved_spec["model_source"],
        resolved_spec=resolved_spec,
        config=effective_config(resolved_spec.get("preflight")).as_dict(),
        started_at=timezone.now() if status == PreflightRun.Status.RUNNING else None,
    )


def execute_unsaved(run: PreflightRun, runtime: Runtime, *, wait_for_secrets: bool, engine: str | None = None) -> PreflightRun:
    """Run the guards and put what they found on `run`, without writing it (the CLI may have no database)."""
    if not run.config:
        run.config = effective_config(run.resolved_spec.get("preflight")).as_dict()
    run.spec_digest = run.spec_digest or spec_digest(run.resolved_spec)
    run.started_at = run.started_at or timezone.now()
    results = run_guards(context_for(run, runtime, wait_for_secrets=wait_for_secrets, engine=engine))
    run.results = [r.as_dict() for r in results]
    run.status = verdict(results)
    run.engine = engine_from(results)
    run.runtime = runtime.as_dict()
    run.finished_at = timezone.now()
    return run


def execute(run: PreflightRun, runtime: Runtime, *, wait_for_secrets: bool) -> PreflightRun:
    execute_unsaved(run, runtime, wait_for_secrets=wait_for_secrets)
    run.save(update_fields=["results", "status", "engine", "runtime", "finished_at", "config", "spec_digest", "started_at"])
    return run


def run_on_demand(resolved_spec: dict, *, owner, trigger: str, model=None) -> PreflightRun:
    """The page's button and the API: at once, in this process, against the cached cluster runtime;
    required secrets are checked as they are now (the deploy's run is the one that waits)."""
    run = new_run(resolved_spec, trigger=trigger, owner=owner, model=model, status=PreflightRun.Status.RUNNING)
    return execute(run, cached_runtime(), wait_for_secrets=False)


def spec_for_user(user, text: str) -> tuple[dict, object | None]:
    """A spec as the serving API would take it (the same parsing, validation and path jail: 400,
    422, 403), and the user's model of that suffix if there is one. Nothing is deployed."""
    from django.utils import timezone as tz

    from serving.engine import current_engine
    from serving.models import ServeModel
    from serving.spec import Roots, parse_spec_yaml, resolve_spec, validate_spec

    spec = validate_spec(parse_spec_yaml(text), engine=current_engine())
    model = ServeModel.objects.filter(owner=user, suffix=spec.suffix).select_related("owner").first()
    created_at = model.created_at if model else tz.now()
    resolved = resolve_spec(spec, username=user.username, created_at=created_at, roots=Roots.from_settings())
    return resolved.as_dict(), model


def vram_fit_json(resolved_spec: dict, engine: str, asked: list) -> dict:
    """The VRAM fit of a spec as the API gives it: against the cluster's GPUs (the health probe's
    newest reading; GPU replicas on the GPU engine) and against each GPU asked about (serving/vram_fit/
    gpus.py's Gpu). VramEstimateError when the folder cannot be estimated."""
    from serving.vram_fit.report import on_gpu_figures

    gpus_per_replica = int(resolved_spec.get("gpus_per_replica", 0))
    need = estimate(resolved_spec["model_source"], resolved_spec.get("engine_kwargs"), max(1, gpus_per_replica))
    cluster = None
    if engine == "gpu" and gpus_per_replica > 0:
        report, memory = cluster_fit(need, resolved_spec)
        cluster = {
            "checked": report.checked, "fits": report.fits, "summary": report.summary(), "advice": report.advice(), "read_at": memory.read_at,
            "gpus": [{"node": g.node, "index": g.index, "name": g.name, "fits": g.fits, "error": g.error,
                      **({} if g.budget is None else on_gpu_figures(need, g.name, g.total_bytes, g.free_bytes))} for g in report.gpus],
        }
    return {
        "gpus_per_replica": need.gpus_per_replica, "max_model_len": need.max_model_len, "kv_bytes_per_token": need.kv_bytes_per_token,
        "weights_per_gpu_bytes": need.weights_per_gpu, "not_modelled": list(need.not_modelled), "cluster": cluster,
        "what_if": [{**on_gpu_figures(need, gpu.name, gpu.total_bytes, gpu.free_bytes), "total_source": gpu.source} for gpu in asked],
    }


def report_json(run: PreflightRun, *, saved: bool = True) -> dict:
    return {
        "id": run.pk,
        "status": run.status,
        "passed": run.passed,
        "can_be_forced": run.can_be_forced and not run.forced and not not_forceable_here(run),
        "model_key": run.model_key or None,
        "generation": run.generation,
        "trigger": run.trigger,
        "folder": run.folder,
        "config": run.config,
        "engine": run.engine or None,
        "runtime": {k: v for k, v in run.runtime.items() if k != "nodes"} | {"nodes": len(run.runtime.get("nodes", []))},
        "guards": run.results,
        "forced": {"by": run.forced_by_name, "reason": run.force_reason, "at": run.forced_at.isoformat()} if run.forced else None,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "url": run.get_absolute_url() if saved and run.pk else None,
    }


def claim(run_id: int) -> PreflightRun | None:
    """Take a pending run (one conditional UPDATE: two workers never run the same one)."""
    if not PreflightRun.objects.filter(pk=run_id, status=PreflightRun.Status.PENDING).update(status=PreflightRun.Status.RUNNING, started_at=timezone.now()):
        return None
    return PreflightRun.objects.select_related("owner").get(pk=run_id)


def run_for_deploy(run_id: int, client) -> PreflightRun | None:
    run = claim(run_id)
    if run is None:
        return None
    return execute(run, read_cluster_runtime(client), wait_for_secrets=True)


# --- The gate in front of every apply --------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    state: str  # "passed" | "pending" | "failed"
    run: PreflightRun
    message: str


def enqueue(run: PreflightRun) -> None:
    transaction.on_commit(lambda: task("gates.tasks.preflight_for_deploy").delay(run.pk))


def _stuck(run: PreflightRun) -> bool:
    """A run a worker took and never finished (the worker died): run it again."""
    if run.status != PreflightRun.Status.RUNNING or run.started_at is None:
        return False
    allowed = float(run.config.get("secret_timeout", 90)) + settings.GANTRY_SERVE_CALL_TIMEOUT_S + 120
    return (timezone.now() - run.started_at).total_seconds() > allowed


def fresh_cluster_runtime() -> Runtime | None:
    """The workers' reading of the cluster when it can be used as it is (younger than the TTL, the
    same nodes): what read_cluster_runtime would return without asking Ray. None otherwise."""
    reading = RuntimeReading.objects.filter(name=RuntimeReading.ONE).first()
    if reading is None or reading.read_at is None:
        return None
    if (timezone.now() - reading.read_at).total_seconds() >= settings.GANTRY_PREFLIGHT_RUNTIME_TTL_S:
        return None
    alive = _alive_node_ids()
    if alive and sorted(reading.node_ids) != alive:
        return None
    return Runtime.from_dict(reading.runtime)


def run_in_tick(run: PreflightRun) -> bool:
    """Run a deploy's preflight at once, in the reconciler's tick, when nothing in it can wait: no
    required secret (the secrets guard is the one that waits for them) and a fresh cluster reading
    (asking Ray for one can take a call's timeout). Saves the task round trips to the gates worker
    and back, which a deploy otherwise waits for. False: nothing was run; enqueue it."""
    if run.config.get("secrets"):
        return False
    runtime = fresh_cluster_runtime()
    if runtime is None:
        return False
    if not PreflightRun.objects.filter(pk=run.pk, status=PreflightRun.Status.PENDING).update(status=PreflightRun.Status.RUNNING, started_at=timezone.now()):
        return False
    run.refresh_from_db()
    execute(run, runtime, wait_for_secrets=False)
    return True


def verdict_for_apply(model) -> Verdict:
    """Whether the model's current spec may go to Serve. Reuses the run of this generation, or a
    passed run of the same spec when only the replica count changed since; otherwise starts one,
    in this tick when it can (run_in_tick), else as a task on the gates queue."""
    digest = spec_digest(model.resolved_spec)
    run = PreflightRun.objects.filter(model=model, trigger=PreflightRun.Trigger.DEPLOY).order_by("-created_at", "-id").first()
    reusable = run is not None and run.spec_digest == digest and (
        run.generation == model.generation or (run.passed and model.change_reason.startswith("scale"))
    )
    if not reusable:
        run = new_run(model.resolved_spec, trigger=PreflightRun.Trigger.DEPLOY, owner=model.owner, model=model)
        if not run_in_tick(run):
            enqueue(run)
        run.refresh_from_db()
    elif _stuck(run):
        PreflightRun.objects.filter(pk=run.pk, status=PreflightRun.Status.RUNNING).update(status=PreflightRun.Status.PENDING)
        enqueue(run)
        run.refresh_from_db()
    url = run.get_absolute_url()
    if not run.is_done:
        return Verdict("pending", run, f"Preflight #{run.pk} is checking versions, the GPU driver, prompts and secrets before the deploy ({url}).")
    if run.passed:
        return Verdict("passed", run, "")
    return Verdict("failed", run, f"Preflight #{run.pk} failed: {run.fail_summary()} Report: {url}")


# --- A person's decision ----------------------------------------------------------------------------

MIN_REASON_CHARS = 10


def not_forceable_here(run: PreflightRun) -> str:
    """Why a person cannot force this run ("" when they can). The deploy gate reads only the
    preflight a deploy ran (verdict_for_apply), so forcing a run from the page, the API or the CLI
    would record a decision that lets nothing through."""
    if run.model_id is None:
        return "This run checked a spec, not a model's deploy: deploy the spec, then force that deploy's preflight."
    if run.trigger != PreflightRun.Trigger.DEPLOY:
        deployed = PreflightRun.objects.filter(model_id=run.model_id, trigger=PreflightRun.Trigger.DEPLOY).order_by("-created_at", "-id").first()
        where = f"preflight #{deployed.pk} ({deployed.get_absolute_url()})" if deployed else "the one its next deploy runs"
        return f"Preflight #{run.pk} ran {run.get_trigger_display()}, not before a deploy: force the preflight the deploy ran, {where}."
    return ""



def force(run: PreflightRun, actor, reason: str) -> PreflightRun:
    """Deploy past a version skew, with the reason recorded beside who gave it; audited."""
    reason = (reason or "").strip()
    if len(reason) < MIN_REASON_CHARS:
        raise ForceRefused(f"Say why it is safe to deploy anyway (at least {MIN_REASON_CHARS} characters): the reason is kept with your name.", "reason")
    if len(reason) > 2000:
        raise ForceRefused("Keep the reason under 2,000 characters.", "reason")
    if not run.can_be_forced:
        if run.status != PreflightRun.Status.FAIL:
            raise ForceRefused(f"Preflight #{run.pk} did not fail ({run.status}): there is nothing to force.")
        kinds = ", ".join(r.title for r in run.failures if not r.forceable)
        raise ForceRefused(f"Only a version skew can be forced; {kinds} must be fixed (a missing secret or prompt variable breaks the model whoever signs for it).")
    elsewhere = not_forceable_here(run)
    if elsewhere:
        raise ForceRefused(elsewhere)
    with transaction.atomic():
        now = timezone.now()
        written = PreflightRun.objects.filter(pk=run.pk, forced_at__isnull=True).update(
            forced_by=actor, forced_by_name=actor.username, force_reason=reason, forced_at=now
        )
        if not written:
            raise ForceRefused(f"Preflight #{run.pk} was already forced.")
        AuditEntry.record(actor, "preflight.force", f"preflight #{run.pk} of {run.model_key or run.folder}", reason)
    run.refresh_from_db()
    if run.model_id:
        from serving.deployments import resume_after_force

        resume_after_force(run.model, run, actor)
    return run

