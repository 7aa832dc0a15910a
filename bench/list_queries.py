"""How the model list (API and page) scales with the number of models.

Creates 10, 100 and 1,000 models (3 events each) in a scratch database, then times
GET /api/v2/serve/models and GET /serving/ and counts their SQL queries. Prints each size's
figures and its ratio to the smallest size, measured in the same run.

    .venv/bin/python bench/list_queries.py                      # scratch SQLite
    DATABASE_URL=postgres://postgres@127.0.0.1/gantry_bench .venv/bin/python bench/list_queries.py
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def setup_django(database_url: str | None) -> None:
    scratch = tempfile.mkdtemp(prefix="gantry-bench-")
    os.environ["GANTRY_VAR_DIR"] = scratch
    # DEBUG would log every query and time that too (and cap the log CaptureQueriesContext reads).
    os.environ["DEBUG"] = "0"
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{scratch}/bench.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def grow_to(owner, target: int) -> None:
    from django.utils import timezone

    from serving.models import ServeEvent, ServeModel

    have = ServeModel.objects.count()
    now = timezone.now()
    new = [
        ServeModel(
            model_key=f"bench-{i}",
            model_id=f"bench-{i}",
            owner=owner,
            suffix=f"m{i}",
            spec_yaml="model_id: m\n",
            resolved_spec={"model_id": f"bench-{i}", "suffix": f"m{i}", "model_source": "/hf/m", "num_replicas": 1, "gpus_per_replica": 1, "engine_kwargs": {}},
            state=["QUEUED", "DEPLOYING", "RUNNING", "FAILED"][i % 4],
            created_at=now,
        )
        for i in range(have, target)
    ]
    created = ServeModel.objects.bulk_create(new, batch_size=500)
    ServeEvent.objects.bulk_create(
        [ServeEvent(model=m, model_key=m.model_key, public_id=m.model_id, owner_name=owner.username, kind="SERVE_STATUS", message=f"event {k}") for m in created for k in range(3)],
        batch_size=1000,
    )


def measure(client, url: str, repeats: int) -> tuple[int, float, float]:
    from django.db import connection

    executed = []

    def count(execute, sql, params, many, context):
        executed.append(sql)
        return execute(sql, params, many, context)

    # An execute wrapper sees every query, whatever DEBUG says and whatever the request signals reset.
    with connection.execute_wrapper(count):
        assert client.get(url).status_code == 200
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    timings.sort()
    return len(executed), statistics.median(timings), timings[int(len(timings) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    setup_django(os.environ.get("DATABASE_URL"))

    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    owner = get_user_model().objects.create_user("bench", password="x")
    client = Client()
    client.force_login(owner)
    urls = {"API  /api/v2/serve/models": "/api/v2/serve/models", "page /serving/ (50 a page)": "/serving/"}
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"database: {connection.vendor}; {args.repeats} requests per figure; ratios are against {sizes[0]} models\n")
    print(f"{'endpoint':<28} {'models':>7} {'queries':>8} {'p50 ms':>8} {'p95 ms':>8} {'p50 ratio':>10}")
    baseline: dict[str, float] = {}
    for size in sizes:
        grow_to(owner, size)
        for label, url in urls.items():
            count, p50, p95 = measure(client, url, args.repeats)
            baseline.setdefault(label, p50)
            print(f"{label:<28} {size:>7} {count:>8} {p50:>8.1f} {p95:>8.1f} {p50 / baseline[label]:>9.2f}x")


if __name__ == "__main__":
    main()
