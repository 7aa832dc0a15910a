"""What get_client() hands out: one object with both interfaces, Serve control and node tasks."""
from __future__ import annotations

from serving.cluster.nodes import NodeTasks
from serving.cluster.ray_nodes import RayNodeTasks
from serving.cluster.ray_serve import RayServeControl
from serving.cluster.serve import ServeControl


class ServeClient(ServeControl, NodeTasks):
    """A cluster Gantry can both control Serve on and run node tasks on."""


class RayServeClient(RayServeControl, RayNodeTasks, ServeClient):
    """The production client: Ray Serve on a Ray cluster (settings.GANTRY_SERVE_CLIENT)."""
