"""This process's one Ray driver: connecting to the cluster, noticing it is gone or was replaced,
letting it go, and bounding every call to it.

ray is imported inside the functions, so the web app and the tests import this module without
starting Ray.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings

from serving.cluster.address import ray_gcs_endpoint

log = logging.getLogger(__name__)

# How long the per-call probe of the GCS may take, and how long ray.shutdown() of a driver whose
# cluster died may take, before we stop waiting for it.
PROBE_TIMEOUT_S = 10.0
SHUTDOWN_TIMEOUT_S = 30.0


class ServeUnavailable(Exception):
    """The Ray cluster or Serve's controller cannot be reached; nothing was changed."""


def call_with_timeout(function, *args, timeout_s: float, what: str = "", **kwargs):
    """Run one call to Serve with a bound: Ray's calls (serve.status, serve.run, a controller that
    is restarting) can block forever, and a reconcile tick must end. Past the bound the call is left
    running in its thread (Ray offers no way to cancel it) and ServeUnavailable is raised."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 — re-raised in the caller's thread
            outcome["error"] = exc
        finally:
            from django.db import connections

            connections.close_all()  # this thread's own connections, if the call used any

    thread = threading.Thread(target=run, name=f"gantry-serve-{what or getattr(function, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ServeUnavailable(f"Serve did not answer {what or getattr(function, '__name__', 'a call')} within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class Driver:
    """What every Ray-backed client does first: connect this process to the cluster (a Ray driver),
    or raise ServeUnavailable."""

    # How long connecting may take before the cluster counts as unreachable: ray.init to a port that
    # answers but is no Ray GCS (Redis on 6379 here) retries for minutes instead of failing.
    CONNECT_TIMEOUT_S = 20.0
    # Each call of Ray's state API (listing actors, nodes, workers, reading a log).
    STATE_API_TIMEOUT_S = 5

    def _connect(self) -> None:
        _connect_driver(settings.RAY_ADDRESS, self.CONNECT_TIMEOUT_S)


# --- One Ray driver per process -------------------------------------------------------------------

_connect_lock = threading.Lock()
_connecting: threading.Thread | None = None
_connect_error: BaseException | None = None


def _connect_driver(address: str, timeout_s: float) -> None:
    """Make this process a Ray driver of the cluster at `address`, or raise ServeUnavailable.

    A closed port fails in milliseconds (TCP check first). ray.init itself can hang for minutes on an
    address that accepts TCP but is not a Ray GCS, so it runs in a thread that we stop waiting for:
    a later call finds it finished (connected) or still trying (unavailable, without a second init).
    """
    global _connecting, _connect_error
    import ray

    endpoint = ray_gcs_endpoint(address)
    try:
        _check_tcp(address, endpoint)
    except ServeUnavailable as exc:
        # The head is gone (crashed, restarting, moved). A driver left attached to it is useless:
        # once the head returns it is a new cluster that refuses this driver (WrongClusterID)
        # forever. Let it go now, so the first call after the head is back connects afresh.
        _forget_cluster(f"the GCS does not answer: {exc}")
        raise
    if ray.is_initialized():
        if _driver_is_attached():
            return
        _forget_cluster("the cluster this process was connected to is gone or was replaced")
    with _connect_lock:
        if ray.is_initialized():
            return
        if _connecting is None or not _connecting.is_alive():
            _connect_error = None

            def connect() -> None:
                global _connect_error
                try:
                    # log_to_driver=False: replica logs belong in Ray's log files, not in the web
                    # or worker log. The namespace only scopes Gantry's own named actors (none yet);
                    # Serve finds its controller in its own namespace either way.
                    ray.init(address=address, namespace="gantry", log_to_driver=False, configure_logging=False)
                except BaseException as exc:  # noqa: BLE001 — reported to the waiting caller
                    _connect_error = exc

            _connecting = threading.Thread(target=connect, name="gantry-ray-connect", daemon=True)
            _connecting.start()
        _connecting.join(timeout_s)
        if ray.is_initialized():
            return
        if _connecting.is_alive():
            raise ServeUnavailable(
                f"the Ray cluster at RAY_ADDRESS={address} did not accept a connection within {timeout_s:g} s "
                "(is that port a Ray head's GCS port? Redis on 6379 is a common mix-up)"
            )
        error, _connect_error = _connect_error, None
        raise ServeUnavailable(f"could not connect to the Ray cluster at RAY_ADDRESS={address}: {error}")


def _driver_is_attached() -> bool:
    """Whether this process's Ray driver still talks to the cluster that answers at its address.

    A head that crashed and came back on the same port is a new cluster (a new cluster id, an empty
    GCS): every call of the old driver then fails with WrongClusterID, and Serve's cached controller
    handle points at an actor that no longer exists. One cheap, bounded GCS read tells.
    """
    import ray

    try:
        gcs_client = ray._private.worker.global_worker.gcs_client
        gcs_client.internal_kv_exists(b"gantry-driver-probe", namespace=None, timeout=PROBE_TIMEOUT_S)
        return True
    except Exception as exc:  # noqa: BLE001 — any failure means: reconnect
        log.warning("the Ray driver lost its cluster (%s: %s); reconnecting", type(exc).__name__, exc)
        return False


def _forget_cluster(why: str) -> None:
    """Disconnect this process's Ray driver (if any) so the next call runs ray.init afresh.

    ray.shutdown() runs in a thread we wait for at most SHUTDOWN_TIMEOUT_S: a reconcile tick must
    never hang on a dead cluster. Serve's cached controller client is dropped too: it survives
    ray.shutdown(), and a new cluster's first driver gets the same job id, so Serve would keep
    using the dead controller's handle.
    """
    import ray

    with _connect_lock:
        if _connecting is not None and _connecting.is_alive():
            return  # an init in progress: its outcome decides; nothing of ours to shut down yet
        if not ray.is_initialized():
            return
        log.warning("disconnecting the Ray driver: %s", why)
        done = threading.Thread(target=ray.shutdown, name="gantry-ray-shutdown", daemon=True)
        done.start()
        done.join(SHUTDOWN_TIMEOUT_S)
        if done.is_alive():
            log.error("ray.shutdown() did not return within %g s", SHUTDOWN_TIMEOUT_S)
        with contextlib.suppress(Exception):
            from ray.serve import context as serve_context

            serve_context._set_global_client(None)


def _check_tcp(address: str, endpoint: tuple[str, int] | None) -> None:
    if endpoint is None:
        return  # "auto" and friends: let ray.init find the cluster, bounded by the connect timeout
    host, port = endpoint
    try:
        with socket.create_connection((host, port), timeout=max(settings.GANTRY_DEPENDENCY_TIMEOUT, 1.0)):
            pass
    except OSError as exc:
        raise ServeUnavailable(
            f"the Ray cluster at RAY_ADDRESS={address} does not accept connections ({exc}). Start the Ray "
            "head (`make run` starts one) or point RAY_ADDRESS at a running cluster."
        ) from None


@contextmanager
def _cluster_errors() -> Iterator[None]:
    """Ray's "cannot reach the cluster or Serve's controller" errors become ServeUnavailable."""
    import ray.exceptions

    unreachable = (
        ConnectionError,
        TimeoutError,  # also ray.exceptions.GetTimeoutError
        ray.exceptions.RaySystemError,
        ray.exceptions.RpcError,
        ray.exceptions.RayActorError,  # the Serve controller died or is restarting
    )
    try:
        yield
    except ServeUnavailable:
        raise
    except ray.exceptions.AuthenticationError as exc:
        # "WrongClusterID: Perhaps the client is accessing GCS after it has restarted": the head
        # was replaced under this driver. Drop the driver; the next call connects to the new one.
        _forget_cluster(f"{type(exc).__name__}: {exc}")
        raise ServeUnavailable(f"the Ray cluster was replaced under this process ({exc}); reconnecting on the next call") from exc
    except unreachable as exc:
        raise ServeUnavailable(f"{type(exc).__name__}: {exc}") from exc
