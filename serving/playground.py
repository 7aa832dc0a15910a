"""The model page's playground: one prompt, streamed token by token from the same OpenAI endpoint
clients use (the router), with time to first token and tokens per second measured here.

The browser posts the prompt and gets back a signed ticket naming user, model, prompt and limits;
its EventSource then opens the stream with the ticket (EventSource can only GET, and a prompt does
not belong in a URL anyone could replay: the ticket expires and is bound to the user). Every call is
a PlaygroundCall row, which is also what the per-user rate limit counts, across every web process.
"""
from __future__ import annotations

import json
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.utils import timezone
from django.utils.html import escape

from serving.models import PlaygroundCall, ServeModel
from serving.serializers import openai_base_url

SALT = "gantry.playground"
TICKET_TTL_S = 120
MAX_PROMPT_CHARS = 8000
MAX_TOKENS_LIMIT = 1024


class PlaygroundRefused(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


@dataclass(frozen=True)
class Ask:
    model_key: str
    prompt: str
    max_tokens: int


def validate(prompt, max_tokens) -> tuple[str, int]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise PlaygroundRefused(422, "Write a prompt.", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PlaygroundRefused(422, f"The prompt is {len(prompt)} characters; the playground takes at most {MAX_PROMPT_CHARS}.", "prompt")
    try:
        tokens = int(max_tokens)
    except (TypeError, ValueError):
        raise PlaygroundRefused(422, f"max_tokens must be a whole number from 1 to {MAX_TOKENS_LIMIT}.", "max_tokens") from None
    if not 1 <= tokens <= MAX_TOKENS_LIMIT:
        raise PlaygroundRefused(422, f"max_tokens must be from 1 to {MAX_TOKENS_LIMIT}; got {tokens}.", "max_tokens")
    return prompt, tokens


def check_rate(user, calls: int = 1) -> None:
    """At most GANTRY_PLAYGROUND_CALLS_PER_MINUTE calls per user (a compare is two)."""
    limit = settings.GANTRY_PLAYGROUND_CALLS_PER_MINUTE
    recent = PlaygroundCall.objects.filter(user=user, started_at__gte=timezone.now() - timedelta(minutes=1)).count()
    if recent + calls > limit:
        raise PlaygroundRefused(429, f"The playground takes {limit} calls a minute per user and you made {recent} in the last minute; try again shortly.")


def ticket(user, ask: Ask) -> str:
    return signing.dumps({"u": user.pk, "m": ask.model_key, "p": ask.prompt, "t": ask.max_tokens}, salt=SALT, compress=True)


def redeem(user, value: str, model: ServeModel) -> Ask:
    try:
        data = signing.loads(value, salt=SALT, max_age=TICKET_TTL_S)
    except signing.SignatureExpired:
        raise PlaygroundRefused(410, "This answer's ticket expired; send the prompt again.") from None
    except signing.BadSignature:
        raise PlaygroundRefused(400, "Not a playground ticket.") from None
    if data.get("u") != user.pk or data.get("m") != model.model_key:
        raise PlaygroundRefused(400, "This ticket was issued for another user or model.")
    return Ask(model.model_key, data["p"], int(data["t"]))


def request_body(model: ServeModel, ask: Ask) -> dict:
    return {
        "model": model.model_id, "messages": [{"role": "user", "content": ask.prompt}], "max_tokens": ask.max_tokens,
        "stream": True, "stream_options": {"include_usage": True},
    }


def calls_shown(model: ServeModel, ask: Ask) -> dict[str, str]:
    """The exact request, as a client would make it: curl and the openai package."""
    url = openai_base_url()
    body = request_body(model, ask)
    curl = f"curl -N {url}/chat/completions -H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body))}"
    python = (
        "from openai import OpenAI\n\n"
        f"client = OpenAI(base_url={url!r}, api_key=\"not-needed\")\n"
        f"stream = client.chat.completions.create(model={model.model_id!r}, messages={body['messages']!r},\n"
        f"                                        max_tokens={ask.max_tokens}, stream=True, stream_options={{\"include_usage\": True}})\n"
        "for chunk in stream:\n"
        "    if chunk.choices:\n"
        "        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)\n"
    )
    return {"curl": curl, "python": python}


def _event(name: str, html: str) -> bytes:
    # Each line of the data carries the prefix: an answer with newlines stays one event.
    lines = "\n".join(f"data: {line}" for line in html.split("\n"))
    return f"event: {name}\n{lines}\n\n".encode()


def stream(user, model: ServeModel, ask: Ask, *, pane: str = "") -> Iterator[bytes]:
    """SSE events for the browser: `token` (the text of each delta, escaped), then `stats` (TTFT,
    tokens, tokens/s) or `failed`, then `done`. The call is recorded whatever happens."""
    call = PlaygroundCall.objects.create(user=user, model=model, model_key=model.model_key, prompt_chars=len(ask.prompt), max_tokens=ask.max_tokens)
    started = time.perf_counter()
    first = None
    pieces = 0
    usage_tokens = None
    error = ""
    data = json.dumps(request_body(model, ask)).encode()
    request = urllib.request.Request(openai_base_url() + "/chat/completions", data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=settings.GANTRY_PLAYGROUND_TIMEOUT_S) as response:  # noqa: S310 — our own router
            for raw in response:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[len("data:"):].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content") or ""
                    if text:
                        if first is None:
                            first = time.perf_counter()
                        pieces += 1
                        yield _event("token", escape(text))
    except urllib.error.HTTPError as exc:
        error = f"the router answered HTTP {exc.code}: {exc.read()[:300].decode('utf-8', 'replace')}"
    except (OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
    ended = time.perf_counter()
    tokens = usage_tokens if usage_tokens is not None else pieces
    ttft_ms = round((first - started) * 1000, 1) if first is not None else None
    rate = round((tokens - 1) / (ended - first), 1) if first is not None and tokens > 1 and ended > first else None
    PlaygroundCall.objects.filter(pk=call.pk).update(
        finished_at=timezone.now(), ttft_ms=ttft_ms, completion_tokens=tokens, tokens_per_s=rate, error=error,
    )
    if error:
        yield _event("failed", f'<span class="field-error">{escape(error)}</span>')
    else:
        figures = f"time to first token <strong data-ttft-ms=\"{ttft_ms or ''}\">{ttft_ms if ttft_ms is not None else '—'} ms</strong> · " \
                  f"<strong data-tokens=\"{tokens}\">{tokens}</strong> tokens · " \
                  f"<strong data-tokens-per-s=\"{rate or ''}\">{rate if rate is not None else '—'}</strong> tokens/s"
        yield _event("stats", figures)
    yield _event("done", "")
