from django.apps import AppConfig


class HealthConfig(AppConfig):
    name = "health"
    verbose_name = "Health"

    def ready(self) -> None:
        from celery.signals import before_task_publish

        from health.probes.celery import stamp_sent_at

        # Every task Gantry sends carries its send time, so the queue probe can say how long the
        # oldest waiting one has waited.
        before_task_publish.connect(stamp_sent_at, weak=False, dispatch_uid="gantry-health-sent-at")
