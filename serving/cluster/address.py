"""Where the Ray cluster's GCS answers, read from RAY_ADDRESS: the driver checks that port before
ray.init, and /readyz checks it for its banner."""
from __future__ import annotations

from urllib.parse import urlsplit


def ray_gcs_endpoint(address: str) -> tuple[str, int] | None:
    """host and port of the Ray GCS named by RAY_ADDRESS (host:port or ray://host:port)."""
    if not address or address in {"auto", "local"}:
        return None
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    if not parts.hostname or not parts.port:
        return None
    return parts.hostname, parts.port
