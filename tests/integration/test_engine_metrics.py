"""Live engine metrics on the real CPU engine: a model deployed through Gantry answers real streamed
requests through the router, the scrape task (the code beat runs on the health queue) reads the Ray
node's metrics endpoint before and after, and the model's page and /metrics show the engine's
time to first token and tokens per second, compared with what this test measured as a client.

Which server figure matches which client figure, honestly:
- time to first token: vLLM measures from the request's arrival at its engine to the first token;
  the client also waits for Serve's proxy, Gantry's router and Ray Serve LLM's 50 ms stream
  batching (RAYLLM_MODEL_RESPONSE_BATCH_TIMEOUT_MS), 0.2-0.5 s on this loaded 2-core machine. So the
  load queues: the engine runs one sequence at a time (max_num_seqs 1) and the requests arrive
  together, so most of each request's TTFT is its wait in the engine's queue, which both sides see.
  Compared: the server's mean TTFT (Δ_sum / Δ_count; Ray rebuilds _sum from bucket midpoints) with
  the client's mean TTFT.
- tokens per second: the page's figure is the engine's generated-token counter (exact: counters are
  not approximated) differenced over the sample window and summed over replicas, as Prometheus'
  rate() would; the client counterpart is the tokens it received (usage) over the time between the
  two scrapes on this test's clock.
  The per-request decode speed (1 / mean inter-token latency) is printed beside the client's per
  request rate, not asserted: this engine makes a token in 3-6 ms, under vLLM's smallest ITL bucket
  (10 ms), and Ray exports only bucket counts, so the server can only say "under 10 ms"; and the
  client's rate after its first token is inflated too, since the stack's first-chunk delay lets the
  rest of the stream catch up.
Measured here on 2026-12-01, two runs (8 requests × 96 tokens): client mean TTFT 1.69 / 2.04 s,
server 1.47 / 2.14 s; 768 tokens both sides; decode per request 240 / 198 tokens/s client-side,
1 / mean ITL 134 / 128 on the server.
"""
from __future__ import annotations

import json
import re
import threading
import time
import urllib.request

import pytest

from serving import tasks
from serving.choices import State
from serving.cluster import get_client
from serving.engine_export import parse_export
from serving.engine_metrics import read_endpoint
from serving.models import EngineMetricSample
from tests.integration.test_serving_end_to_end import Api, drive, suffix
from tests.ray_cluster import listed_models, router_url

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

REQUESTS = 8
MAX_TOKENS = 96


def stream_chat(url: str, model: str, max_tokens: int) -> dict:
    """One streamed chat completion, timed as a client sees it."""
    body = json.dumps({
        "model": model, "messages": [{"role": "user", "content": "Tell me about Ray Serve"}], "max_tokens": max_tokens,
        # Exactly max_tokens each (the tiny model's random weights may say EOS at any point), and
        # the usage chunk, so the client's count is the server's unit: tokens, not SSE events.
        "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True},
    }).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    first = last = None
    tokens = 0
    with urllib.request.urlopen(request, timeout=180) as response:
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                last = time.perf_counter() - started
                first = last if first is None else first
    assert first is not None and tokens > 1, (first, tokens)
    return {"ttft": first, "tokens": tokens, "decode_rate": (tokens - 1) / (last - first) if last > first else None}


def exported(head, model: str) -> tuple[float, float]:
    """The model's generated tokens and first tokens as the node's export shows them now."""
    engines = [e for e in parse_export(read_endpoint(f"127.0.0.1:{head.metrics_port}", 10), "node") if e.model == model]
    return sum(e.generation_tokens for e in engines), sum(e.ttft.count for e in engines)


def wait_for_export(head, model: str, tokens: float, requests: float) -> None:
    """Ray pushes a worker's figures to the node's export every 10 s: wait until it has them all."""
    deadline = time.monotonic() + 60
    while exported(head, model) != (tokens, requests):
        assert time.monotonic() < deadline, f"the export shows {exported(head, model)}, expected {(tokens, requests)}"
        time.sleep(0.5)


def figure(page: str, element_id: str) -> float:
    found = re.search(rf'id="{element_id}" data-value="([^"]+)"', page)
    assert found, f"no #{element_id} with a value on the page"
    return float(found.group(1))


def gauge(text: str, name: str, model: str, extra: str = "") -> float:
    found = re.search(rf'^{name}\{{model="{re.escape(model)}"{extra}\}} (\S+)$', text, re.M)
    assert found, f"{name} for {model} not in /metrics"
    return float(found.group(1))


def test_the_page_and_metrics_show_the_engines_ttft_and_tokens_per_second(gantry, client, alice, admin, settings, test_output):
    head = gantry
    settings.GANTRY_ENGINE_METRICS_WINDOW_S = 1  # rates between this test's two scrapes, however close
    settings.GANTRY_ENGINE_METRICS_INTERVAL_S = 600  # the samples stay fresh while the test looks
    alices = Api(client, alice)
    created = alices.create(f"model_id: {suffix('metrics')}\nmodel_source: $HOME/common/hf/tiny-llama\nengine_kwargs:\n  max_num_seqs: 1\n")
    key = model_id = created["model_key"]
    try:
        drive(key, lambda m: m.state == State.RUNNING)
        assert get_client().metrics_endpoints() == [{"node_id": head_node(), "address": node_address(), "port": head.metrics_port}]
        chat_url = router_url(head, "/v1/chat/completions")

        # The engine's series exist once it has served a request; the first scrape then has a base.
        warm = stream_chat(chat_url, model_id, 4)
        wait_for_export(head, model_id, warm["tokens"], 1)
        (test_output / "engine-metrics-export-before.txt").write_text(read_endpoint(f"127.0.0.1:{head.metrics_port}", 10))
        scraped_before = time.monotonic()
        tasks.scrape_engine_metrics()
        assert EngineMetricSample.objects.filter(model_key=key).count() == 1

        results: list[dict] = []
        threads = [threading.Thread(target=lambda: results.append(stream_chat(chat_url, model_id, MAX_TOKENS))) for _ in range(REQUESTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == REQUESTS, "a request failed"
        client_tokens = sum(r["tokens"] for r in results)
        wait_for_export(head, model_id, warm["tokens"] + client_tokens, 1 + REQUESTS)
        (test_output / "engine-metrics-export-after.txt").write_text(read_endpoint(f"127.0.0.1:{head.metrics_port}", 10))
        scraped_after = time.monotonic()
        report = tasks.scrape_engine_metrics()
        assert report["failed"] == 0 and report["samples"] >= 1, report
        after = EngineMetricSample.objects.filter(model_key=key).latest("at")
        assert after.requests == REQUESTS

        client.force_login(alice)
        card = client.get(f"/serving/{key}/metrics").content.decode()
        page = client.get(f"/serving/{key}").content.decode()
        assert 'id="live-metrics"' in page and 'hx-trigger="every 5s"' in page and "<svg" in card
        client.force_login(admin)
        exposition = client.get("/metrics").content.decode()
        (test_output / "engine-metrics-card.html").write_text(card)

        client_ttft = sum(r["ttft"] for r in results) / REQUESTS
        window = scraped_after - scraped_before  # this test's clock, not the samples' timestamps
        client_throughput = client_tokens / window
        decode_rates = [r["decode_rate"] for r in results if r["decode_rate"]]
        page_ttft, metrics_ttft = figure(card, "ttft-mean"), gauge(exposition, "gantry_model_ttft_mean_seconds", model_id)
        page_tps, metrics_tps = figure(card, "generation-tokens-per-s"), gauge(exposition, "gantry_model_generation_tokens_per_second", model_id)
        measured = {
            "client_ttft_mean_s": client_ttft, "client_ttfts_s": sorted(r["ttft"] for r in results),
            "server_ttft_mean_s": page_ttft, "server_ttft_p50_s": after.ttft_p50, "server_ttft_p95_s": after.ttft_p95,
            "client_tokens": client_tokens, "window_s": window, "sample_window_s": after.window_s,
            "client_tokens_per_s_over_window": client_throughput, "server_generation_tokens_per_s": page_tps,
            "client_decode_tokens_per_s_per_request_mean": sum(decode_rates) / len(decode_rates),
            "server_decode_tokens_per_s_1_over_mean_itl": after.decode_tokens_per_s, "server_itl_mean_s": after.itl_mean,
        }
        (test_output / "engine-metrics-measured.json").write_text(json.dumps(measured, indent=2))
        print(json.dumps(measured, indent=2))

        assert page_ttft == pytest.approx(metrics_ttft) and page_ttft > 0
        assert 0 < figure(card, "ttft-p50") <= figure(card, "ttft-p95")
        assert page_ttft == pytest.approx(client_ttft, rel=0.2), measured
        assert page_tps == pytest.approx(metrics_tps) and page_tps > 0
        assert page_tps == pytest.approx(client_throughput, rel=0.2), measured
        # Counters are exact in Ray's export: over its window the figure is the client's tokens to the token.
        assert page_tps * after.window_s == pytest.approx(client_tokens), measured
        assert gauge(exposition, "gantry_model_generation_tokens_total", model_id) == warm["tokens"] + client_tokens
        assert gauge(exposition, "gantry_model_requests", model_id, ',state="waiting"') == 0
    finally:
        alices.delete(key)
        drive(key, lambda m: m.state == State.DELETED, expect_failure=True)
    assert model_id not in listed_models(head) and key not in get_client().status()


def head_node() -> str:
    import ray

    (node,) = [n for n in ray.nodes() if n.get("Alive")]
    return node["NodeID"]


def node_address() -> str:
    import ray

    (node,) = [n for n in ray.nodes() if n.get("Alive")]
    return node["NodeManagerAddress"]

