"""Why a model's application failed, read from what Ray kept of it: its dead replicas' log tails
(failure_cause) and the nodes it lost (lost_nodes), through Ray's state API.

Serve's own status says DEPLOY_FAILED "See root cause above" or UNHEALTHY; the engine's exception
and the node that died are only here.
"""
from __future__ import annotations

import logging
import re
from typing import Any

from django.conf import settings

from serving.cluster.connection import Driver, call_with_timeout
from serving.cluster.serve import plain

log = logging.getLogger(__name__)

# vLLM's engine processes log through the replica with a prefix of their own, e.g.
# "(EngineCore pid=13535) ERROR 12-01 09:13:14 [core.py:1510] ".
_ENGINE_LOG_PREFIX = re.compile(r"^\(\w+ pid=\d+\)\s*(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) [\d-]+ [\d:]+ \[[^\]]*\]\s?)?")
# The last line of a Python traceback: "RuntimeError: …", "torch.OutOfMemoryError: …", "ray.exceptions.RayTaskError(ValueError): …".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception)\w*(?:\([\w.]*\))?: \S")
# Wrappers that only point at another exception ("See root cause above", "See stack trace for root cause").
_POINTS_ELSEWHERE = re.compile(r"root cause|see (?:the )?stack trace|see above", re.IGNORECASE)


class RayDiagnosis(Driver):
    """ServeControl's failure_cause and lost_nodes on a Ray cluster."""

    # Reading why a deploy failed: the whole budget, and how much of a replica's log is read (the
    # engine's traceback sits a few dozen lines above its end). Each state-API call has its own
    # bound, Driver.STATE_API_TIMEOUT_S.
    FAILURE_CAUSE_TIMEOUT_S = 15.0
    FAILURE_LOG_LINES = 1000
    FAILED_REPLICAS_READ = 3
    # A replica logs its start in its first few hundred lines, and observe_vram reads it as soon as
    # the model is RUNNING, before request logs pile up.
    ENGINE_LOG_LINES = 3000

    def failure_cause(self, model_key: str, limit: int = 2000) -> str:
        """The lines of a failed replica's log that say why `model_key` did not start.

        Serve's DEPLOY_FAILED message ends in "See root cause above": the engine's own exception (no
        weights, out of memory, an unsupported architecture) is only in the log of the replica
        that died. This reads the newest dead replicas' log tails through Ray's state API and keeps
        the exception lines that name a cause. Bounded by FAILURE_CAUSE_TIMEOUT_S; never raises
        ("" and a log line when it cannot tell: the failure is recorded either way).
        """
        try:
            self._connect()
            cause = call_with_timeout(self._failure_cause, model_key, timeout_s=self.FAILURE_CAUSE_TIMEOUT_S, what="failure_cause")
        except Exception as exc:  # noqa: BLE001 — see above
            log.warning("could not read why %s failed from its replicas' logs: %s: %s", model_key, type(exc).__name__, exc)
            return ""
        return cause if len(cause) <= limit else cause[: max(limit - 1, 0)] + "…"

    def _replica_actors(self, model_key: str, state: str) -> list:
        """The actors of `model_key`'s Serve replicas in `state` ("ALIVE", "DEAD")."""
        from ray import serve
        from ray.util.state import list_actors

        app = serve.status().applications.get(model_key)
        if app is None:
            return []
        # The state API finds "the" Ray instance by itself, and refuses when a machine runs several
        # (another team's head, a test's): always name ours — the dashboard for listing, the GCS
        # for logs (get_log takes only a bootstrap address). Serve 2.60 names a replica's actor class
        # ServeReplica:<app>:<deployment> (seen on a real cluster); filtering on the exact name keeps
        # the query small on a cluster with a long past.
        return [
            actor
            for deployment in app.deployments
            for actor in list_actors(
                address=settings.RAY_DASHBOARD_URL,
                filters=[("class_name", "=", f"ServeReplica:{model_key}:{deployment}"), ("state", "=", state)],
                detail=True, limit=10_000, timeout=self.STATE_API_TIMEOUT_S, raise_on_missing_output=False,
            )
        ]

    def _failure_cause(self, model_key: str) -> str:
        from ray.util.state import get_log, list_workers

        timeout, address = self.STATE_API_TIMEOUT_S, settings.RAY_DASHBOARD_URL
        dead = self._replica_actors(model_key, "DEAD")
        if not dead:
            return ""
        # Newest first: a model that failed before for another reason has older dead replicas too.
        # Actors carry no end time; the workers that ran them do.
        ended = {
            (worker.node_id, worker.pid): worker.end_time_ms or 0
            for worker in list_workers(
                address=address,
                filters=[("worker_type", "=", "WORKER"), ("is_alive", "=", "False")],
                detail=True, limit=10_000, timeout=timeout, raise_on_missing_output=False,
            )
        }
        dead.sort(key=lambda actor: ended.get((actor.node_id, actor.pid), 0), reverse=True)
        for actor in dead[: self.FAILED_REPLICAS_READ]:
            text = ""
            for suffix in ("out", "err"):  # vLLM's engine logs to stdout, Python's tracebacks go to stderr
                try:
                    text += "".join(get_log(address=settings.RAY_ADDRESS, actor_id=actor.actor_id, tail=self.FAILURE_LOG_LINES, suffix=suffix, timeout=timeout, filter_ansi_code=True))
                except Exception as exc:  # noqa: BLE001 — a log gone with its node: try the next replica
                    log.info("no %s log for replica %s of %s: %s", suffix, actor.actor_id, model_key, exc)
            cause = root_cause(text) or _death_cause(actor.death_cause)
            if cause:
                return cause
        return ""

    def engine_log(self, model_key: str) -> str:
        """The newest ENGINE_LOG_LINES lines of each RUNNING replica process of `model_key` (the Serve
        actor, where vLLM's engine core logs, and the tensor-parallel workers in its placement group,
        where rank 0 logs the weights it loaded): what vLLM said about its memory at start. Bounded by
        FAILURE_CAUSE_TIMEOUT_S; never raises ("" when it cannot tell)."""
        try:
            self._connect()
            return call_with_timeout(self._engine_log, model_key, timeout_s=self.FAILURE_CAUSE_TIMEOUT_S, what="engine_log")
        except Exception as exc:  # noqa: BLE001 — see above
            log.warning("could not read %s's engine log: %s: %s", model_key, type(exc).__name__, exc)
            return ""

    def _engine_log(self, model_key: str) -> str:
        from ray.util.state import get_log, list_actors

        timeout, address = self.STATE_API_TIMEOUT_S, settings.RAY_DASHBOARD_URL
        replicas = self._replica_actors(model_key, "ALIVE")
        groups = {actor.placement_group_id for actor in replicas if actor.placement_group_id}
        workers = [
            actor
            for group in sorted(groups)
            for actor in list_actors(
                address=address, filters=[("placement_group_id", "=", group), ("state", "=", "ALIVE")],
                detail=True, limit=10_000, timeout=timeout, raise_on_missing_output=False,
            )
            if actor.actor_id not in {r.actor_id for r in replicas}
        ]
        text = ""
        for actor in [*replicas[:1], *workers]:  # one replica tells: its siblings started the same way
            try:
                text += "".join(get_log(address=settings.RAY_ADDRESS, actor_id=actor.actor_id, tail=self.ENGINE_LOG_LINES, suffix="out", timeout=timeout, filter_ansi_code=True))
            except Exception as exc:  # noqa: BLE001 — a worker's log gone: the others may still say it
                log.info("no log for actor %s of %s: %s", actor.actor_id, model_key, exc)
        return text

    def lost_nodes(self, model_key: str, since: float = 0) -> list[dict]:
        """Dead nodes (Ray's state API) where the model's application had replicas, which Serve's
        UNHEALTHY message does not say. No count of replicas lost: Ray lists the ones Serve had
        stopped on that node earlier (a scale-down) as dead too. Bounded by
        FAILURE_CAUSE_TIMEOUT_S; never raises (the model's state is recorded either way)."""
        try:
            self._connect()
            return call_with_timeout(self._lost_nodes, model_key, since, timeout_s=self.FAILURE_CAUSE_TIMEOUT_S, what="lost_nodes")
        except Exception as exc:  # noqa: BLE001 — see above
            log.warning("could not read which nodes %s lost: %s: %s", model_key, type(exc).__name__, exc)
            return []

    def _lost_nodes(self, model_key: str, since: float) -> list[dict]:
        from ray import serve
        from ray.util.state import list_actors, list_nodes

        timeout, address = self.STATE_API_TIMEOUT_S, settings.RAY_DASHBOARD_URL
        app = serve.status().applications.get(model_key)
        if app is None:
            return []
        dead_nodes = {
            node.node_id: node
            for node in list_nodes(address=address, filters=[("state", "=", "DEAD")], detail=True, limit=10_000, timeout=timeout, raise_on_missing_output=False)
            if (node.end_time_ms or 0) / 1000 >= since
        }
        if not dead_nodes:
            return []
        hosted = {
            actor.node_id
            for deployment in app.deployments
            for actor in list_actors(
                address=address,
                filters=[("class_name", "=", f"ServeReplica:{model_key}:{deployment}"), ("state", "=", "DEAD")],
                limit=10_000, timeout=timeout, raise_on_missing_output=False,
            )
        }
        lost = [
            {
                "node_id": node_id,
                "node_name": node.node_name or "",
                "address": node.node_ip or "",
                "died_at": (node.end_time_ms or 0) / 1000,
                "reason": (node.state_message or "").strip(),
            }
            for node_id, node in dead_nodes.items()
            if node_id in hosted
        ]
        return sorted(lost, key=lambda node: node["died_at"], reverse=True)


def root_cause(log_text: str, lines: int = 3) -> str:
    """The exception lines of a log tail that name what failed, in the order they were raised
    (the root first), without the wrappers that only say "see root cause above"; at most `lines`."""
    causes: list[str] = []
    for raw in log_text.splitlines():
        line = _ENGINE_LOG_PREFIX.sub("", plain(raw)).strip()
        if _EXCEPTION_LINE.match(line) and not _POINTS_ELSEWHERE.search(line) and line not in causes:
            causes.append(line)
    return "\n".join(causes[-lines:])


def _death_cause(death_cause: Any) -> str:
    """Why Ray says the actor died, unless Serve killed it on purpose (which is how every failed
    replica ends): the OOM killer or a lost node leave no exception in the log, only this."""
    context = (death_cause or {}).get("actor_died_error_context") or {}
    if context.get("reason") == "RAY_KILL":
        return ""
    return str(context.get("error_message") or "")
