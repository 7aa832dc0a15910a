"""The serve probe reads the status snapshot the reconciler writes (serving.snapshot.record, the real
writer) and names what is unhealthy: the router first, then applications, then replicas."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from health.choices import Status
from health.probes import serve
from serving import snapshot
from serving.cluster.serve import ROUTER_APP, AppStatus, ClusterResources, DeploymentStatus

pytestmark = pytest.mark.django_db


def app(name: str, status: str = "RUNNING", **replicas: int) -> AppStatus:
    return AppStatus(name, status, "", (DeploymentStatus(f"LLMServer:{name}", "HEALTHY", "", replicas or {"RUNNING": 1}),))


def seen(*apps: AppStatus, at=None) -> None:
    listed = {a.name: a for a in apps}
    snapshot.record(listed, ClusterResources(0, 0, 16, 16), "cpu", at or timezone.now())


def test_a_healthy_router_and_models_are_ok():
    seen(app(ROUTER_APP), app("alice-1-demo"), app("bob-1-chat", "DEPLOYING", STARTING=1))
    status, detail = serve.read_serve()
    assert status == Status.OK and "2 model application(s) healthy; 1 changing" in detail


def test_a_router_that_is_not_running_is_critical_whatever_the_models_say():
    seen(app(ROUTER_APP, "DEPLOY_FAILED"), app("alice-1-demo"))
    status, detail = serve.read_serve()
    assert status == Status.CRITICAL and ROUTER_APP in detail and "every OpenAI call" in detail
    seen(app("alice-1-demo"))
    assert serve.read_serve()[0] == Status.CRITICAL


def test_an_unhealthy_application_is_critical_and_named():
    seen(app(ROUTER_APP), app("alice-1-demo", "UNHEALTHY", RUNNING=1, UNHEALTHY=1), app("bob-1-chat"))
    status, detail = serve.read_serve()
    assert status == Status.CRITICAL and "alice-1-demo (UNHEALTHY)" in detail and "bob-1-chat" not in detail


def test_replicas_recovering_in_a_running_application_warn():
    seen(app(ROUTER_APP), app("alice-1-demo", RUNNING=1, RECOVERING=1))
    status, detail = serve.read_serve()
    assert status == Status.WARN and "alice-1-demo (RECOVERING 1)" in detail


def test_a_stale_snapshot_is_unknown_not_healthy(settings):
    settings.GANTRY_RECONCILE_INTERVAL_S = 10
    seen(app(ROUTER_APP), app("alice-1-demo"), at=timezone.now() - timedelta(minutes=5))
    status, detail = serve.read_serve()
    assert status == Status.UNKNOWN and "stale" in detail


def test_no_snapshot_yet_is_unknown():
    status, detail = serve.read_serve()
    assert status == Status.UNKNOWN and "unavailable" in detail
