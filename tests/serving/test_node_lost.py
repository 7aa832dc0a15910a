"""A Ray node dies with a model's replica on it: the model's events name the machine, once.

Serve only reports the application UNHEALTHY ("a replica died"); which machine went, when and why
is what an admin needs to act on. FakeServe loses a node the way Ray does: its replicas vanish,
the application is UNHEALTHY for a read, then Serve places replacements where there is room.
"""
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from serving.choices import EventKind, State
from serving.models import ServeEvent
from serving.reconcile_watch import NODE_LOST_LOOKUP_S
from serving.reconciler import reconcile
from tests.serving.factories import create_model
from tests.serving.fake_serve import FakeServe, reset_shared

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "gpu_engine")]


@pytest.fixture
def two_nodes(settings) -> FakeServe:
    settings.GANTRY_SERVE_CLIENT = "tests.serving.fake_serve.shared_fake"
    return reset_shared(FakeServe(nodes={"gpu-a": 1, "gpu-b": 1}))


def tick(fake, times: int = 1):
    for _ in range(times):
        reconcile(fake)


def node_events(model) -> list[ServeEvent]:
    return list(ServeEvent.objects.filter(model=model, kind=EventKind.NODE_LOST).order_by("id"))


def refreshed_state(model) -> str:
    model.refresh_from_db()
    return model.state


def running_on(fake, model) -> str:
    (node,) = fake.apps[model.model_key]["placed"].values()
    return node


def test_the_model_whose_replica_was_on_the_lost_node_says_which_node_went_and_why(alice, bob, two_nodes):
    hit, spared = create_model(alice, gpus_per_replica=1), create_model(bob, "chat", gpus_per_replica=1)
    tick(two_nodes, 3)
    hit.refresh_from_db()
    assert hit.state == State.RUNNING
    lost = running_on(two_nodes, hit)
    assert running_on(two_nodes, spared) != lost

    two_nodes.lose_node(lost, "health check failed due to missing too many heartbeats", died_at=time.time())
    tick(two_nodes)

    hit.refresh_from_db()
    assert hit.state == State.DEPLOYING
    (event,) = node_events(hit)
    assert f"Ray lost node {lost}" in event.message
    assert "missing too many heartbeats" in event.message and "while it ran this model's replicas" in event.message
    assert event.payload["node_id"] == lost
    assert node_events(spared) == []


def test_a_lost_node_is_named_once_however_long_the_model_stays_unhealthy(alice, two_nodes):
    model = create_model(alice, gpus_per_replica=1)
    tick(two_nodes, 3)
    two_nodes.lose_node(running_on(two_nodes, model), unhealthy_reads=3)
    tick(two_nodes, 6)

    assert len(node_events(model)) == 1
    assert two_nodes.asked.count("lost_nodes") == 1  # named at once: not asked again


def test_serve_calling_the_model_unhealthy_is_one_event_however_many_ticks_it_lasts(alice, two_nodes):
    model = create_model(alice, gpus_per_replica=1)
    tick(two_nodes, 3)
    two_nodes.lose_node(running_on(two_nodes, model), unhealthy_reads=3)
    tick(two_nodes, 4)

    unhealthy = ServeEvent.objects.filter(model=model, kind=EventKind.SERVE_STATUS, message__contains="UNHEALTHY")
    assert unhealthy.count() == 1, [event.message for event in unhealthy]
    (event,) = unhealthy
    assert (event.from_state, event.to_state) == (State.RUNNING, State.DEPLOYING)


def test_a_node_ray_declares_dead_only_after_serve_said_unhealthy_is_named_on_a_later_tick(alice, two_nodes):
    """Serve's health checks time out before Ray's heartbeats do: at the first UNHEALTHY the node
    is still ALIVE for Ray."""
    model = create_model(alice, gpus_per_replica=1)
    tick(two_nodes, 3)
    lost = running_on(two_nodes, model)
    two_nodes.lose_node(lost, declared=False, unhealthy_reads=3)
    tick(two_nodes, 2)
    assert refreshed_state(model) == State.DEPLOYING and node_events(model) == []

    two_nodes.declare_dead(lost)
    tick(two_nodes)
    (event,) = node_events(model)
    assert event.payload["node_id"] == lost


def test_the_lookup_stops_a_while_after_serve_said_unhealthy(alice, two_nodes):
    """A replica that crashed on a healthy node is no node's fault: the reconciler stops asking Ray
    about dead nodes once Ray would long have declared one."""
    model = create_model(alice, gpus_per_replica=1)
    tick(two_nodes, 3)
    two_nodes.lose_node(running_on(two_nodes, model), declared=False, unhealthy_reads=50)
    tick(two_nodes)
    asked = two_nodes.asked.count("lost_nodes")
    ServeEvent.objects.filter(model=model, kind=EventKind.SERVE_STATUS, to_state=State.DEPLOYING).update(
        created_at=timezone.now() - timedelta(seconds=NODE_LOST_LOOKUP_S + 1)
    )
    tick(two_nodes, 3)
    assert two_nodes.asked.count("lost_nodes") == asked


def test_a_node_lost_before_the_model_last_became_running_is_not_blamed_again(alice, two_nodes):
    model = create_model(alice, gpus_per_replica=1)
    tick(two_nodes, 3)
    two_nodes.lose_node(running_on(two_nodes, model), died_at=time.time() - 3600)
    tick(two_nodes)

    model.refresh_from_db()
    assert model.state == State.DEPLOYING  # Serve said UNHEALTHY: that is recorded either way
    assert node_events(model) == []


def test_a_client_that_cannot_tell_which_node_went_still_records_the_unhealthy_model(alice, two_nodes, monkeypatch):
    model = create_model(alice, gpus_per_replica=1)
    tick(two_nodes, 3)
    two_nodes.lose_node(running_on(two_nodes, model))

    def state_api_down(*args, **kwargs):
        raise TimeoutError("the state API did not answer")

    monkeypatch.setattr(two_nodes, "lost_nodes", state_api_down)
    tick(two_nodes)

    model.refresh_from_db()
    assert model.state == State.DEPLOYING
    assert node_events(model) == []


def test_serve_places_the_replacement_on_the_surviving_node_and_the_model_runs_again(alice, settings):
    settings.GANTRY_SERVE_CLIENT = "tests.serving.fake_serve.shared_fake"
    fake = reset_shared(FakeServe(nodes={"gpu-a": 2, "gpu-b": 2}))
    model = create_model(alice, gpus_per_replica=1)
    tick(fake, 3)
    lost = running_on(fake, model)
    fake.lose_node(lost)
    tick(fake, 4)

    model.refresh_from_db()
    assert model.state == State.RUNNING
    assert running_on(fake, model) != lost
    assert [e.kind for e in ServeEvent.objects.filter(model=model).order_by("id")][-3:] == [EventKind.SERVE_STATUS, EventKind.NODE_LOST, EventKind.RUNNING]
