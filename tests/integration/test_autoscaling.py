"""Autoscaling end to end on a real Ray head with the real CPU engine, through Gantry's own path: the
API creates an autoscaled model, the reconciler (the code beat runs) deploys it, a burst of requests
through the router takes it from one replica to more and back after the downscale delay with no
failed request, each decision of Serve's autoscaler lands as an event and on the model's page, and a
change of the target and bounds restarts no replica (same replica id, actor and PID).

Scaled to this 2-core machine: a second vLLM replica takes a minute or more to start here, so every
wait is on Serve's or Gantry's own status, never a fixed sleep.
"""
from __future__ import annotations

import time

import pytest

from serving.choices import EventKind, State
from serving.cluster import get_client
from serving.models import ServeEvent, ServeModel
from serving.reconciler import reconcile
from tests.integration.test_serving_end_to_end import Api, drive, suffix
from tests.ray_cluster import ChatLoad, get_json, replicas

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

BURST_CLIENTS = 8  # each keeps one request in flight: 8 ongoing against a target of 1 per replica
SCALE_UP_WITHIN_S = 420  # Serve decides in seconds; the new replica's engine takes the rest


def autoscaled_spec(name: str) -> str:
    return (
        f"model_id: {name}\nmodel_source: $HOME/common/hf/tiny-llama\n"
        "autoscaling: {min_replicas: 1, max_replicas: 3, target_ongoing_requests: 1, upscale_delay_s: 1, downscale_delay_s: 10}\n"
    )


def ticks_until(key: str, check, timeout_s: float, trace: list) -> ServeModel:
    """Reconcile as beat would (a full tick every second) until `check(model, app)` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        reconcile(get_client())
        model = ServeModel.objects.get(model_key=key)
        app = get_client().status(targets=True).get(key)
        trace.append((app.running_replicas, app.target_replicas) if app else None)
        if app is not None and check(model, app):
            return model
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s; (running, target) trace: {trace[-20:]}")
        time.sleep(1)


def autoscaled_events(model: ServeModel) -> list[str]:
    return list(ServeEvent.objects.filter(model=model, kind=EventKind.AUTOSCALED).order_by("id").values_list("message", flat=True))


def test_an_autoscaled_model_scales_with_a_burst_and_changes_its_bounds_in_place(gantry, client, alice):
    api = Api(client, alice)
    key = api.create(autoscaled_spec(suffix("auto")))["model_key"]
    try:
        drive(key, lambda m: m.state == State.RUNNING)
        trace: list = []

        # A burst: Serve's autoscaler wants more replicas within seconds, one more runs after its start.
        started = time.monotonic()
        with ChatLoad(gantry, key, BURST_CLIENTS) as burst:
            ticks_until(key, lambda m, app: (app.target_replicas or 0) > 1, 120, trace)
            decided = time.monotonic() - started
            ticks_until(key, lambda m, app: app.running_replicas > 1, SCALE_UP_WITHIN_S, trace)
            second = time.monotonic() - started
            client.force_login(alice)
            page = client.get(f"/serving/{key}").content.decode()
        ended = time.monotonic()
        # What the reconciler saw, not only what Serve says now: its event for the way down is the point.
        model = ticks_until(key, lambda m, app: app.running_replicas == 1 and m.observed_target_replicas == 1, 240, trace)
        back = time.monotonic() - ended
        print(
            f"\nburst of {BURST_CLIENTS} clients: more replicas wanted after {decided:.1f} s, a second RUNNING after {second:.1f} s, "
            f"back to one {back:.1f} s after the burst (downscale delay 10 s); {burst.ok} answered, {len(burst.failed)} failed"
        )
        assert burst.failed == [], burst.failed[:5]
        assert burst.ok > 0
        assert model.state == State.RUNNING
        events = autoscaled_events(model)
        assert any(e.startswith("Serve's autoscaler scales up: 1 → ") for e in events), events
        assert any(e.startswith("Serve's autoscaler scales down: ") and "→ 1 replica(s)" in e for e in events), events
        assert "Autoscaled by Serve from 1 to 3 replica(s)" in page and 'id="replicas-desired">' in page

        # A new target and bounds: applied in place, while it keeps answering. Serve reconfigures the
        # running replica (its state reads UPDATING for a moment); a restart would stop it and start
        # another, with another id and PID.
        (original,) = replicas(gantry, key).items()
        seen = []
        with ChatLoad(gantry, key, 2) as load:
            api.patch(key, {"autoscaling": {"target_ongoing_requests": 3, "max_replicas": 2, "downscale_delay_s": 20}})
            model = ticks_until(key, lambda m, app: m.state == State.RUNNING and m.generation == 2 and bounds(gantry, key) == (3, 2), 120, trace)
            for _ in range(5):
                seen.append(every_replica(gantry, key).get(original[0]))
                time.sleep(1)
        assert model.revisions.first().reason == "autoscaling bounds"
        assert all(found is not None and found[:2] == original[1] and found[2] != "STOPPING" for found in seen), (original, seen)
        assert replicas(gantry, key).get(original[0]) == original[1], "changing the autoscaling target replaced the replica"
        assert load.failed == [] and load.ok > 0, load.failed[:5]
        print(f"bounds changed in place: replica {original} kept ({[f[2] for f in seen]}); {load.ok} requests answered meanwhile, 0 failed")
    finally:
        # The session's Ray head is shared: leave no application behind (test_ray_serve counts them).
        api.delete(key)
        drive(key, lambda m: m.state == State.DELETED, timeout_s=180)


def every_replica(head, key: str) -> dict[str, tuple[str, int, str]]:
    """replica id -> (actor id, pid, state) of every replica Serve lists for `key`, whatever its
    state (actor id and PID None while it waits for its actor)."""
    _, details = get_json(f"{head.dashboard_url}/api/serve/applications/")
    found = {}
    for deployment in details["applications"].get(key, {}).get("deployments", {}).values():
        for replica in deployment["replicas"]:
            # A replica Serve has only just asked for lists no actor or PID yet (seen in CI).
            found[replica["replica_id"]] = (replica.get("actor_id"), replica.get("pid"), replica["state"])
    return found


def bounds(head, key: str) -> tuple[float, int] | None:
    _, details = get_json(f"{head.dashboard_url}/api/serve/applications/")
    app = details["applications"].get(key)
    if app is None:
        return None
    (deployment,) = app["deployments"].values()
    config = deployment["deployment_config"].get("autoscaling_config") or {}
    return config.get("target_ongoing_requests"), config.get("max_replicas")
