"""Every apply of a new spec waits for its preflight: a model whose checks fail never reaches Serve
and says why, and deploys once its card is fixed or a person forces the skew with a reason. The
runs are the real ones over real files in the model folder; Serve is the fake at the edge."""
from __future__ import annotations

import json

import pytest

from dashboard.models import AuditEntry
from gates import preflights
from gates.models import PreflightRun
from gates.node_runtimes import node_runtimes
from gates.preflight.versions import tokenizer_digest
from gates.secrets import set_secret
from serving import deployments
from serving.choices import EventKind, State
from serving.models import ServeEvent, ServeModel, ServeRevision
from serving.reconciler import reconcile
from tests.serving.factories import create_model, spec

pytestmark = [pytest.mark.usefixtures("roots", "gpu_engine")]
ENQUEUE_ON_THE_GATES_QUEUE = preflights.enqueue  # taken at import, before the autouse fixture replaces it


def not_failed_but_for_vram(run) -> bool:
    """Every guard ok but the VRAM fit, which warns: this folder has no weights to estimate and no
    health probe has read GPUs here, and a GPU deploy must not read as if memory had been compared."""
    rest = {r.guard: r.status for r in run.guard_results if r.guard != "vram"}
    vram = next(r for r in run.guard_results if r.guard == "vram")
    return run.status == "warn" and set(rest.values()) == {"ok"} and vram.status == "warn"


def fresh(model) -> ServeModel:
    return ServeModel.objects.get(pk=model.pk)


def kinds(model) -> list[str]:
    return list(ServeEvent.objects.filter(model=model).order_by("created_at", "id").values_list("kind", flat=True))


def last(model, kind) -> ServeEvent:
    return ServeEvent.objects.filter(model=model, kind=kind).order_by("-created_at", "-id").first()


@pytest.fixture
def folder(roots):
    """The tiny-llama folder with a tokenizer and a model card written from it."""
    path = roots / "hf" / "tiny-llama"
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}}))
    write_card(path)
    return path


def write_card(path, **fields) -> None:
    card = {"tokenizer_sha": tokenizer_digest(path)[0][:7], **fields}
    (path / "model-card.json").write_text(json.dumps(card))


def change_tokenizer(path) -> None:
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}}}))


@pytest.mark.django_db
def test_a_model_whose_tokenizer_changed_after_its_card_never_reaches_serve_and_says_why(alice, fake_serve, folder):
    change_tokenizer(folder)
    model = create_model(alice)
    reconcile(fake_serve)
    model = fresh(model)
    assert fake_serve.applied() == []
    assert model.state == State.FAILED
    run = PreflightRun.objects.get(model=model)
    assert run.status == "fail" and run.can_be_forced
    failed = last(model, EventKind.PREFLIGHT_FAILED)
    assert "checkpoint ↔ runtime" in failed.message and run.get_absolute_url() in failed.message
    assert "tokenizer_sha" in model.error_summary
    reconcile(fake_serve)
    assert fake_serve.applied() == [], "a failed preflight is not retried by itself"


@pytest.mark.django_db
def test_it_deploys_after_the_card_is_fixed_and_the_model_retried(alice, fake_serve, folder):
    change_tokenizer(folder)
    model = create_model(alice)
    reconcile(fake_serve)
    write_card(folder)  # the card now matches the tokenizer it ships with
    deployments.retry(fresh(model), alice)
    reconcile(fake_serve)
    assert fresh(model).state == State.DEPLOYING
    assert fake_serve.applied() == [model.model_key]
    failed, passed = PreflightRun.objects.filter(model=model).order_by("id")
    assert failed.status == "fail" and not_failed_but_for_vram(passed)


@pytest.mark.django_db
def test_a_forced_skew_deploys_with_who_and_why_on_record(alice, fake_serve, folder):
    change_tokenizer(folder)
    model = create_model(alice)
    reconcile(fake_serve)
    run = PreflightRun.objects.get(model=model)
    with pytest.raises(preflights.ForceRefused, match="Say why"):
        preflights.force(run, alice, "ok")
    preflights.force(run, alice, "the tokenizer only gained an unused token; evals passed")
    assert fresh(model).state == State.QUEUED
    reconcile(fake_serve)
    assert fake_serve.applied() == [model.model_key]
    assert fresh(model).state == State.DEPLOYING
    forced = last(model, EventKind.PREFLIGHT_FORCED)
    assert forced.actor_name == "alice" and "unused token" in forced.message
    audit = AuditEntry.objects.get(action="preflight.force")
    assert audit.actor_name == "alice" and "unused token" in audit.detail
    assert PreflightRun.objects.filter(model=model).count() == 1, "the forced run is the one the deploy used"


@pytest.mark.django_db
def test_an_unresolved_prompt_variable_cannot_be_forced(alice, fake_serve, folder):
    (folder / "prompts").mkdir()
    (folder / "prompts" / "greet.txt").write_text("Hello {{ user_name }}\n")
    model = create_model(alice)
    reconcile(fake_serve)
    run = PreflightRun.objects.get(model=model)
    assert "prompts/greet.txt:1" in json.dumps(run.results)
    with pytest.raises(preflights.ForceRefused, match="Only a version skew"):
        preflights.force(run, alice, "I am sure it is fine, really")
    assert fake_serve.applied() == [] and fresh(model).state == State.FAILED


@pytest.mark.django_db
def test_ignore_versions_in_the_spec_lets_an_ignored_key_pass(alice, fake_serve, folder):
    change_tokenizer(folder)
    model, _ = deployments.submit_spec(alice, spec() + "preflight:\n  ignore_versions: [tokenizer_sha]\n")
    reconcile(fake_serve)
    assert fake_serve.applied() == [model.model_key]


@pytest.mark.django_db
def test_a_running_models_update_that_fails_preflight_keeps_serving_the_old_revision(alice, fake_serve, folder):
    model = create_model(alice)
    reconcile(fake_serve, )
    reconcile(fake_serve)
    assert fresh(model).state == State.RUNNING
    change_tokenizer(folder)
    deployments.submit_spec(alice, spec(engine_kwargs="{max_model_len: 512}"))
    reconcile(fake_serve)
    model = fresh(model)
    assert model.state == State.RUNNING and fake_serve.applied() == [model.model_key]
    assert "Still serving revision 1" in last(model, EventKind.PREFLIGHT_FAILED).message
    reconcile(fake_serve)
    assert fake_serve.applied() == [model.model_key]


@pytest.mark.django_db
def test_a_scale_reuses_the_passed_preflight_of_the_same_spec(alice, fake_serve, folder):
    model = create_model(alice)
    reconcile(fake_serve)
    reconcile(fake_serve)
    deployments.scale(fresh(model), 2, alice)
    reconcile(fake_serve)
    assert len(fake_serve.applied()) == 2
    assert PreflightRun.objects.filter(model=model).count() == 1


SECRET_VALUE = "sk-live-5f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.mark.django_db
def test_secrets_reach_the_replicas_environment_and_nowhere_else(alice, fake_serve, folder):
    set_secret(alice, "OPENAI_API_KEY", SECRET_VALUE, alice)
    model, _ = deployments.submit_spec(alice, spec() + "preflight:\n  secrets: [OPENAI_API_KEY]\n")
    reconcile(fake_serve)
    assert fake_serve.envs[model.model_key]["OPENAI_API_KEY"] == SECRET_VALUE
    revision = ServeRevision.objects.get(model=model)
    assert revision.config["runtime_env"]["env_vars"]["OPENAI_API_KEY"] == "gantry-secret:OPENAI_API_KEY"
    stored = json.dumps(
        [list(ServeEvent.objects.values()), list(ServeRevision.objects.values()), list(PreflightRun.objects.values()), list(ServeModel.objects.values())],
        default=str,
    )
    assert "OPENAI_API_KEY" in stored and SECRET_VALUE not in stored


@pytest.mark.django_db
def test_a_missing_secret_fails_the_deploy_naming_it_and_its_near_miss(alice, fake_serve, folder):
    set_secret(alice, "OPEN_API_KEY", SECRET_VALUE, alice)
    model, _ = deployments.submit_spec(alice, spec() + "preflight:\n  secrets: [OPENAI_API_KEY]\n  secret_timeout: 0\n")
    reconcile(fake_serve)
    model = fresh(model)
    assert model.state == State.FAILED and fake_serve.applied() == []
    assert "OPENAI_API_KEY" in model.error_summary
    run = PreflightRun.objects.get(model=model)
    assert "OPEN_API_KEY" in json.dumps(run.results) and SECRET_VALUE not in json.dumps(run.results)


def old_driver(fake_serve) -> None:
    fake_serve.runtimes = [dict(node, driver_cuda="12.4", driver_version="550.54") for node in node_runtimes(fake_serve)]


@pytest.mark.django_db
def test_a_driver_too_old_for_the_cuda_build_falls_back_to_the_cpu_engine_and_says_so(alice, fake_serve, folder):
    old_driver(fake_serve)
    model = create_model(alice)
    reconcile(fake_serve)
    model = fresh(model)
    assert model.state == State.DEPLOYING and model.engine_override == "cpu"
    (config,) = [call[2] for call in fake_serve.calls if call[0] == "apply"]
    assert config["accelerator_config"] == {"kind": "cpu"} and "placement_group_config" not in config
    assert "supports CUDA 12.4" in last(model, EventKind.ENGINE_FALLBACK).message
    assert fake_serve.cluster_resources().free_gpus == 8, "a CPU replica holds no GPU"
    reconcile(fake_serve)
    reconcile(fake_serve)
    assert len(fake_serve.applied()) == 1, "the fallback config is what the model asks for now: no re-apply loop"


@pytest.mark.django_db
def test_cuda_probe_mode_fail_stops_the_deploy(alice, fake_serve, folder):
    old_driver(fake_serve)
    model, _ = deployments.submit_spec(alice, spec() + "preflight:\n  cuda_probe: {mode: fail}\n")
    reconcile(fake_serve)
    assert fresh(model).state == State.FAILED and fake_serve.applied() == []
    assert "GPU driver ↔ CUDA build" in fresh(model).error_summary


@pytest.mark.django_db(transaction=True)
def test_the_deploys_preflight_is_a_task_on_the_gates_queue_that_wakes_the_reconciler(alice, fake_serve, folder, monkeypatch, settings):
    import redis

    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("reads the Redis broker's lists; make test runs against Redis")
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    monkeypatch.setattr(preflights, "enqueue", ENQUEUE_ON_THE_GATES_QUEUE)
    broker.delete("gates", "serve")
    model = create_model(alice)
    broker.delete("serve")
    reconcile(fake_serve)
    assert fresh(model).state == State.QUEUED and fake_serve.applied() == []
    assert "Preflight #" in last(model, EventKind.PREFLIGHT).message
    (message,) = [json.loads(raw) for raw in broker.lrange("gates", 0, -1)]
    assert message["headers"]["task"] == "gates.tasks.preflight_for_deploy"
    run = PreflightRun.objects.get(model=model)
    assert run.status == "pending"

    from gates.tasks import preflight_for_deploy

    preflight_for_deploy.run(run.pk)  # what the worker does with that message
    assert not_failed_but_for_vram(PreflightRun.objects.get(pk=run.pk))
    woken = [json.loads(raw)["headers"]["task"] for raw in broker.lrange("serve", 0, -1)]
    assert "serving.tasks.reconcile" in woken
    reconcile(fake_serve)
    assert fresh(model).state == State.DEPLOYING and fake_serve.applied() == [model.model_key]
    broker.delete("gates", "serve")


@pytest.mark.django_db
def test_with_a_fresh_cluster_reading_and_no_secret_to_wait_for_the_tick_runs_the_preflight_and_applies(alice, fake_serve, folder, monkeypatch):
    first = create_model(alice, "first")
    reconcile(fake_serve)  # no reading yet: the preflight went to the gates worker, which read the cluster
    assert fresh(first).state == State.DEPLOYING
    sent = []
    monkeypatch.setattr(preflights, "enqueue", sent.append)

    model = create_model(alice, "second")
    reconcile(fake_serve)  # one tick: preflight and apply, no round trip through the gates queue
    assert sent == [], "the preflight went to the queue although nothing in it could wait"
    assert fresh(model).state == State.DEPLOYING and model.model_key in fake_serve.applied()
    run = PreflightRun.objects.get(model=model)
    assert run.is_done and run.runtime["source"] == "cluster"


@pytest.mark.django_db
def test_a_spec_that_requires_a_secret_still_waits_for_it_on_the_gates_queue(alice, fake_serve, folder, monkeypatch):
    create_model(alice, "first")
    reconcile(fake_serve)  # a fresh cluster reading now exists
    sent = []
    monkeypatch.setattr(preflights, "enqueue", sent.append)
    model = create_model(alice, "needs-key", preflight="{secrets: [OPENAI_API_KEY], secret_timeout: 30}")
    reconcile(fake_serve)
    assert [run.model_id for run in sent] == [model.pk]
    assert fresh(model).state == State.QUEUED and model.model_key not in fake_serve.applied()
