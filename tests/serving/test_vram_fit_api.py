"""POST /api/v2/preflight/vram-fit: the same "will it fit on…" as the command and the preview, for a spec
the caller may deploy: against the cluster's GPUs and each ?gpu= asked about; bad input is a clear
4xx and nothing is deployed."""
from __future__ import annotations

import pytest

from serving.models import ServeModel
from serving.vram_fit import GIB
from tests.gates.test_preflight_api import Api
from tests.health.gpu_readings import gpu, node
from tests.serving.test_vram_fit import llama_8b

pytestmark = pytest.mark.django_db

URL = "/api/v2/preflight/vram-fit"
SPEC = "model_id: big\nmodel_source: $HOME/common/hf/llama-8b\nengine_kwargs: {max_model_len: 8192}\n"


@pytest.fixture
def api(client, alice, roots):
    llama_8b(roots / "hf" / "llama-8b")
    return Api(client, alice)


def test_what_if_rows_answer_for_each_gpu_asked_about(api, settings):
    settings.GANTRY_ENGINE = "cpu"
    response = api.post_yaml(SPEC, f"{URL}?gpu=H100-80GB&gpu=T4")

    assert response.status_code == 200
    body = response.json()
    assert body["cluster"] is None  # CPU replicas: nothing on the cluster to compare
    h100, t4 = body["what_if"]
    assert (h100["gpu"], h100["starts"], t4["gpu"], t4["starts"]) == ("H100-80GB", True, "T4", False)
    assert h100["kv_tokens"] > 400_000 and h100["total_source"].startswith("https://")
    assert t4["smallest_gpus_per_replica"] == 2 and "gpus_per_replica: 2" in t4["advice"]
    assert not ServeModel.objects.exists()


@pytest.mark.usefixtures("gpu_engine")
def test_on_the_gpu_engine_the_clusters_gpus_are_compared_too(api):
    from health.probes.gpu_probe import record_nodes

    record_nodes({"nodes": [node("a" * 56, gpus=[gpu(0, memory_used_bytes=1 * GIB, processes=[])], address="10.0.0.1")], "error": ""})
    body = api.post_yaml(SPEC.replace("model_id: big", "model_id: big\ngpus_per_replica: 1"), URL).json()
    assert body["cluster"]["checked"] and body["cluster"]["fits"]
    [gpu0] = body["cluster"]["gpus"]
    assert gpu0["node"] == "10.0.0.1" and gpu0["starts"] and gpu0["free_bytes"] == 79 * GIB


@pytest.mark.parametrize("query, status, field, says", [
    ("?gpu=B9000", 400, "gpu", "'B9000' is not a GPU the check knows"),
    ("?gpu=X:40:50", 400, "gpu", "free no more than total"),
    ("?" + "&".join(["gpu=L4"] * 17), 400, "gpu", "at most 16"),
])
def test_a_gpu_it_cannot_read_is_a_400_naming_it(api, query, status, field, says):
    response = api.post_yaml(SPEC, URL + query)
    error = response.json()["error"]
    assert response.status_code == status and error["field"] == field and says in error["message"]


def test_a_folder_it_cannot_estimate_is_a_422_on_model_source(api, roots):
    (roots / "hf" / "empty").mkdir()
    response = api.post_yaml(SPEC.replace("llama-8b", "empty"), f"{URL}?gpu=L4")
    error = response.json()["error"]
    assert response.status_code == 422 and error["field"] == "model_source" and "no config.json" in error["message"]


def test_someone_elses_folder_is_a_403_and_bad_yaml_a_400(api):
    assert api.post_yaml(SPEC.replace("$HOME/common/hf/llama-8b", "/etc"), URL).status_code == 403
    assert api.post_yaml("model_id: [", URL).status_code == 400
