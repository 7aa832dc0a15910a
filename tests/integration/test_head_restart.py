"""The Ray head crashes during a deploy: the model is never stuck, nothing else is lost.

A private head (not the session's shared one: this test kills it) runs the router and a deploying
model. Its whole process tree is SIGKILLed, as a crashed machine would be. While it is down every
reconcile tick returns quickly with a SERVE_UNAVAILABLE event and changes no state; the process's
Ray driver is let go (a driver left attached to a dead GCS terminates its process after 60 s, and
to a head that comes back it is refused forever with WrongClusterID). A new head then starts on the
same GCS, dashboard and Serve ports: the client reconnects, restarts Serve and the router, the
reconciler's drift path re-applies the model, and it ends RUNNING and answers through the router.
Another user's queued model and its events come through untouched.
"""
from __future__ import annotations

import time
import uuid

import openai
import pytest
from django.conf import settings as django_settings

from serving.choices import EventKind, State
from serving.cluster import get_client
from serving.models import ServeEvent, ServeModel
from serving.reconciler import reconcile
from tests.integration.test_serving_end_to_end import Api, spec, suffix
from tests.ray_cluster import RayHead, listed_models, router_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

# A tick while the head is down must not wait for Ray (TCP check: milliseconds; dropping the
# driver: a few seconds); generous for a loaded 2-core machine.
TICK_WHILE_DOWN_S = 45


@pytest.fixture(scope="module")
def own_head():
    """A head of this module's own, pointed at like conftest's ray_head; stopped and the settings
    restored at the end (the driver too: the session's shared head must not see ours)."""
    import ray

    head = RayHead()
    saved = {name: getattr(django_settings, name) for name in ("RAY_ADDRESS", "RAY_DASHBOARD_URL", "GANTRY_SERVE_PORT")}
    try:
        if ray.is_initialized():
            ray.shutdown()  # attached to another head (the session's): this module talks to its own
        head.wait_until_up()
        django_settings.RAY_ADDRESS = head.address
        django_settings.RAY_DASHBOARD_URL = head.dashboard_url
        django_settings.GANTRY_SERVE_PORT = head.serve_port
        yield head
    finally:
        if ray.is_initialized():
            ray.shutdown()
        from ray.serve import context as serve_context

        serve_context._set_global_client(None)
        head.stop()
        for name, value in saved.items():
            setattr(django_settings, name, value)


@pytest.fixture
def gantry(own_head, tiny_model, settings, tmp_path):
    settings.GANTRY_SERVE_CLIENT = "serving.cluster.RayServeClient"
    settings.GANTRY_ENGINE = "cpu"
    settings.GANTRY_HF_ROOT = tiny_model.parent
    settings.GANTRY_USERS_ROOT = tmp_path / "users"
    settings.GANTRY_DATASETS_ROOT = tmp_path / "datasets"
    settings.GANTRY_DEPLOY_TIMEOUT_S = 900
    settings.GANTRY_PENDING_TIMEOUT_S = 3600  # the GPU-less bystander stays QUEUED, never FAILED
    return own_head


def tick() -> float:
    started = time.monotonic()
    reconcile(get_client())
    return time.monotonic() - started


def snapshot(key: str) -> tuple:
    model = ServeModel.objects.get(model_key=key)
    events = list(ServeEvent.objects.filter(model=model).order_by("id").values_list("id", "kind", "message"))
    return (model.state, model.generation, model.num_replicas, model.applied_config_hash, model.error_summary), events


def test_a_head_killed_during_a_deploy_recovers_and_loses_nothing(gantry, client, alice, bob):
    head = gantry
    alices, bobs = Api(client, alice), Api(client, bob)
    created = alices.create(spec(suffix("crash")))
    key, model_id = created["model_key"], created["model_id"]

    tick()  # connects, starts Serve and the router, applies the model
    model = ServeModel.objects.get(model_key=key)
    assert model.state == State.DEPLOYING, (model.state, list(ServeEvent.objects.filter(model=model)[:3]))

    # Another user's model, queued behind a GPU it cannot get: it stays QUEUED through everything,
    # with a deadline far away, so the whole run leaves it alone except for observation events.
    neighbour = bobs.create(f"model_id: {suffix('bystander')}\nmodel_source: $HOME/common/hf/tiny-llama\ngpus_per_replica: 1\n")
    tick()
    assert ServeModel.objects.get(model_key=neighbour["model_key"]).state == State.QUEUED
    neighbour_before = snapshot(neighbour["model_key"])
    crash_events_before = {row[0] for row in snapshot(key)[1]}

    killed = head.crash()
    crashed_at = time.monotonic()

    # Down: every tick is quick, raises nothing, changes no state, says why.
    durations = [tick() for _ in range(3)]
    assert max(durations) < TICK_WHILE_DOWN_S, durations
    state, events = snapshot(key)
    assert state[0] == State.DEPLOYING
    unavailable = [e for e in events if e[1] == EventKind.SERVE_UNAVAILABLE]
    assert unavailable and "does not accept connections" in unavailable[-1][2], events[-3:]
    assert crash_events_before <= {row[0] for row in events}, "events of the crashed model were lost"
    assert snapshot(neighbour["model_key"])[0] == neighbour_before[0]

    head.restart()
    head.wait_until_up()
    restarted_at = time.monotonic()
    print(f"\nhead: {len(killed)} processes killed; down {restarted_at - crashed_at:.1f} s (ticks took {[round(d, 1) for d in durations]} s)")

    # Back: the client reconnects on the next tick, Serve and the router start on the same port,
    # the reconciler re-applies the model it lost (drift) and the model runs again.
    deadline = time.monotonic() + 600
    first_tick = None
    while True:
        took = tick()
        first_tick = first_tick if first_tick is not None else took
        model = ServeModel.objects.get(model_key=key)
        if model.state in (State.RUNNING, State.FAILED):
            break
        assert time.monotonic() < deadline, f"{key} still {model.state} 600 s after the head returned: {list(ServeEvent.objects.filter(model=model)[:4])}"
        time.sleep(2)
    recovered_in = time.monotonic() - restarted_at
    print(f"after restart: first tick {first_tick:.1f} s, model {model.state} after {recovered_in:.1f} s")
    assert model.state == State.RUNNING, f"FAILED: {model.error_summary}"

    kinds = list(ServeEvent.objects.filter(model=model).order_by("id").values_list("kind", flat=True))
    assert EventKind.SERVE_UNAVAILABLE in kinds and EventKind.DRIFT in kinds and kinds[-1] == EventKind.RUNNING, kinds
    assert model.revisions.count() == 2 and model.revisions.first().reason.startswith("drift repair"), list(model.revisions.values_list("number", "reason"))
    assert crash_events_before <= set(ServeEvent.objects.filter(model=model).values_list("id", flat=True))

    assert model_id in listed_models(head)
    api = openai.OpenAI(base_url=router_url(head, "/v1"), api_key="not-needed", max_retries=0, timeout=60)
    reply = api.chat.completions.create(model=model_id, messages=[{"role": "user", "content": "Back?"}], max_tokens=8)
    assert reply.model == model_id and reply.usage.completion_tokens > 0

    # The bystander: same state, generation, spec and error; every old event still there.
    after = snapshot(neighbour["model_key"])
    assert after[0] == neighbour_before[0]
    assert set(neighbour_before[1]) <= set(after[1])

    # Crashed and back again before any tick saw it down: the driver still holds the old cluster,
    # which the new head refuses (WrongClusterID). The next tick reconnects instead of failing forever.
    head.crash()
    head.restart()
    head.wait_until_up()
    took = tick()
    assert ServeModel.objects.get(model_key=key).state in (State.RUNNING, State.DEPLOYING)
    assert "gantry-router" in get_client().status(), "the client did not reconnect to the new head"
    print(f"crash + restart with no tick between: next tick {took:.1f} s")

    # Deleting works on the new cluster (the crashed model's application is gone with the old one).
    alices.delete(key)
    bobs.delete(neighbour["model_key"])
    deadline = time.monotonic() + 120
    while ServeModel.objects.filter(model_key__in=[key, neighbour["model_key"]]).exclude(state=State.DELETED).exists():
        assert time.monotonic() < deadline, "deleting after the recovery did not finish"
        tick()
        time.sleep(1)
