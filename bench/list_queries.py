"""How the model list (API and page) scales with the number of models.

Creates 10, 100 and 1,000 models (3 events each) in a scratch database, then times
GET /api/v2/serve/models (its first page, the largest page, and a page reached by cursor) and
GET /serving/, and counts their SQL queries and response bytes. Prints each size's figures and
its ratio to the smallest size, measured in the same run.

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
    from tests.serving.factories import bulk_models

    have = ServeModel.objects.count()
    created = bulk_models(owner, target - have, start=have, at=timezone.now(), states=("QUEUED", "DEPLOYING", "RUNNING", "FAILED"))
    ServeEvent.objects.bulk_create(
        [ServeEvent(model=m, model_key=m.model_key, public_id=m.model_id, owner_name=owner.username, kind="SERVE_STATUS", message=f"event {k}") for m in created for k in range(3)],
        batch_size=1000,
    )


def measure(client, url: str, repeats: int) -> tuple[int, int, float, float]:
    from django.db import connection

    executed = []

    def count(execute, sql, params, many, context):
        executed.append(sql)
        return execute(sql, params, many, context)

    # An execute wrapper sees every query, whatever DEBUG says and whatever the request signals reset.
    with connection.execute_wrapper(count):
        first = client.get(url)
        assert first.status_code == 200
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    timings.sort()
    return len(executed), len(first.content), statistics.median(timings), timings[int(len(timings) * 0.95) - 1]


def second_page(client) -> str:
    """The API's page after the first, by the cursor its `next` link carries (the first, when one page holds all)."""
    return client.get("/api/v2/serve/models").json()["next"] or "/api/v2/serve/models"


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
    urls = {
        "API  first page (100)": lambda: "/api/v2/serve/models",
        "API  ?limit=500 (largest)": lambda: "/api/v2/serve/models?limit=500",
        "API  page 2 by cursor": lambda: second_page(client),
        "page /serving/ (50 a page)": lambda: "/serving/",
    }
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"database: {connection.vendor}; {args.repeats} requests per figure; ratios are against {sizes[0]} models\n")
    print(f"{'endpoint':<28} {'models':>7} {'queries':>8} {'bytes':>9} {'p50 ms':>8} {'p95 ms':>8} {'p50 ratio':>10}")
    baseline: dict[str, float] = {}
    for size in sizes:
        grow_to(owner, size)
        for label, url in urls.items():
            count, size_bytes, p50, p95 = measure(client, url(), args.repeats)
            baseline.setdefault(label, p50)
            print(f"{label:<28} {size:>7} {count:>8} {size_bytes:>9} {p50:>8.1f} {p95:>8.1f} {p50 / baseline[label]:>9.2f}x")


if __name__ == "__main__":
    main()
