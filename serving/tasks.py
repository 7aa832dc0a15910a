"""Celery tasks of the serving app; they run on the `serve` queue (CELERY_TASK_ROUTES)."""
import logging

from celery import shared_task
from django.conf import settings

log = logging.getLogger(__name__)


@shared_task(
    # A tick is bounded call by call (GANTRY_SERVE_CALL_TIMEOUT_S); these bound the task as a whole,
    # so a tick that hangs anyway ends, releases its lease (soft limit) or loses it within one TTL (hard).
    soft_time_limit=settings.GANTRY_RECONCILE_TIME_LIMIT_S,
    time_limit=settings.GANTRY_RECONCILE_TIME_LIMIT_S + 30,
)
def reconcile(followup: bool = False) -> dict:
    """One reconcile tick. Beat runs it on a timer; every change enqueues it on commit; while a model
    is DEPLOYING or DELETING it schedules itself again within about a second."""
    from serving.cluster import get_client
    from serving.lease import claim_followup
    from serving.reconciler import followup_due
    from serving.reconciler import reconcile as run

    report = run(get_client(), ask_rerun=not followup, followup=followup)
    if report.reason:
        log.info("reconcile: %s", report.reason)
    delay_s = settings.GANTRY_RECONCILE_FOLLOWUP_MS / 1000
    # Only after a tick that ran (the holder of the lease schedules its own), paced from its end,
    # and not while Serve is unreachable: beat's period is the pace for retrying a dead cluster.
    if report.ran and not report.serve_unavailable and followup_due() and claim_followup(delay_s):
        reconcile.apply_async(kwargs={"followup": True}, countdown=delay_s)
    if report.needs_full_tick:
        reconcile.delay()
    return {"ran": report.ran, "applied": report.applied, "deleted": report.deleted, "unknown": report.unknown_apps}


@shared_task
def observe_vram(model_id: int, generation: int) -> dict:
    """Record a GPU model's VRAM estimate against what vLLM logged at start, and NVML's reading, once
    it runs (serving/vram_observations.py): the estimate is scored deploy after deploy, not claimed."""
    from health.node_readings import node_gpus, node_processes
    from serving.choices import State
    from serving.cluster import get_client
    from serving.models import ServeModel
    from serving.vram_fit.report import replica_processes
    from serving.vram_observations import record

    model = ServeModel.objects.filter(pk=model_id, generation=generation, state=State.RUNNING).first()
    if model is None:
        return {"model": model_id, "observed": False, "why": "no longer running this generation"}
    client = get_client()
    replicas = replica_processes(model.model_key, client.serve_actors(), node_processes(client))
    observation = record(model, node_gpus(client), replicas, client.engine_log(model.model_key))
    return {"model": model_id, "observed": observation is not None}


@shared_task(queue="health", soft_time_limit=max(settings.GANTRY_ENGINE_METRICS_INTERVAL_S * 3, 30))
def scrape_engine_metrics() -> dict:
    """Read every Ray node's metrics endpoint and store each model's engine figures
    (serving/engine_metrics.py). Beat runs it every GANTRY_ENGINE_METRICS_INTERVAL_S on the health
    queue; a run that started late is dropped (expires), since the next one reads fresher anyway."""
    from serving import engine_metrics
    from serving.cluster import get_client

    return engine_metrics.scrape(get_client())
