"""The cluster adapter: the one place that imports ray. Everything Gantry asks of Ray goes through it.

Two interfaces, each with its Ray implementation and a fake (tests/serving/fake_serve.py): Serve
control (serve.py, ray_serve.py, diagnosis.py) and node tasks (nodes.py, ray_nodes.py), over one
driver connection (connection.py). The functions that run on a node belong to the app that owns
them and are passed in: this package imports no Gantry app.

`get_client()` returns the configured implementation (settings.GANTRY_SERVE_CLIENT). ray itself is
imported lazily, inside the calls, so the web app, the API and the reconciler's tests import this
package without starting Ray.
"""
from __future__ import annotations

from django.conf import settings
from django.utils.module_loading import import_string

from serving.cluster.client import RayServeClient, ServeClient

__all__ = ["RayServeClient", "ServeClient", "get_client"]


def get_client() -> ServeClient:
    return import_string(settings.GANTRY_SERVE_CLIENT)()
