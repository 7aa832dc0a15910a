"""The eval gate end to end: real MLflow (an `mlflow server` process, and an sqlite store), a real Ray
head with the CPU engine, Gantry's own serving and the router's OpenAI API, no double in the path.

The eval set is a candidate's own greedy answers, recorded from a deployment of it before the gate
runs: the same model as a candidate answers them all again (PASS, promoted); the same weights with
a broken chat template (a real regression: the prompt format it was trained on is gone) do not
(FAIL, the registry exactly as it was). The tiny model's random, tied embeddings make it echo the
last token of its prompt; its own template ends every prompt with a newline, so the "good" model's
template is one that ends with the user's last word, and each prompt ends with another word. A worker SIGKILLed between compare
and promote leaves the registry untouched and the run says so; the next worker finishes the run
once the lease runs out, and promotes exactly one version.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from gates import baselines, evalsets, gate_runs, registry
from gates.models import GateRun, GateRunState, Step, StepStatus
from serving import deployments
from serving.choices import State
from serving.cluster import get_client
from serving.reconciler import reconcile
from serving.serializers import openai_base_url
from tests.gates.mlflow_fixtures import _healthy, _start_server, _stop
from tests.integration.test_serving_end_to_end import drive
from tests.ray_cluster import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
MAX_TOKENS = 6
WORDS = ("Ray", "Serve", "fox", "dog", "model", "replica", "spec", "port", "system", "user",
         "question", "assistant", "weights", "numbers", "Hello", "today")
PROMPTS = [f"Tell me about {word}" for word in WORDS]
PLAIN_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"


@pytest.fixture
def gate_settings(gantry, settings):
    settings.GANTRY_GATE_MAX_TOKENS = MAX_TOKENS
    # One row at a time: the answers are compared with ones recorded one at a time, and a batch of
    # other sizes may round a near-tie of random weights the other way.
    settings.GANTRY_GATE_EVAL_CONCURRENCY = 1
    settings.GANTRY_GATE_LEASE_S = 5
    settings.GANTRY_GATE_POLL_S = 1
    return gantry


@pytest.fixture
def good_model(tiny_model) -> Path:
    """The tiny model with a template that keeps each prompt's last word last."""
    folder = tiny_model.parent / "tiny-llama-plain"
    if not folder.exists():
        shutil.copytree(tiny_model, folder)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = PLAIN_TEMPLATE
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("gate-mlflow-server")
    process, uri, artifacts = _start_server(base)
    try:
        wait_for("mlflow server /health", lambda: process.poll() is None and _healthy(uri), 90, every_s=0.25)
        yield uri, artifacts
    finally:
        _stop(process)


def use_mlflow(settings, uri: str, artifacts: Path, tmp_path: Path) -> None:
    settings.MLFLOW_TRACKING_URI = uri
    settings.MLFLOW_ARTIFACT_ROOT = str(artifacts)
    settings.GANTRY_REGISTRY_DIR = tmp_path / "registry"


def ask(model_id: str, prompt: str) -> str:
    body = {"model": model_id, "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": MAX_TOKENS}
    request = urllib.request.Request(openai_base_url() + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"] or ""


def drive_run(pk: int, until, timeout_s: float = 420) -> GateRun:
    """What the serve and gates workers do between them: reconcile ticks and gate-run steps."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = GateRun.objects.get(pk=pk)
        if until(run):
            return run
        assert time.monotonic() < deadline, f"gate run {pk} still {run.state} at {run.step}: {list(run.steps.values_list('name', 'status', 'detail'))}"
        reconcile(get_client())
        if gate_runs.advance(pk) != 0.0:
            time.sleep(0.5)


_recorded: list[str] = []


@pytest.fixture
def reference_answers(gate_settings, good_model, alice) -> list[str]:
    """The tiny model's greedy answers, through Gantry and the router like any client's (recorded
    once for the module: the weights do not change)."""
    if _recorded:
        return _recorded
    model, _ = deployments.submit_spec(alice, f"model_id: reference-{uuid.uuid4().hex[:6]}\nmodel_source: $HOME/common/hf/{good_model.name}\n")
    drive(model.model_key, lambda m: m.state == State.RUNNING)
    answers = [ask(model.model_id, prompt) for prompt in PROMPTS]
    deployments.request_delete(model, alice)
    drive(model.model_key, lambda m: m.state == State.DELETED)
    assert len({a.strip() for a in answers}) > len(answers) // 2, f"the answers do not tell prompts apart: {answers}"
    _recorded.extend(answers)
    return _recorded


@pytest.fixture
def gate(reference_answers, alice, rita):
    """An eval set of those answers in two buckets, and a baseline for it that rita approved."""
    lines = [
        json.dumps({"id": i, "buckets": ["even" if i % 2 == 0 else "odd"], "prompt": p, "expected": a})
        for i, (p, a) in enumerate(zip(PROMPTS, reference_answers))
    ]
    eval_set, _ = evalsets.upload("tiny-greedy", ("\n".join(lines) + "\n").encode(), alice)
    name = f"tiny-gate-{uuid.uuid4().hex[:6]}"
    doc = baselines.document_from_data({
        "eval_set_dvc_hash": eval_set.md5, "baseline_sha": "reference", "tolerance_pp": 0.02,
        "buckets": {"even": {"accuracy": 0.75, "n": 8}, "odd": {"accuracy": 0.75, "n": 8}},
    })
    proposal = baselines.propose(name, doc, "https://example.test/experiments/reference", alice)
    baselines.approve(proposal, rita)
    return name


def kill_worker_at_promote(pk: int) -> subprocess.CompletedProcess:
    """A gates worker as a separate process, SIGKILLed the moment it reaches the registry."""
    script = (
        "import os, signal, sys, django\n"
        "django.setup()\n"
        "from gates import gate_runs, registry\n"
        "registry.promote = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "gate_runs.advance(int(sys.argv[1]))\n"
    )
    db = django_settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "MLFLOW_TRACKING_URI": django_settings.MLFLOW_TRACKING_URI,
        "GANTRY_VAR_DIR": str(django_settings.VAR_DIR),
        "GANTRY_GATE_LEASE_S": str(django_settings.GANTRY_GATE_LEASE_S),
        "DJANGO_SETTINGS_MODULE": "dashboard.settings",
    }
    return subprocess.run([sys.executable, "-c", script, str(pk)], cwd=ROOT, env=env, capture_output=True, timeout=120)


def test_a_passing_candidate_survives_a_killed_worker_and_is_promoted_once(gate_settings, gate, good_model, mlflow_server, settings, tmp_path, bob):
    if django_settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the killed worker is another process: it needs the suite's PostgreSQL")
    use_mlflow(settings, *mlflow_server, tmp_path)
    run_id = registry.log_candidate(good_model)
    name = f"tutor-{uuid.uuid4().hex[:6]}"
    run = gate_runs.request(bob, gate=gate, mlflow_run_id=run_id, semver="v0.3.1", registered_model=name)

    run = drive_run(run.pk, lambda r: r.step == Step.PROMOTE or r.is_finished)
    assert (run.state, run.verdict) == (GateRunState.RUNNING, "PASS"), run.error
    before = registry.registry_state(name)

    killed = kill_worker_at_promote(run.pk)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert registry.registry_state(name) == before, "a worker killed before promote changed the registry"
    promote = run.steps.get(name=Step.PROMOTE)
    assert promote.status == StepStatus.RUNNING  # as the dead worker left it: nobody finished it

    run = drive_run(run.pk, lambda r: r.is_finished, timeout_s=60)
    assert run.state == GateRunState.PROMOTED, run.error
    attempts = list(run.steps.filter(name=Step.PROMOTE).values_list("attempt", "status", "detail"))
    assert [(a, s) for a, s, _ in attempts] == [(1, StepStatus.INTERRUPTED), (2, StepStatus.OK)]
    assert "stopped before it finished" in attempts[0][2]
    state = registry.registry_state(name)
    assert len(state["versions"]) == 1, "the resumed promotion registered a second version"
    ((number, version),) = state["versions"].items()
    assert state["aliases"] == {"production": number} and run.promoted_version == number
    assert version["tags"]["semver"] == "v0.3.1" and version["tags"]["gantry.gate_run"] == str(run.pk)
    assert version["tags"]["gantry.result_sha256"] == run.result_sha256 and version["run_id"] == run_id

    deployment = drive(run.serve_model_key, lambda m: m.state == State.DELETED)
    assert deployment.state == State.DELETED, "the short-lived deployment outlived its gate run"
    assert {s.name for s in run.steps.all()} == set(Step.values)


def test_a_failing_candidate_leaves_the_registry_exactly_as_it_was(gate_settings, gate, good_model, tiny_model, settings, tmp_path, bob):
    use_mlflow(settings, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts", tmp_path)
    name = f"tutor-{uuid.uuid4().hex[:6]}"
    # The registry already holds a promoted version: a failed run must leave it, its tags and the
    # alias just as they are.
    first = registry.log_candidate(good_model)
    registry.promote(name, first, "model", "v0.3.0", gate_run_id=999_999, evidence={})
    before = registry.registry_state(name)

    run_id = registry.log_candidate(tiny_model)  # the same weights, the template that ends in a newline
    run = gate_runs.request(bob, gate=gate, mlflow_run_id=run_id, semver="v0.4.0", registered_model=name)
    run = drive_run(run.pk, lambda r: r.is_finished)

    assert (run.state, run.verdict, run.failed_step) == (GateRunState.FAILED, "FAIL", Step.COMPARE), run.error
    assert "The registry was not touched" in run.error
    assert registry.registry_state(name) == before
    assert not run.steps.filter(name=Step.PROMOTE).exists()
    right = sum(a["correct"] for a in run.answers)
    assert right < len(PROMPTS) * 0.75, f"the broken template got {right} of {len(PROMPTS)} right: the eval set does not tell models apart"
    drive(run.serve_model_key, lambda m: m.state == State.DELETED)
    shutil.rmtree(gate_runs.candidate_root(run), ignore_errors=True)
