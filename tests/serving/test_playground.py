"""The playground's rules, without a cluster: who may use it, what it refuses, the per-user rate
limit, the signed ticket its stream needs, and how a router's streamed answer becomes events with
the figures measured. The streamed answer from the real engine in a real browser is
tests/e2e/test_playground.py."""
from __future__ import annotations

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core import signing

from serving import playground
from serving.choices import State
from serving.models import PlaygroundCall, ServeModel
from tests.serving.factories import create_model

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("roots", "fake_serve")]


def running(user, suffix="demo") -> ServeModel:
    model = create_model(user, suffix)
    ServeModel.objects.filter(pk=model.pk).update(state=State.RUNNING)
    return ServeModel.objects.get(pk=model.pk)


def url(model, tail="") -> str:
    return f"/serving/{model.model_key}/playground{tail}"


def test_another_user_gets_404_on_every_playground_url(client, alice, bob):
    model = running(alice)
    client.force_login(bob)
    assert client.get(url(model)).status_code == 404
    assert client.post(url(model, "/ask"), {"prompt": "hi", "max_tokens": 8}).status_code == 404
    assert client.get(url(model, "/stream"), {"ticket": "x"}).status_code == 404
    assert not PlaygroundCall.objects.exists()


def test_the_owner_and_an_admin_may_use_it(client, alice, admin):
    model = running(alice)
    for user in (alice, admin):
        client.force_login(user)
        assert client.get(url(model)).status_code == 200


@pytest.mark.parametrize("form,status,field,words", [
    ({"prompt": "  ", "max_tokens": 8}, 422, "prompt", "Write a prompt"),
    ({"prompt": "x" * 8001, "max_tokens": 8}, 422, "prompt", "at most 8000"),
    ({"prompt": "hi", "max_tokens": "lots"}, 422, "max_tokens", "whole number"),
    ({"prompt": "hi", "max_tokens": 5000}, 422, "max_tokens", "from 1 to 1024"),
    ({"prompt": "hi", "max_tokens": 8, "compare": "bob-202601010000-x"}, 422, "compare", "your RUNNING models"),
])
def test_bad_input_is_refused_beside_its_field(client, alice, bob, form, status, field, words):
    model = running(alice)
    running(bob, "theirs")
    client.force_login(alice)
    response = client.post(url(model, "/ask"), form)
    assert response.status_code == status
    page = response.content.decode()
    assert f'id="{field}-errors"' in page and words in page
    assert "sse-connect" not in page


def test_a_model_that_is_not_running_is_a_409(client, alice):
    model = create_model(alice, "queued")
    client.force_login(alice)
    response = client.post(url(model, "/ask"), {"prompt": "hi", "max_tokens": 8})
    assert response.status_code == 409 and "RUNNING" in response.content.decode()


def test_calls_are_limited_per_user_and_minute_across_processes(client, alice, bob, settings):
    settings.GANTRY_PLAYGROUND_CALLS_PER_MINUTE = 3
    model, other = running(alice), running(alice, "other")
    for _ in range(2):
        PlaygroundCall.objects.create(user=alice, model=model, model_key=model.model_key, prompt_chars=2, max_tokens=8)
    old = PlaygroundCall.objects.create(user=alice, model=model, model_key=model.model_key, prompt_chars=2, max_tokens=8)
    PlaygroundCall.objects.filter(pk=old.pk).update(started_at=old.started_at - timedelta(minutes=2))  # outside the window
    client.force_login(alice)
    # A compare is two calls: 2 + 2 > 3.
    refused = client.post(url(model, "/ask"), {"prompt": "hi", "max_tokens": 8, "compare": other.model_key})
    assert refused.status_code == 429 and "3 calls a minute" in refused.content.decode()
    assert client.post(url(model, "/ask"), {"prompt": "hi", "max_tokens": 8}).status_code == 200
    client.force_login(bob)  # alice's calls are hers: bob's limit is untouched
    assert client.post(url(running(bob, "bobs"), "/ask"), {"prompt": "hi", "max_tokens": 8, "compare": ""}).status_code == 200


def test_the_answer_pane_streams_with_a_ticket_bound_to_user_and_model(client, alice, admin, monkeypatch):
    model = running(alice)
    client.force_login(alice)
    page = client.post(url(model, "/ask"), {"prompt": "Tell me <b>about</b> Ray", "max_tokens": 8}).content.decode()
    assert 'hx-ext="sse"' in page and 'sse-close="done"' in page
    ticket = page.split("?ticket=", 1)[1].split('"', 1)[0]
    ask = playground.redeem(alice, ticket, model)
    assert (ask.prompt, ask.max_tokens) == ("Tell me <b>about</b> Ray", 8)
    assert "curl -N" in page and "stream_options" in page and model.model_id in page
    with pytest.raises(playground.PlaygroundRefused):
        playground.redeem(admin, ticket, model)  # issued to alice
    with pytest.raises(playground.PlaygroundRefused):
        playground.redeem(alice, ticket[:-2] + "xx", model)
    expired = signing.dumps({"u": alice.pk, "m": model.model_key, "p": "hi", "t": 8}, salt=playground.SALT)
    later = signing.time.time() + playground.TICKET_TTL_S + 5
    monkeypatch.setattr(signing.time, "time", lambda: later)
    with pytest.raises(playground.PlaygroundRefused) as late:
        playground.redeem(alice, expired, model)
    monkeypatch.undo()
    assert late.value.status == 410
    assert client.get(url(model, "/stream"), {"ticket": "forged"}).status_code == 400


class StreamingRouter(BaseHTTPRequestHandler):
    """A stand-in at the edge for the router's /v1/chat/completions with stream=true, answering as
    vLLM's OpenAI server does: one `data:` line per delta, a usage chunk, then [DONE]."""

    asked: list[dict] = []

    def do_POST(self):  # noqa: N802 — http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        StreamingRouter.asked.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for piece in ("Hello", " <world>", "\nbye"):
            self.wfile.write(f"data: {json.dumps({'choices': [{'delta': {'content': piece}}]})}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': 3}})}\n\ndata: [DONE]\n\n".encode())

    def log_message(self, *args):
        pass


@pytest.fixture
def router(settings):
    server = ThreadingHTTPServer(("127.0.0.1", 0), StreamingRouter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings.GANTRY_SERVE_HOST, settings.GANTRY_SERVE_PORT = "127.0.0.1", server.server_address[1]
    StreamingRouter.asked = []
    yield server
    server.shutdown()


def test_a_streamed_answer_becomes_one_event_per_delta_then_the_figures(alice, router):
    model = running(alice)
    events = b"".join(playground.stream(alice, model, playground.Ask(model.model_key, "hi", 8))).decode().split("\n\n")
    names = [e.split("\n", 1)[0] for e in events if e]
    assert names == ["event: token"] * 3 + ["event: stats", "event: done"]
    assert events[1] == "event: token\ndata:  &lt;world&gt;"  # the model's text is text, never markup
    assert events[2] == "event: token\ndata: \ndata: bye"  # a newline stays inside its event
    assert 'data-tokens="3"' in events[3] and "data-ttft-ms" in events[3]
    assert StreamingRouter.asked == [{"model": model.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                                      "stream": True, "stream_options": {"include_usage": True}}]
    call = PlaygroundCall.objects.get()
    assert (call.completion_tokens, call.error) == (3, "") and call.ttft_ms is not None and call.finished_at


def test_a_router_that_fails_is_said_in_the_pane_and_recorded(alice, settings):
    from tests.ray_cluster import free_port

    settings.GANTRY_SERVE_HOST, settings.GANTRY_SERVE_PORT = "127.0.0.1", free_port()
    model = running(alice)
    events = b"".join(playground.stream(alice, model, playground.Ask(model.model_key, "hi", 8))).decode()
    assert "event: failed" in events and "event: done" in events and "event: stats" not in events
    assert "Connection refused" in PlaygroundCall.objects.get().error
