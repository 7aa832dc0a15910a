"""Engine metrics: the parser and Prometheus' arithmetic on text a real Ray node exported (two scrapes
of one tiny CPU model, before and after 8 streamed requests: engine_metrics_export_before.txt and
_after.txt, cut down to the vLLM families Gantry reads plus a few of Ray's own lines), the scrape
task against a real HTTP endpoint, the model page's card and its "No metrics" reasons, /metrics."""
from __future__ import annotations

import html
import http.server
import math
import re
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from serving import engine_metrics
from serving.engine_export import parse_export
from serving.engine_figures import EngineReading, Histogram, figures
from serving.models import EngineMetricSample, EngineMetricsScrape, ServeModel

HERE = Path(__file__).parent
BEFORE = (HERE / "engine_metrics_export_before.txt").read_text()
AFTER = (HERE / "engine_metrics_export_after.txt").read_text()
MODEL = "alice-202612011929-metrics-5432bf"  # the model id the captured engine served
REPLICA = "edmw976w/0"  # its replica's ReplicaId / engine index
# Before: one warm-up request of 4 tokens. After: 8 more of 96 tokens each, queued one at a time.
BEFORE_TOKENS, BEFORE_REQUESTS = 4, 1
AFTER_TOKENS, AFTER_REQUESTS = 772, 9
# The 8 requests' TTFT bucket counts: 1 in (0.02, 0.04], 1 in (0.25, 0.5], 1 in (0.5, 0.75],
# 4 in (1, 2.5], 1 in (2.5, 5]. p50: rank 4 falls 1/4 into (1, 2.5] -> 1.375; p95: rank 7.6 falls
# 0.6 into (2.5, 5] -> 4.0; mean: Ray's midpoint sum (0.03 + 0.375 + 0.625 + 4 * 1.75 + 3.75) / 8.
PINNED_TTFT = (1.375, 4.0, 1.4725)
# 760 inter-token latencies, 691 of them under 10 ms and 57 in (10, 25] ms: p50 = 0.01 * 380/691,
# p95 = 0.01 + 0.015 * 31/57, mean = Ray's midpoint sum / 760.
PINNED_ITL = (0.01 * 380 / 691, 0.01 + 0.015 * 31 / 57, 0.0074868421052630765)
INF = math.inf


# --- Parsing what Ray exports -------------------------------------------------------------------

def test_it_reads_one_engine_per_replica_labelled_with_the_model():
    (engine,) = parse_export(AFTER, "10.0.0.2:8080")
    assert engine.model == MODEL
    assert engine.endpoint == "10.0.0.2:8080"
    assert engine.replica == REPLICA
    assert (engine.running, engine.waiting, engine.kv_cache) == (0.0, 0.0, 0.0)
    assert engine.generation_tokens == AFTER_TOKENS
    assert engine.preemptions == 0.0  # never incremented, so Ray exports no series at all
    assert engine.ttft.count == AFTER_REQUESTS
    assert engine.itl.count == AFTER_TOKENS - AFTER_REQUESTS  # one latency per token after the first


def test_it_ignores_rays_own_metrics_and_other_families():
    text = AFTER + '\nray_node_cpu_utilization{NodeAddress="10.0.0.2"} 12.5\nray_vllm_num_requests_running{ReplicaId="x",engine="0"} 3.0\n'
    assert [e.model for e in parse_export(text, "n")] == [MODEL]  # a vLLM series without model_name is nobody's


def with_second_replica(text: str) -> str:
    """The export as it reads with a second replica of the model on the node: each series twice."""
    lines = []
    for line in text.splitlines():
        lines.append(line)
        if 'ReplicaId="edmw976w"' in line:
            lines.append(line.replace('ReplicaId="edmw976w"', 'ReplicaId="second"'))
    return "\n".join(lines) + "\n"


def test_two_replicas_on_one_node_are_two_engines_and_are_summed():
    engines = parse_export(with_second_replica(AFTER), "n")
    assert sorted(e.replica for e in engines) == sorted([REPLICA, "second/0"])
    earlier = {e.key: e for e in parse_export(with_second_replica(BEFORE), "n")}
    found = figures(engines, earlier, {"n"}, 20.0)
    assert found.replicas == 2 and found.requests == 2 * (AFTER_REQUESTS - BEFORE_REQUESTS)
    assert found.generation_tokens_per_s == pytest.approx(2 * (AFTER_TOKENS - BEFORE_TOKENS) / 20.0)
    assert found.ttft_mean == pytest.approx(PINNED_TTFT[2])  # the same latencies twice: the same mean


# --- Prometheus' arithmetic ---------------------------------------------------------------------

def hist(buckets: dict[float, float], total: float = 0.0) -> Histogram:
    return Histogram(buckets, total, buckets[INF])


def test_a_quantile_interpolates_inside_its_bucket_as_histogram_quantile_does():
    h = hist({0.01: 2, 0.02: 2, 0.04: 3, INF: 3})
    assert h.quantile(0.5) == pytest.approx(0.0075)  # rank 1.5 of 2 in (0, 0.01]: the first bucket starts at 0
    assert h.quantile(0.95) == pytest.approx(0.02 + 0.02 * 0.85)  # rank 2.85: 0.85 of the way through (0.02, 0.04]


def test_a_quantile_in_the_inf_bucket_is_the_highest_finite_bound():
    assert hist({0.1: 1, 1.0: 1, INF: 4}).quantile(0.95) == 1.0


def test_no_observations_is_no_quantile_and_no_mean():
    assert hist({0.1: 0, INF: 0}).quantile(0.5) is None
    assert hist({0.1: 0, INF: 0}).mean() is None
    assert Histogram().quantile(0.5) is None


def test_the_window_is_the_difference_and_a_restarted_series_counts_from_its_restart():
    earlier, later = hist({0.1: 5, INF: 6}, 3.0), hist({0.1: 7, INF: 9}, 4.5)
    assert later.since(earlier) == Histogram({0.1: 2, INF: 3}, 1.5, 3)
    restarted = hist({0.1: 1, INF: 1}, 0.05)
    assert restarted.since(earlier) == restarted


def test_the_captured_scrapes_give_these_figures():
    (before,) = parse_export(BEFORE, "n")
    (after,) = parse_export(AFTER, "n")
    found = figures([after], {before.key: before}, {"n"}, 20.0)
    assert found.replicas == 1
    assert found.requests == AFTER_REQUESTS - BEFORE_REQUESTS
    assert found.generation_tokens_per_s == pytest.approx((AFTER_TOKENS - BEFORE_TOKENS) / 20.0)
    assert found.preemptions == 0
    assert (found.ttft_p50, found.ttft_p95, found.ttft_mean) == pytest.approx(PINNED_TTFT)
    assert (found.itl_p50, found.itl_p95, found.itl_mean) == pytest.approx(PINNED_ITL)
    assert found.decode_tokens_per_s == pytest.approx(1 / PINNED_ITL[2])


def reading(replica: str, tokens: float, endpoint: str = "a:1", **fields) -> EngineReading:
    return EngineReading(MODEL, endpoint, replica, generation_tokens=tokens, **fields)


def test_replicas_are_summed_and_a_new_replica_counts_from_zero():
    earlier = {r.key: r for r in [reading("r1/0", 100)]}
    now = [reading("r1/0", 160, running=2, waiting=1, kv_cache=0.2), reading("r2/0", 30, running=1, kv_cache=0.4)]
    found = figures(now, earlier, {"a:1"}, 10.0)
    assert found.generation_tokens_per_s == pytest.approx((60 + 30) / 10)
    assert (found.running, found.waiting, found.replicas) == (3, 1, 2)
    assert found.kv_cache == pytest.approx(0.3)  # the replicas' mean: each has its own cache


def test_a_series_from_a_node_that_was_not_read_before_is_left_out_of_the_rates():
    # Its whole past would otherwise count as this window's work.
    now = [reading("r1/0", 160), reading("r9/0", 5000, endpoint="b:1")]
    found = figures(now, {"a:1|r1/0": reading("r1/0", 100)}, {"a:1"}, 10.0)
    assert found.generation_tokens_per_s == pytest.approx(6.0)


def test_without_an_earlier_sample_there_are_gauges_but_no_rates():
    found = figures([reading("r1/0", 160, running=1)], None, set(), None)
    assert found.running == 1 and found.generation_tokens_per_s is None and found.ttft_p50 is None


# --- The scrape, against a real HTTP endpoint ---------------------------------------------------

class Export:
    """A node's metrics endpoint: serves whatever `text` is now."""

    def __init__(self) -> None:
        self.text = ""
        export = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 — http.server's name
                body = export.text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def export():
    served = Export()
    yield served
    served.close()


@pytest.fixture
def captured_model(db, alice):
    """Alice's RUNNING model under the id the captured engine served."""
    resolved = {"suffix": "metrics", "model_id": MODEL, "model_source": "/hf/tiny-llama", "num_replicas": 1, "gpus_per_replica": 0, "engine_kwargs": {}}
    return ServeModel.objects.create(model_key=MODEL, model_id=MODEL, owner=alice, suffix="metrics", spec_yaml="model_id: metrics\n", resolved_spec=resolved, state="RUNNING")


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: connecting is refused


def test_two_scrapes_store_the_models_figures(fake_serve, export, captured_model, settings):
    settings.GANTRY_ENGINE_METRICS_WINDOW_S = 15
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": export.port}]
    t0 = timezone.now()
    export.text = BEFORE
    assert engine_metrics.scrape(fake_serve, now=t0) == {"nodes": 1, "failed": 0, "samples": 1}
    export.text = AFTER
    engine_metrics.scrape(fake_serve, now=t0 + timedelta(seconds=20))
    first, second = EngineMetricSample.objects.filter(model=captured_model).order_by("at")
    assert first.generation_tokens_per_s is None  # nothing to compare with yet
    assert second.window_s == 20.0
    assert second.requests == AFTER_REQUESTS - BEFORE_REQUESTS
    assert second.generation_tokens_per_s == pytest.approx((AFTER_TOKENS - BEFORE_TOKENS) / 20.0)
    assert second.ttft_mean == pytest.approx(PINNED_TTFT[2])
    scrape = EngineMetricsScrape.current()
    assert scrape.nodes == [{"endpoint": f"127.0.0.1:{export.port}", "node_id": "n1", "error": "", "models": [MODEL]}]


def test_the_rate_window_reaches_back_past_neighbouring_scrapes(fake_serve, export, captured_model, settings):
    # Ray pushes to its export every 10 s; scrapes as often see zero or two pushes in between.
    settings.GANTRY_ENGINE_METRICS_WINDOW_S = 30
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": export.port}]
    t0 = timezone.now()
    for seconds, text in ((0, BEFORE), (10, AFTER), (20, AFTER), (30, AFTER), (40, AFTER)):
        export.text = text
        engine_metrics.scrape(fake_serve, now=t0 + timedelta(seconds=seconds))
    windows = list(EngineMetricSample.objects.filter(model=captured_model).order_by("at").values_list("window_s", flat=True))
    assert windows == [None, 10.0, 20.0, 30.0, 30.0]


def test_a_model_gantry_does_not_know_is_not_stored(fake_serve, export, db):
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": export.port}]
    export.text = AFTER
    assert engine_metrics.scrape(fake_serve)["samples"] == 0
    assert not EngineMetricSample.objects.exists()


def test_old_samples_are_pruned(fake_serve, export, captured_model, settings):
    settings.GANTRY_ENGINE_METRICS_KEEP_MINUTES = 60
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": export.port}]
    export.text = AFTER
    t0 = timezone.now()
    engine_metrics.scrape(fake_serve, now=t0 - timedelta(minutes=61))
    engine_metrics.scrape(fake_serve, now=t0)
    assert list(EngineMetricSample.objects.values_list("at", flat=True)) == [t0]


def test_the_task_runs_on_the_health_queue_from_beat(settings):
    from dashboard.celery import app
    from serving.tasks import scrape_engine_metrics

    assert app.amqp.router.route({}, scrape_engine_metrics.name)["queue"].name == "health"
    assert scrape_engine_metrics.queue == "health"  # also when called with .delay() from anywhere
    entry = settings.CELERY_BEAT_SCHEDULE["serving-engine-metrics"]
    assert entry["task"] == "serving.tasks.scrape_engine_metrics"
    assert entry["schedule"] == float(settings.GANTRY_ENGINE_METRICS_INTERVAL_S)


@pytest.mark.django_db(transaction=True)
def test_the_task_lands_on_the_health_queue_of_the_real_broker(broker):
    from serving.tasks import scrape_engine_metrics

    scrape_engine_metrics.delay()
    assert (broker.llen("health"), broker.llen("serve")) == (1, 0)


# --- "No metrics", with the reason --------------------------------------------------------------

def card(client, model: ServeModel) -> str:
    response = client.get(f"/serving/{model.model_key}/metrics")
    assert response.status_code == 200
    return response.content.decode()


def reason(page: str) -> str:
    found = re.search(r'<span id="no-metrics-reason">(.*?)</span>', page, re.S)
    assert found, "no 'No metrics' reason on the card"
    return html.unescape(found.group(1))


def test_a_node_whose_endpoint_refuses_is_the_reason(fake_serve, export, captured_model, alice_client, settings):
    port = closed_port()
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": port}]
    engine_metrics.scrape(fake_serve)
    page = card(alice_client, captured_model)
    assert "<strong>No metrics</strong>" in page and "<svg" not in page
    assert reason(page) == f"no sample yet — the last scrape of node 127.0.0.1:{port} failed: Connection refused"


def test_a_sample_older_than_twice_the_interval_is_no_metrics_and_says_since_when(fake_serve, export, captured_model, alice_client, settings):
    settings.GANTRY_ENGINE_METRICS_INTERVAL_S = 10
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": export.port}]
    export.text = AFTER
    old = timezone.now() - timedelta(seconds=21)
    engine_metrics.scrape(fake_serve, now=old)
    port = closed_port()
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": port}]
    engine_metrics.scrape(fake_serve)
    clock = timezone.localtime(old, timezone.get_fixed_timezone(0)).strftime("%H:%M:%S")
    assert reason(card(alice_client, captured_model)) == f"no sample since {clock} UTC — the last scrape of node 127.0.0.1:{port} failed: Connection refused"


def test_an_engine_that_has_not_reported_yet_says_so(fake_serve, export, captured_model, alice_client):
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": export.port}]
    export.text = "# HELP ray_node_cpu_utilization x\n# TYPE ray_node_cpu_utilization gauge\nray_node_cpu_utilization 1.0\n"
    engine_metrics.scrape(fake_serve)
    assert "the engine has not reported yet" in reason(card(alice_client, captured_model))


def test_an_engine_that_stopped_reporting_says_so(fake_serve, export, captured_model, alice_client):
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": export.port}]
    export.text = AFTER
    engine_metrics.scrape(fake_serve, now=timezone.now() - timedelta(seconds=30))
    export.text = ""
    engine_metrics.scrape(fake_serve)
    assert "the nodes' exports no longer have this model's engine figures" in reason(card(alice_client, captured_model))


def test_never_scraped_and_a_stopped_scrape_say_who_runs_it(captured_model, alice_client, settings):
    assert "Gantry has not read the engines' metrics yet" in reason(card(alice_client, captured_model))
    EngineMetricsScrape.note(timezone.now() - timedelta(minutes=5), error="", nodes=[])
    assert "is a worker on the health queue and beat running?" in reason(card(alice_client, captured_model))


def test_an_unreachable_cluster_is_the_reason(fake_serve, captured_model, alice_client):
    fake_serve.unavailable = True
    engine_metrics.scrape(fake_serve)
    assert "could not list the Ray nodes: connection refused (fake)" in reason(card(alice_client, captured_model))


# --- The card and /metrics with a fresh sample --------------------------------------------------

@pytest.fixture
def two_samples(fake_serve, export, captured_model, settings):
    settings.GANTRY_ENGINE_METRICS_WINDOW_S = 15
    fake_serve.metrics_nodes = [{"node_id": "n1", "address": "127.0.0.1", "port": export.port}]
    now = timezone.now()
    export.text = BEFORE
    engine_metrics.scrape(fake_serve, now=now - timedelta(seconds=20))
    export.text = AFTER
    engine_metrics.scrape(fake_serve, now=now)
    return captured_model


def test_the_card_shows_the_figures_and_sparklines_and_polls(two_samples, alice_client):
    page = card(alice_client, two_samples)
    assert "No metrics" not in page
    value = re.search(r'id="ttft-mean" data-value="([^"]+)">([^<]+)<', page)
    assert float(value.group(1)) == pytest.approx(PINNED_TTFT[2]) and value.group(2) == f"{PINNED_TTFT[2] * 1000:.1f} ms"
    assert page.count("<svg") == 6 and 'class="line-1"' in page  # p95 drawn beside p50
    assert f'hx-get="/serving/{two_samples.model_key}/metrics" hx-trigger="every 5s"' in page
    detail = alice_client.get(f"/serving/{two_samples.model_key}").content.decode()
    assert 'id="live-metrics"' in detail and 'id="ttft-mean"' in detail


def test_a_deleted_model_stops_polling(two_samples, alice_client):
    ServeModel.objects.filter(pk=two_samples.pk).update(state="DELETED")
    assert "hx-trigger" not in card(alice_client, two_samples)


def test_another_users_model_is_a_404(two_samples, bob_client):
    assert bob_client.get(f"/serving/{two_samples.model_key}/metrics").status_code == 404


def exposed(client) -> dict:
    """/metrics as {(sample name, labels): value}, read with Prometheus' own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").content.decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_has_the_models_gauges_while_fresh(two_samples, admin_client):
    got = exposed(admin_client)
    model = (("model", MODEL),)

    def quantile(q):
        return (("model", MODEL), ("quantile", q))

    assert got[("gantry_model_ttft_seconds", quantile("0.5"))] == pytest.approx(PINNED_TTFT[0])
    assert got[("gantry_model_ttft_seconds", quantile("0.95"))] == pytest.approx(PINNED_TTFT[1])
    assert got[("gantry_model_ttft_mean_seconds", model)] == pytest.approx(PINNED_TTFT[2])
    assert got[("gantry_model_itl_seconds", quantile("0.5"))] == pytest.approx(PINNED_ITL[0])
    assert got[("gantry_model_itl_seconds", quantile("0.95"))] == pytest.approx(PINNED_ITL[1])
    assert got[("gantry_model_itl_mean_seconds", model)] == pytest.approx(PINNED_ITL[2])
    assert got[("gantry_model_decode_tokens_per_second", model)] == pytest.approx(1 / PINNED_ITL[2])
    assert got[("gantry_model_generation_tokens_per_second", model)] == pytest.approx((AFTER_TOKENS - BEFORE_TOKENS) / 20.0)
    assert got[("gantry_model_requests", (("model", MODEL), ("state", "running")))] == 0
    assert got[("gantry_model_requests", (("model", MODEL), ("state", "waiting")))] == 0
    assert got[("gantry_model_kv_cache_usage_ratio", model)] == 0
    assert got[("gantry_model_engine_replicas", model)] == 1
    assert got[("gantry_model_generation_tokens_total", model)] == AFTER_TOKENS
    assert got[("gantry_model_preemptions_total", model)] == 0


def test_metrics_leaves_out_a_model_whose_sample_is_stale(two_samples, admin_client, settings):
    EngineMetricSample.objects.update(at=timezone.now() - timedelta(seconds=2 * settings.GANTRY_ENGINE_METRICS_INTERVAL_S + 1))
    assert "gantry_model_ttft_seconds{" not in admin_client.get("/metrics").content.decode()
