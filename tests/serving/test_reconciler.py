"""The reconciler drives Serve model by model from what users asked for, and trusts what Serve says."""
from datetime import timedelta

import pytest
from django.utils import timezone

from serving import deployments
from serving.choices import EventKind, State
from serving.cluster.serve import ROUTER_APP
from serving.models import ServeEvent, ServeRevision
from serving.reconciler import reconcile
from tests.serving.factories import create_model, spec

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "gpu_engine")]


def tick(fake, times: int = 1):
    for _ in range(times):
        report = reconcile(fake)
    return report


def refreshed(model):
    model.refresh_from_db()
    return model


def kinds(model) -> list[str]:
    return list(ServeEvent.objects.filter(model=model).order_by("created_at", "id").values_list("kind", flat=True))


def test_a_new_model_is_applied_with_its_config_and_becomes_deploying_then_running(alice, fake_serve):
    model = create_model(alice, num_replicas=2, gpus_per_replica=2)
    tick(fake_serve)
    model = refreshed(model)
    assert model.state == State.DEPLOYING
    (call,) = fake_serve.calls
    _, key, config, previous = call
    assert key == model.model_key and previous is None
    assert config["model_loading_config"]["model_id"] == model.model_id
    assert config["model_loading_config"]["model_source"].endswith("/hf/tiny-llama")
    assert config["deployment_config"]["num_replicas"] == 2
    assert config["engine_kwargs"]["tensor_parallel_size"] == 2
    assert len(config["placement_group_config"]["bundles"]) == 2
    revision = ServeRevision.objects.get(model=model)
    assert (revision.number, revision.reason, revision.config) == (1, "create", config)

    tick(fake_serve)
    assert refreshed(model).state == State.RUNNING
    assert kinds(model) == [EventKind.CREATED, EventKind.APPLIED, EventKind.RUNNING]


def test_an_unchanged_running_model_is_not_applied_again(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 4)
    assert refreshed(model).state == State.RUNNING
    assert fake_serve.applied() == [model.model_key]


def test_a_gpu_shortage_keeps_the_model_queued_with_one_pending_event(alice, fake_serve):
    fake_serve.total_gpus = 1
    model = create_model(alice, num_replicas=2, gpus_per_replica=1)
    tick(fake_serve, 3)
    model = refreshed(model)
    assert model.state == State.QUEUED
    assert fake_serve.applied() == []
    pending = ServeEvent.objects.filter(model=model, kind=EventKind.PENDING_RESOURCES)
    assert pending.count() == 1
    assert "Needs 2 GPU(s)" in pending.get().message and "1 free of 1" in pending.get().message


def test_a_model_waiting_for_gpus_past_its_deadline_fails_and_says_why(alice, fake_serve):
    fake_serve.total_gpus = 0
    model = create_model(alice)
    tick(fake_serve)
    model = refreshed(model)
    model.deadline = timezone.now() - timedelta(seconds=1)
    model.save()
    tick(fake_serve)
    model = refreshed(model)
    assert model.state == State.FAILED
    assert "No GPUs became free" in model.error_summary


def test_gpus_taken_by_one_model_are_not_promised_to_the_next_in_the_same_tick(alice, bob, fake_serve):
    fake_serve.total_gpus = 1
    first = create_model(alice, suffix="a")
    second = create_model(bob, suffix="b")
    tick(fake_serve)
    assert refreshed(first).state == State.DEPLOYING
    assert refreshed(second).state == State.QUEUED
    assert fake_serve.applied() == [first.model_key]


def test_an_apply_that_raises_fails_the_model_with_the_reason_and_records_no_revision(alice, fake_serve):
    model = create_model(alice)
    fake_serve.fail_apply[model.model_key] = "placement group cannot be created: bad accelerator"
    tick(fake_serve, 2)
    model = refreshed(model)
    assert model.state == State.FAILED
    assert "bad accelerator" in model.error_summary
    assert not ServeRevision.objects.filter(model=model).exists()
    assert fake_serve.applied() == [model.model_key]  # not retried by itself
    event = ServeEvent.objects.get(model=model, kind=EventKind.APPLY_FAILED)
    assert (event.from_state, event.to_state) == (State.QUEUED, State.FAILED)


def test_an_update_after_a_failure_queues_and_applies_again(alice, fake_serve):
    model = create_model(alice)
    fake_serve.fail_apply[model.model_key] = "boom"
    tick(fake_serve)
    del fake_serve.fail_apply[model.model_key]
    deployments.submit_spec(alice, spec(num_replicas=1, engine_kwargs="{max_model_len: 512}"))
    assert refreshed(model).state == State.QUEUED
    tick(fake_serve, 2)
    model = refreshed(model)
    assert model.state == State.RUNNING and model.error_summary == ""
    assert ServeRevision.objects.get(model=model).reason == "update"


def test_a_running_model_whose_update_is_refused_keeps_serving_and_says_so(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    fake_serve.fail_apply[model.model_key] = "invalid engine argument"
    deployments.scale(model, 2, alice)
    tick(fake_serve, 3)
    model = refreshed(model)
    assert model.state == State.RUNNING
    assert "invalid engine argument" in model.error_summary
    assert fake_serve.apps[model.model_key]["target"] == 1
    assert ServeEvent.objects.filter(model=model, kind=EventKind.APPLY_FAILED).count() == 1
    assert "Still serving revision 1" in ServeEvent.objects.get(model=model, kind=EventKind.APPLY_FAILED).message


def test_serve_reporting_deploy_failed_fails_the_model_with_serves_message(alice, fake_serve):
    model = create_model(alice)
    fake_serve.fail_deploy[model.model_key] = "The replica failed to start: no weights found in /models/x"
    tick(fake_serve, 3)
    model = refreshed(model)
    assert model.state == State.FAILED
    assert "no weights found" in model.error_summary


def test_a_deploy_that_never_becomes_schedulable_fails_at_its_deadline_with_serves_message(alice, fake_serve):
    model = create_model(alice)
    fake_serve.unschedulable[model.model_key] = "Deployment 'LLMServer' has 1 replica that cannot be scheduled: {'GPU': 1}"
    tick(fake_serve, 3)
    model = refreshed(model)
    assert model.state == State.DEPLOYING
    assert ServeEvent.objects.filter(model=model, kind=EventKind.SERVE_STATUS, message__contains="cannot be scheduled").count() == 1
    model.deadline = timezone.now() - timedelta(seconds=1)
    model.save()
    tick(fake_serve)
    model = refreshed(model)
    assert model.state == State.FAILED
    assert "cannot be scheduled" in model.error_summary


def test_scaling_a_running_model_applies_a_scale_revision_with_the_previous_config(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    first_replica = list(fake_serve.apps[model.model_key]["replica_ids"])
    deployments.scale(model, 2, alice)
    tick(fake_serve, 2)
    model = refreshed(model)
    assert model.state == State.RUNNING and model.num_replicas == 2
    _, _, config, previous = fake_serve.calls[-1]
    assert previous["deployment_config"]["num_replicas"] == 1 and config["deployment_config"]["num_replicas"] == 2
    assert ServeRevision.objects.filter(model=model).first().reason == "scale 1 → 2"
    assert fake_serve.apps[model.model_key]["replica_ids"][:1] == first_replica


def test_scaling_to_zero_removes_the_application_and_keeps_the_record(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    deployments.scale(model, 0, alice)
    tick(fake_serve, 3)
    model = refreshed(model)
    assert model.state == State.RUNNING and model.num_replicas == 0
    assert model.model_key not in fake_serve.apps
    assert fake_serve.deleted() == [model.model_key]


def test_deleting_one_model_removes_only_its_application(alice, bob, fake_serve):
    keep = create_model(alice, suffix="keep")
    gone = create_model(bob, suffix="gone")
    tick(fake_serve, 2)
    kept_replicas = list(fake_serve.apps[keep.model_key]["replica_ids"])
    deployments.request_delete(gone, bob)
    tick(fake_serve)
    assert fake_serve.deleted() == [gone.model_key]
    tick(fake_serve, 2)
    assert refreshed(gone).state == State.DELETED
    assert refreshed(keep).state == State.RUNNING
    assert set(fake_serve.apps) == {ROUTER_APP, keep.model_key}
    assert fake_serve.apps[keep.model_key]["replica_ids"] == kept_replicas
    assert fake_serve.applied() == [keep.model_key, gone.model_key]  # nothing re-applied


def test_a_model_serve_lost_is_reapplied_as_drift_repair(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    del fake_serve.apps[model.model_key]  # e.g. the Ray head restarted without its state
    tick(fake_serve)
    model = refreshed(model)
    assert model.state == State.DEPLOYING
    assert EventKind.DRIFT in kinds(model)
    assert ServeRevision.objects.filter(model=model).first().reason.startswith("drift repair")
    tick(fake_serve)
    assert refreshed(model).state == State.RUNNING


def test_an_unknown_application_is_reported_once_and_never_deleted(alice, fake_serve):
    fake_serve.apps["someone-elses-app"] = fake_serve._app({}, 1, "RUNNING", 0)
    report = tick(fake_serve, 3)
    assert report.unknown_apps == ["someone-elses-app"]
    assert "someone-elses-app" in fake_serve.apps
    assert fake_serve.deleted() == []
    event = ServeEvent.objects.get(kind=EventKind.UNKNOWN_APPLICATION)
    assert event.model is None and event.model_key == "someone-elses-app"


def test_rollback_applies_an_earlier_revisions_spec_as_a_new_revision(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    deployments.submit_spec(alice, spec(engine_kwargs="{max_model_len: 1024}"))
    tick(fake_serve, 2)
    assert fake_serve.calls[-1][2]["engine_kwargs"]["max_model_len"] == 1024
    deployments.rollback(model, 1, alice)
    tick(fake_serve, 2)
    model = refreshed(model)
    assert model.state == State.RUNNING and model.generation == 3
    latest = ServeRevision.objects.filter(model=model).first()
    assert (latest.number, latest.reason) == (3, "rollback to revision 1")
    assert latest.config_hash == ServeRevision.objects.get(model=model, number=1).config_hash
    assert "max_model_len" not in fake_serve.calls[-1][2]["engine_kwargs"]


def test_an_unreachable_serve_changes_nothing_and_says_so_once(alice, fake_serve):
    model = create_model(alice)
    fake_serve.unavailable = True
    report = tick(fake_serve, 3)
    assert "Serve unavailable" in report.reason
    model = refreshed(model)
    assert model.state == State.QUEUED
    assert ServeEvent.objects.filter(model=model, kind=EventKind.SERVE_UNAVAILABLE).count() == 1
    fake_serve.unavailable = False
    tick(fake_serve, 2)
    assert refreshed(model).state == State.RUNNING


def test_a_change_to_a_running_model_waiting_on_an_unreachable_serve_says_why_once(alice, fake_serve):
    """The user who scaled a running model is waiting for it: the page must say why nothing moves
    (a model with nothing pending stays quiet: its replicas may well still serve)."""
    model, quiet = create_model(alice), create_model(alice, "quiet")
    tick(fake_serve, 2)
    deployments.scale(model, 2, alice)
    fake_serve.unavailable = True
    tick(fake_serve, 3)

    model = refreshed(model)
    assert model.state == State.RUNNING and model.change_reason
    assert ServeEvent.objects.filter(model=model, kind=EventKind.SERVE_UNAVAILABLE).count() == 1
    assert not ServeEvent.objects.filter(model=quiet, kind=EventKind.SERVE_UNAVAILABLE).exists()
    fake_serve.unavailable = False
    tick(fake_serve, 2)
    assert refreshed(model).is_settled and fake_serve.apps[model.model_key]["target"] == 2


def test_a_change_is_pending_until_applied_and_settles_after(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    assert refreshed(model).is_settled
    deployments.scale(model, 2, alice)
    model = refreshed(model)
    assert model.state == State.RUNNING and not model.is_settled  # pages keep polling
    tick(fake_serve, 2)
    assert refreshed(model).is_settled


def test_an_update_to_the_config_already_running_settles_without_an_apply(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve, 2)
    deployments.submit_spec(alice, spec())
    assert not refreshed(model).is_settled
    tick(fake_serve)
    model = refreshed(model)
    assert model.is_settled and model.generation == 2
    assert fake_serve.applied() == [model.model_key]


def test_a_long_serve_message_keeps_its_opening_and_its_end():
    from serving.reconciler import tail

    message = "Deploying app 'x' failed: LLMServer failed to start.\n" + "  File ...\n" * 500 + "RuntimeError: no weights"
    cut = tail(message)
    assert len(cut) <= 2005
    assert cut.startswith("Deploying app 'x' failed") and cut.endswith("RuntimeError: no weights")


def test_each_tick_makes_sure_serve_and_the_router_run(fake_serve):
    tick(fake_serve, 2)
    assert fake_serve.starts == 2


def test_a_deploy_serve_lost_is_reapplied_not_left_waiting(alice, fake_serve):
    model = create_model(alice)
    tick(fake_serve)
    assert refreshed(model).state == State.DEPLOYING
    del fake_serve.apps[model.model_key]  # the cluster restarted while it deployed
    tick(fake_serve)
    assert refreshed(model).state == State.DEPLOYING and fake_serve.applied() == [model.model_key]  # within the grace
    ServeRevision.objects.filter(model=model).update(applied_at=timezone.now() - timedelta(seconds=60))
    tick(fake_serve)
    model = refreshed(model)
    assert EventKind.DRIFT in kinds(model)
    assert fake_serve.applied() == [model.model_key, model.model_key]
    tick(fake_serve)
    assert refreshed(model).state == State.RUNNING
