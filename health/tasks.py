"""Celery tasks of the health app; they run on the `health` queue (CELERY_TASK_ROUTES)."""
from celery import shared_task

from health.alerts import deliver_alerts
from health.cycle import all_probes, run_cycle


@shared_task
def ping() -> str:
    """A no-op a deploy script or a test can send through the broker to see a worker answer."""
    return "pong"


@shared_task
def run_probes() -> int:
    """One probe cycle (beat, every GANTRY_HEALTH_INTERVAL_S), then the alerts its flips call for;
    alerts that failed on an earlier cycle go out first. Returns the number of checks read."""
    results = run_cycle(all_probes())
    deliver_alerts()
    return len(results)


@shared_task
def thin_gpu_samples() -> dict[str, int]:
    """Keep the GPU samples' window bounded (beat, every 5 minutes): see health/samples.py."""
    from health.samples import thin_gpu_samples as thin

    return thin()


@shared_task
def reap_zombie(node_id: str, pid: int, started: int, user_id: int) -> str:
    """A reap an admin confirmed on the panel (health/reaping.py); returns the audit's detail."""
    from health.reaping import reap

    return reap(node_id, pid, started, user_id).detail


@shared_task
def remove_segment(node_id: str, name: str, user_id: int) -> str:
    from health.reaping import remove_segment as remove

    return remove(node_id, name, user_id).detail
