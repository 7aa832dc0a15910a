"""The Ray client and the gantry-router against a real Ray head, real Serve and the real CPU engine.

One private Ray head for the session (its own ports and temp dir, never another engineer's), the
tiny model built offline, and one deployed model shared by the tests of this module: a real engine
takes about a minute to start on two cores, so each test pins its behaviour on that model instead of
deploying its own. Replica and actor ids come from the Ray dashboard's Serve REST API, never from a
mock: "restarts nothing" means the same actor with the same PID.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from serving.cluster import RayServeClient
from serving.cluster.connection import ServeUnavailable
from serving.cluster.serve import ROUTER_APP
from serving.llm_config import build_llm_config
from tests.ray_cluster import RayHead, free_port, get_json, listed_models, replicas, router_url, wait_for

pytestmark = pytest.mark.slow

# Model keys look like the real ones (<user>-<YYYYMMDDHHMM>-<suffix>); the dot matters: Serve names
# the deployment "LLMServer:alice-…-tiny_v1", so the router must not derive it from the model id.
MODEL = "alice-202611250000-tiny.v1"
OTHER_MODEL = "bob-202611250000-other"
RUNNING_WITHIN_S = 300  # ~60 s alone on 2 cores; CI machines can be slower


@pytest.fixture(scope="session")
def client(ray_head) -> RayServeClient:
    client = RayServeClient()
    client.ensure_started(http_port=ray_head.serve_port)
    return client


def llm_config(model_key: str, tiny_model: Path, replicas: int = 1) -> dict:
    spec = {"model_id": model_key, "model_source": str(tiny_model), "num_replicas": replicas, "gpus_per_replica": 0}
    return build_llm_config(spec, engine="cpu", hf_home=str(tiny_model.parent))


def wait_running(client: RayServeClient, model_key: str, replicas: int, timeout_s: float = RUNNING_WITHIN_S):
    def running():
        app = client.status().get(model_key)
        if app is not None and app.status == "DEPLOY_FAILED":
            raise AssertionError(f"Serve reports DEPLOY_FAILED: {app.messages}")
        return app if app is not None and app.status == "RUNNING" and app.running_replicas == replicas else None

    return wait_for(f"{model_key} RUNNING with {replicas} replica(s)", running, timeout_s, every_s=2)


def wait_gone(client: RayServeClient, model_key: str) -> None:
    wait_for(f"{model_key} gone from Serve", lambda: model_key not in client.status(), 60, every_s=0.5)


@pytest.fixture(scope="module")
def deployed(client, tiny_model) -> dict:
    """MODEL, applied once for this module and RUNNING; the tests below change and finally delete it."""
    started = time.monotonic()
    client.apply_model(MODEL, llm_config(MODEL, tiny_model))
    applied = time.monotonic()
    wait_running(client, MODEL, 1)
    print(f"\napply_model returned in {applied - started:.1f} s; RUNNING after {time.monotonic() - started:.1f} s")
    return {"key": MODEL}


# --- What the tests look at -------------------------------------------------------------------------

def openai_client(head: RayHead):
    import openai

    return openai.OpenAI(base_url=router_url(head, "/v1"), api_key="unused", max_retries=0, timeout=60)


def chat(head: RayHead, model: str) -> str:
    reply = openai_client(head).chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    return reply.choices[0].message.content


# --- Tests, in the order a cluster lives them ---------------------------------------------------

def test_an_unreachable_cluster_is_serve_unavailable(settings):
    settings.RAY_ADDRESS = f"127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ServeUnavailable, match="does not accept connections"):
        RayServeClient().status()
    assert time.monotonic() - started < 5


def test_ensure_started_again_leaves_the_router_running_as_it_was(ray_head, client):
    before = replicas(ray_head, ROUTER_APP)
    assert len(before) == 1
    client.ensure_started(http_port=ray_head.serve_port)
    client.ensure_started(http_port=ray_head.serve_port)
    assert replicas(ray_head, ROUTER_APP) == before
    assert client.status()[ROUTER_APP].status == "RUNNING"


def test_models_is_an_empty_list_before_any_model(ray_head, client):
    assert listed_models(ray_head) == []


def test_an_applied_model_runs_and_answers_through_the_router(ray_head, client, deployed):
    app = client.status()[MODEL]
    assert app.status == "RUNNING"
    (deployment,) = app.deployments
    assert deployment.name.startswith("LLMServer:") and deployment.replica_states == {"RUNNING": 1}
    assert listed_models(ray_head) == [MODEL]

    api = openai_client(ray_head)
    assert api.models.retrieve(MODEL).id == MODEL
    started = time.monotonic()
    reply = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8)
    print(f"\nchat completion through the router: {time.monotonic() - started:.3f} s")
    assert reply.model == MODEL
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.completion_tokens > 0

    chunks = list(api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, stream=True))
    assert len(chunks) > 1
    assert sum(len(c.choices[0].delta.content or "") for c in chunks if c.choices) > 0

    completion = api.completions.create(model=MODEL, prompt="The quick brown", max_tokens=4)
    assert completion.choices[0].text
    streamed = list(api.completions.create(model=MODEL, prompt="The quick brown", max_tokens=4, stream=True))
    assert "".join(c.choices[0].text for c in streamed)


def test_the_engine_log_says_what_memory_vllm_took_at_start(ray_head, client, deployed):
    """What observe_vram scores the VRAM estimate against, read from the real replica's log."""
    from serving.vram_fit.vllm_log import read_startup

    logged = read_startup(client.engine_log(MODEL))
    print(f"\nvLLM logged at start: {logged.as_dict()}")
    assert logged.device == "CPU" and logged.kv_tokens > 0
    assert logged.max_model_len == 256 and logged.concurrency == pytest.approx(logged.kv_tokens / 256, abs=0.01)
    assert client.engine_log("no-such-model") == ""


@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_error_keeps_its_status_through_the_router(ray_head, deployed, stream):
    import openai

    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(ray_head).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=100_000, stream=stream
        )
    assert "max_model_len" in raised.value.body["message"]


def test_an_unknown_model_is_an_openai_404(ray_head, deployed):
    import openai

    with pytest.raises(openai.NotFoundError) as raised:
        openai_client(ray_head).chat.completions.create(model="nobody-202611250000-nothing", messages=[{"role": "user", "content": "Hi"}])
    error = raised.value.body  # the openai client unwraps {"error": {...}}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "model", "model_not_found")
    assert "nobody-202611250000-nothing" in error["message"]
    status, body = get_json(router_url(ray_head, "/v1/models/nobody-202611250000-nothing"))
    assert status == 404 and body["error"]["code"] == "model_not_found"


def test_scaling_keeps_the_replicas_that_already_run(ray_head, client, tiny_model, deployed):
    one = llm_config(MODEL, tiny_model, replicas=1)
    two = llm_config(MODEL, tiny_model, replicas=2)
    (first,) = replicas(ray_head, MODEL).items()

    client.apply_model(MODEL, two, previous=one)
    wait_running(client, MODEL, 2)
    after_up = replicas(ray_head, MODEL)
    assert len(after_up) == 2
    assert after_up[first[0]] == first[1], "scaling 1 -> 2 replaced the replica that was running"

    client.apply_model(MODEL, one, previous=two)
    wait_running(client, MODEL, 1, timeout_s=60)
    (kept,) = replicas(ray_head, MODEL).items()
    assert kept in after_up.items(), "scaling 2 -> 1 started a new replica instead of keeping one"
    assert chat(ray_head, MODEL)


def test_adding_and_deleting_another_model_restarts_nothing_else(ray_head, client, tiny_model, deployed):
    model_before, router_before = replicas(ray_head, MODEL), replicas(ray_head, ROUTER_APP)

    client.apply_model(OTHER_MODEL, llm_config(OTHER_MODEL, tiny_model))
    wait_running(client, OTHER_MODEL, 1)
    assert sorted(listed_models(ray_head)) == sorted([MODEL, OTHER_MODEL])
    assert chat(ray_head, OTHER_MODEL)
    assert chat(ray_head, MODEL)

    client.delete_model(OTHER_MODEL)
    wait_gone(client, OTHER_MODEL)
    assert listed_models(ray_head) == [MODEL]

    assert replicas(ray_head, MODEL) == model_before
    assert replicas(ray_head, ROUTER_APP) == router_before
    assert chat(ray_head, MODEL)


def test_a_deleted_model_is_gone_from_serve_and_the_router(ray_head, client, deployed):
    assert chat(ray_head, MODEL)  # the router holds a handle to it now
    client.delete_model(MODEL)
    client.delete_model(MODEL)  # deleting twice, or a model Serve never had, is fine
    client.delete_model("nobody-202611250000-nothing")
    wait_gone(client, MODEL)

    assert MODEL not in client.status()
    assert listed_models(ray_head) == []
    assert client.status()[ROUTER_APP].status == "RUNNING"


def test_a_model_deployed_again_under_a_deleted_name_answers_again(ray_head, client, tiny_model, deployed):
    """A user who posts a deleted model's suffix again gets the same model id back (DESIGN), while
    the router may still hold a handle from before the delete."""
    import openai

    client.apply_model(MODEL, llm_config(MODEL, tiny_model))
    wait_running(client, MODEL, 1)
    assert chat(ray_head, MODEL)
    assert listed_models(ray_head) == [MODEL]

    client.delete_model(MODEL)
    wait_gone(client, MODEL)
    with pytest.raises(openai.NotFoundError):
        chat(ray_head, MODEL)
