"""The reconciler holds when the cluster is slow, partial or hostile: calls that hang, GPUs spread
over nodes or not yet placed, a model folder swapped under it, Serve and the database disagreeing,
one model's error, and the engine decided by the cluster rather than by the host asking."""
from __future__ import annotations

import http.server
import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import OperationalError, connection
from django.utils import timezone

from serving import deployments, engine, reconciler
from serving.choices import EventKind, State
from serving.cluster import RayServeClient
from serving.models import Lease, ServeEvent, ServeModel, ServeRevision
from serving.reconciler import LEASE_NAME, reconcile
from tests.serving.factories import create_model, spec
from tests.serving.fake_serve import FakeServe

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots")]


def fresh(model) -> ServeModel:
    return ServeModel.objects.get(pk=model.pk)


def events(model, kind) -> list[ServeEvent]:
    return list(ServeEvent.objects.filter(model=model, kind=kind).order_by("created_at", "id"))


def tick(fake, times: int = 1):
    for _ in range(times):
        report = reconcile(fake)
    return report


# --- 3. the engine comes from the cluster, not from the host asking --------------------------------
def test_a_cluster_that_reports_gpus_gets_gpu_configs_from_a_process_without_nvidia_smi(alice, settings, monkeypatch, fake_serve):
    settings.GANTRY_ENGINE = "auto"
    monkeypatch.setenv("PATH", "/nonexistent")  # as in compose's web and worker containers
    engine._nvidia_gpu_present.cache_clear()
    try:
        model = create_model(alice, gpus_per_replica=1)
        tick(fake_serve)
        config = fake_serve.calls[0][2]
        assert config["placement_group_config"]["bundles"] == [{"GPU": 1, "CPU": 1}]
        assert "accelerator_config" not in config  # not the CPU recipe
        assert fresh(model).state == State.DEPLOYING
        # The web process, which never asks Ray, now defaults new specs to GPU replicas too.
        assert engine.current_engine() == "gpu"
        other, _ = deployments.submit_spec(alice, spec("other"))
        assert other.gpus_per_replica == 1
    finally:
        engine._nvidia_gpu_present.cache_clear()


def test_a_cluster_without_gpus_gets_the_cpu_recipe(alice, settings, fake_serve):
    settings.GANTRY_ENGINE = "auto"
    fake_serve.total_gpus = 0
    create_model(alice, gpus_per_replica=0)
    tick(fake_serve)
    assert fake_serve.calls[0][2]["accelerator_config"] == {"kind": "cpu"}
    assert engine.current_engine() == "cpu"


# --- 5. every Serve call is bounded; a hung call ends the tick, not the reconciler -----------------
@pytest.mark.usefixtures("gpu_engine")
def test_a_status_call_that_hangs_ends_the_tick_releases_the_lease_and_the_next_tick_runs(alice, settings, fake_serve):
    settings.GANTRY_SERVE_CALL_TIMEOUT_S = 1
    model = create_model(alice)
    fake_serve.hang = {"status"}
    try:
        started = time.monotonic()
        report = tick(fake_serve)
        assert time.monotonic() - started < 5
        assert report.serve_unavailable
        (event,) = events(model, EventKind.SERVE_UNAVAILABLE)
        assert "did not answer status within 1 s" in event.message
        assert Lease.objects.get(name=LEASE_NAME).holder == ""

        fake_serve.hang = set()
        report = tick(fake_serve)
        assert report.ran and report.applied == [model.model_key]
        assert fresh(model).state == State.DEPLOYING
    finally:
        fake_serve.release.set()


@pytest.mark.usefixtures("gpu_engine")
def test_an_apply_that_hangs_stops_calling_serve_for_the_rest_of_the_tick(alice, bob, settings, fake_serve):
    settings.GANTRY_SERVE_CALL_TIMEOUT_S = 1
    first, second = create_model(alice, "first"), create_model(bob, "second")
    fake_serve.hang = {"apply_model"}
    try:
        started = time.monotonic()
        tick(fake_serve)
        assert time.monotonic() - started < 5  # one bound, not one per model
        assert fresh(first).state == fresh(second).state == State.QUEUED
        assert not ServeRevision.objects.exists()
        assert "did not answer apply_model" in events(first, EventKind.SERVE_UNAVAILABLE)[0].message
        assert events(second, EventKind.SERVE_UNAVAILABLE), "the models after it are told why they wait"
        assert Lease.objects.get(name=LEASE_NAME).holder == ""
    finally:
        fake_serve.release.set()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("gpu_engine")
def test_the_lease_outlives_every_serve_call_because_it_is_renewed_before_each(alice, settings):
    settings.GANTRY_SERVE_CALL_TIMEOUT_S = 5
    create_model(alice)
    left: list[float] = []

    class Watching(FakeServe):
        def _enter(self, method):
            lease = Lease.objects.get(name=LEASE_NAME)
            left.append((lease.expires_at - timezone.now()).total_seconds())
            super()._enter(method)

    tick(Watching(gpus=8))
    assert len(left) >= 4  # ensure_started, status, cluster_resources, apply_model
    assert min(left) > settings.GANTRY_SERVE_CALL_TIMEOUT_S


def test_the_reconcile_task_has_time_limits_and_the_lease_outlasts_a_call(settings):
    from serving.tasks import reconcile as task

    assert task.soft_time_limit == settings.GANTRY_RECONCILE_TIME_LIMIT_S
    assert task.time_limit > task.soft_time_limit
    assert reconciler.lease_ttl() > timedelta(seconds=settings.GANTRY_SERVE_CALL_TIMEOUT_S)


class DatabaseOutage:
    """The test database goes away for real: PostgreSQL ends every session on it and refuses new
    ones until `seconds` have passed (what a restart or a failover looks like to a client)."""

    def __init__(self, seconds: float):
        import psycopg

        self.name = connection.settings_dict["NAME"]
        params = connection.get_connection_params()
        params.update(dbname="postgres", autocommit=True)
        params.pop("cursor_factory", None)
        params.pop("context", None)
        self.admin = psycopg.connect(**params)
        self.seconds = seconds
        self.ended: float | None = None
        self.timer: threading.Timer | None = None

    def begin(self) -> None:
        self._allow(False)
        self.admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [self.name])
        self.timer = threading.Timer(self.seconds, self.end)
        self.timer.start()

    def end(self) -> None:
        self._allow(True)
        self.ended = self.ended or time.monotonic()

    def _allow(self, allowed: bool) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')

    def close(self) -> None:
        if self.timer:
            self.timer.cancel()
        self.end()
        self.admin.close()


@pytest.fixture
def outage():
    made = DatabaseOutage(seconds=3)
    yield made
    made.close()
    connection.close()  # the next test starts on a fresh session


@pytest.mark.django_db(transaction=True)
def test_a_tick_the_database_went_away_under_lets_go_of_the_lease_as_soon_as_it_is_back(alice, outage):
    create_model(alice)

    class CutMidTick(FakeServe):
        def status(self, *, targets=False):
            apps = super().status(targets=targets)
            outage.begin()  # the tick's next query finds the database gone
            return apps

    with pytest.raises(OperationalError):
        reconcile(CutMidTick(gpus=8))
    returned = time.monotonic()
    outage.timer.join()
    connection.close()  # the test's own session ended with the outage too
    lease = Lease.objects.get(name=LEASE_NAME)
    assert lease.holder == "" and lease.expires_at is None, "the next tick would wait out the TTL"
    # Freed within a retry of the database's return, not a TTL (2.5 min here) later.
    assert outage.ended <= returned < outage.ended + reconciler.RELEASE_RETRY_S + 2
    assert reconcile(FakeServe(gpus=8)).ran


# --- 6. the database never claims what Serve does not do -------------------------------------------
def occupy(fake: FakeServe, gpus: int) -> None:
    """Someone else's application takes `gpus` GPUs on node-1."""
    app = fake._app({"placement_group_config": {"bundles": [{"GPU": 1}] * gpus}}, 1, "RUNNING", 0)
    app.update(replica_ids=["other#1"], placed={"other#1": "node-1"})
    fake.apps["someone-elses"] = app


@pytest.mark.usefixtures("gpu_engine")
def test_a_running_model_serve_lost_that_cannot_get_gpus_back_is_not_running_and_fails_at_the_deadline(alice, fake_serve):
    fake_serve.total_gpus = 1
    model = create_model(alice)
    tick(fake_serve, 2)
    assert fresh(model).state == State.RUNNING
    del fake_serve.apps[model.model_key]
    occupy(fake_serve, 1)  # its GPU went to another application meanwhile

    tick(fake_serve, 4)
    now = fresh(model)
    assert now.state == State.DEPLOYING  # honest: Serve runs nothing for it
    assert len(events(model, EventKind.DRIFT)) == 1 and len(events(model, EventKind.PENDING_RESOURCES)) == 1
    ServeModel.objects.filter(pk=model.pk).update(deadline=timezone.now() - timedelta(seconds=1))
    tick(fake_serve)
    now = fresh(model)
    assert now.state == State.FAILED and "No GPUs became free" in now.error_summary


@pytest.mark.usefixtures("gpu_engine")
def test_a_drift_repair_serve_refuses_fails_the_model_once_instead_of_claiming_it_still_serves(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    del fake_serve.apps[model.model_key]
    fake_serve.fail_apply[model.model_key] = "placement group cannot be created"
    tick(fake_serve, 4)
    now = fresh(model)
    assert now.state == State.FAILED and "placement group cannot be created" in now.error_summary
    (refused,) = events(model, EventKind.APPLY_FAILED)
    assert "Still serving" not in refused.message
    assert fake_serve.applied().count(model.model_key) == 2  # the first deploy and one repair, not one per tick


@pytest.mark.usefixtures("gpu_engine")
def test_a_model_scaled_to_zero_whose_application_still_runs_has_it_removed(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    deployments.scale(fresh(model), 0, alice)
    tick(fake_serve, 3)
    assert fresh(model).state == State.RUNNING and model.model_key not in fake_serve.apps
    # Someone (a restored Serve checkpoint, a stray serve.run) brings the application back.
    fake_serve.apply_model(model.model_key, ServeRevision.objects.get(model=model, number=1).config)
    tick(fake_serve, 4)
    assert model.model_key not in fake_serve.apps
    assert len(events(model, EventKind.DRIFT)) == 1
    assert fresh(model).state == State.RUNNING and fresh(model).num_replicas == 0


# --- 7. one model's error does not stop the others ------------------------------------------------
@pytest.mark.usefixtures("gpu_engine")
def test_an_unexpected_error_on_one_model_is_recorded_on_it_and_the_others_go_on(alice, bob, fake_serve, monkeypatch):
    broken, fine = create_model(alice, "broken"), create_model(bob, "fine")
    real = reconciler.llm_config_for

    def config_for(model, engine=None):
        if model.pk == broken.pk:
            raise KeyError("num_replicas")
        return real(model, engine=engine)

    monkeypatch.setattr(reconciler, "llm_config_for", config_for)
    report = tick(fake_serve, 3)
    assert fresh(fine).state == State.RUNNING
    assert fresh(broken).state == State.QUEUED and report.errors == [broken.model_key]
    (error,) = events(broken, EventKind.RECONCILE_ERROR)  # one event, not one per tick
    assert "KeyError" in error.message and "num_replicas" in error.message


class Dashboard(http.server.BaseHTTPRequestHandler):
    """The Ray dashboard's scale endpoint, answering with the statuses it is given, in turn."""

    answers: list[int] = []
    seen: list[str] = []

    def do_POST(self):  # noqa: N802 — http.server's name
        type(self).seen.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        code = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b'{"error": "busy"}' if code >= 400 else b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard(settings, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dashboard)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.RAY_DASHBOARD_URL = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(RayServeClient, "SCALE_RETRY_PAUSES_S", (0.05, 0.05, 0.05))
    Dashboard.answers, Dashboard.seen = [], []
    yield Dashboard
    server.shutdown()


APP = SimpleNamespace(deployments={"LLMServer:demo": None})


def test_a_scale_the_dashboard_answers_with_a_passing_5xx_is_retried_and_succeeds(dashboard):
    dashboard.answers = [503, 502]
    assert RayServeClient()._scale_in_place("alice-1-demo", APP, 2) is True
    assert len(dashboard.seen) == 3
    assert dashboard.seen[0] == "/api/v1/applications/alice-1-demo/deployments/LLMServer%3Ademo/scale"


def test_a_scale_the_dashboard_keeps_refusing_is_refused_after_the_retries(dashboard):
    dashboard.answers = [503] * 10
    with pytest.raises(RuntimeError, match="after 4 tries.*HTTP 503"):
        RayServeClient()._scale_in_place("alice-1-demo", APP, 2)
    assert len(dashboard.seen) == 4


def test_a_client_error_from_the_dashboard_is_not_retried(dashboard):
    dashboard.answers = [400]
    with pytest.raises(RuntimeError, match="HTTP 400"):
        RayServeClient()._scale_in_place("alice-1-demo", APP, 2)
    assert len(dashboard.seen) == 1


# --- 8. GPUs are counted per node, and promised GPUs are not promised twice ------------------------
@pytest.mark.usefixtures("gpu_engine")
def test_a_replica_that_fits_the_cluster_but_no_single_node_waits(alice, bob):
    serve = FakeServe(nodes={"node-a": 2, "node-b": 2})
    wide = create_model(alice, "wide", gpus_per_replica=3)
    two = create_model(bob, "two", num_replicas=2, gpus_per_replica=2)
    tick(serve)
    assert serve.applied() == [two.model_key]  # one replica on each node
    assert fresh(wide).state == State.QUEUED
    (pending,) = events(wide, EventKind.PENDING_RESOURCES)
    assert "each replica's on one node" in pending.message and "node-a: 2" in pending.message


@pytest.mark.usefixtures("gpu_engine")
def test_gpus_promised_to_an_apply_serve_has_not_placed_yet_are_not_promised_again(alice, bob):
    serve = FakeServe(gpus=2, place_reads=3)  # Ray's free count lags the placement groups
    first = create_model(alice, "first", gpus_per_replica=2)
    tick(serve)
    assert fresh(first).state == State.DEPLOYING
    second = create_model(bob, "second", gpus_per_replica=2)
    tick(serve)
    assert serve.cluster_resources().free_gpus == 2  # Ray still says both are free
    assert serve.applied() == [first.model_key]
    assert fresh(second).state == State.QUEUED
    assert "promised to deploys Serve has not placed yet" in events(second, EventKind.PENDING_RESOURCES)[0].message
    tick(serve, 4)
    assert fresh(first).state == State.RUNNING and fresh(second).state == State.QUEUED
    assert serve.applied() == [first.model_key]


# --- 9. the path jail holds at every apply, not just at submit -------------------------------------
@pytest.mark.usefixtures("gpu_engine")
def test_a_folder_swapped_for_a_symlink_into_another_users_root_is_never_deployed(alice, roots, fake_serve):
    model = create_model(alice, source="$HOME/models/mine")
    mine = roots / "users/alice/models/mine"
    mine.rmdir()
    mine.symlink_to(roots / "users/bob/models/his")
    tick(fake_serve, 2)
    assert fake_serve.applied() == []
    now = fresh(model)
    assert now.state == State.FAILED
    assert "no longer a folder you may serve" in now.error_summary
    assert "users/bob/models/his" in now.error_summary and "another user's folder" in now.error_summary


@pytest.mark.usefixtures("gpu_engine")
def test_a_scale_after_the_folder_became_a_symlink_out_is_refused_and_the_model_keeps_serving(alice, roots, fake_serve):
    model = create_model(alice, source="$HOME/models/mine")
    tick(fake_serve, 2)
    mine = roots / "users/alice/models/mine"
    mine.rmdir()
    mine.symlink_to(roots / "users/bob/models/his")
    deployments.scale(fresh(model), 2, alice)
    tick(fake_serve, 2)
    assert fake_serve.applied() == [model.model_key]  # the scale never reached Serve
    now = fresh(model)
    assert now.state == State.RUNNING and "another user's folder" in now.error_summary
    assert fake_serve.apps[model.model_key]["target"] == 1
    assert len(events(model, EventKind.APPLY_FAILED)) == 1


# --- 12. the fake replaces replicas on a re-run, as Serve does ----------------------------------
@pytest.mark.usefixtures("gpu_engine")
def test_an_update_replaces_the_models_replicas_and_a_scale_keeps_them(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    before = list(fake_serve.apps[model.model_key]["replica_ids"])
    deployments.scale(fresh(model), 2, alice)
    tick(fake_serve, 2)
    scaled = list(fake_serve.apps[model.model_key]["replica_ids"])
    assert scaled[:1] == before and len(scaled) == 2
    deployments.submit_spec(alice, spec(num_replicas=2, engine_kwargs="{max_model_len: 512}"))
    tick(fake_serve, 2)
    updated = fake_serve.apps[model.model_key]["replica_ids"]
    assert len(updated) == 2 and not set(updated) & set(scaled)
    assert fresh(model).state == State.RUNNING


# --- 11. what failed, in the replica's own words; and what stopped replicas leave behind -----------
@pytest.mark.usefixtures("gpu_engine")
def test_a_failed_deploy_says_the_replicas_own_error_not_just_see_root_cause_above(alice, fake_serve):
    model = create_model(alice)
    fake_serve.fail_deploy[model.model_key] = "The deployment failed to start 3 times in a row. See root cause above."
    fake_serve.causes[model.model_key] = "RuntimeError: Cannot find any model weights with `/hf/tiny-llama`"
    tick(fake_serve, 3)
    now = fresh(model)
    assert now.state == State.FAILED
    (failed,) = events(model, EventKind.FAILED)
    assert "See root cause above" in failed.message
    assert "Root cause, from the replica's log: RuntimeError: Cannot find any model weights" in failed.message
    assert "Cannot find any model weights" in now.error_summary


@pytest.mark.usefixtures("gpu_engine")
def test_leaked_shared_memory_is_reaped_when_replicas_stop_and_said_in_one_event(alice, fake_serve, settings):
    settings.GANTRY_SHM_REAP_INTERVAL_S = 3600
    model = create_model(alice)
    tick(fake_serve, 2)
    reaps = fake_serve.reaps  # the first tick looks once: nothing had been looked for yet
    tick(fake_serve, 2)
    assert fake_serve.reaps == reaps  # not every tick
    fake_serve.leaked = [
        {"node_id": "node-1", "name": "psm_1a2b", "bytes": 2**30},
        {"node_id": "node-1", "name": "psm_3c4d", "bytes": 2**30},
    ]
    deployments.request_delete(fresh(model), alice)
    tick(fake_serve, 3)
    assert fresh(model).state == State.DELETED and fake_serve.reaps == reaps + 1
    (event,) = ServeEvent.objects.filter(kind=EventKind.LEAK_REMOVED)
    assert "Removed 2 shared-memory segment(s)" in event.message and "2048.0 MiB" in event.message
    assert "psm_1a2b" in event.message and event.payload["segments"][0]["name"] == "psm_1a2b"
