"""The gantry-router Serve application: one stable OpenAI front door for every model Gantry serves.

This module runs inside Ray, in the router's replica; only serving/cluster/ray_serve.py imports it,
to deploy it. It must not import Django or the rest of Gantry: ray_serve.py ships it to the cluster by
value, so the Ray nodes need nothing of Gantry installed.

Why a router of its own (shared/DESIGN.md, "Data plane"): each model is its own Serve application
(a bare `LLMServer` deployment, no per-model OpenAI front end), so deploying, scaling or deleting one
restarts no replica of another. This application owns `/v1` and looks the request's `model` up at
request time — the model id *is* the application name — so its code and config never change when
models come and go, and it never restarts.

It calls `LLMServer.chat` / `.completions` through a deployment handle with vLLM's request objects,
as Ray's own OpenAiIngress does (ray/llm/_internal/serve/core/ingress/ingress.py). Those types live
under `ray.llm._internal`: Ray is pinned exactly, and tests/integration/test_ray_serve.py drives this
router end to end on every upgrade.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

# serving.cluster.serve.ROUTER_APP names the application; this is the name of its one deployment.
ROUTER_DEPLOYMENT = "GantryRouter"
# Serve names a model's deployment "LLMServer:<model id>" (ray.llm's build_llm_deployment).
LLM_DEPLOYMENT_PREFIX = "LLMServer:"
# How long a view of Serve's applications answers /v1/models and lookups. A model deployed a moment
# ago is found anyway: a miss always reads Serve's status again.
STATUS_TTL_S = 1.0
# A running replica answers in all of these. UPDATING too: Serve reconfiguring a replica in place (a
# new autoscaling target or bounds) or rolling one version over to the next keeps the running ones
# serving, and refusing calls then turned a change that restarts nothing into a burst of 503s.
SERVING_DEPLOYMENT_STATES = {"HEALTHY", "UPSCALING", "DOWNSCALING", "UPDATING"}

# Serve routes the "ray.serve" logger into the replica's log file under the Ray session's logs/.
log = logging.getLogger("ray.serve")

api = FastAPI(title="Gantry router", docs_url=None, redoc_url=None)


def error_body(message: str, *, error_type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def openai_error(status: int, message: str, *, error_type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> JSONResponse:
    """OpenAI's error body, so the official clients raise their usual exceptions."""
    return JSONResponse(error_body(message, error_type=error_type, param=param, code=code), status_code=status)


def model_not_found(model: str) -> JSONResponse:
    return openai_error(
        404,
        f"The model {model!r} does not exist or is not running. GET /v1/models lists the models served here.",
        param="model",
        code="model_not_found",
    )


class ModelView:
    """One model as Serve reports it at a moment: its LLMServer deployment and whether it serves."""

    def __init__(self, name: str, deployment: str, deployment_status: str, running: int, deployed_at: float):
        self.name = name
        self.deployment = deployment
        self.deployment_status = deployment_status
        self.running = running
        self.deployed_at = deployed_at

    @property
    def serving(self) -> bool:
        return self.running > 0 and self.deployment_status in SERVING_DEPLOYMENT_STATES

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": int(self.deployed_at), "owned_by": "gantry"}


def read_models(own_app: str) -> dict[str, ModelView]:
    """Every application Gantry deployed as a model: any other application with an LLMServer."""
    models: dict[str, ModelView] = {}
    for name, app in serve.status().applications.items():
        if name == own_app or str(getattr(app.status, "value", app.status)) == "DELETING":
            continue
        for deployment_name, deployment in app.deployments.items():
            if deployment_name.startswith(LLM_DEPLOYMENT_PREFIX):
                running = sum(n for state, n in deployment.replica_states.items() if str(getattr(state, "value", state)) == "RUNNING")
                status = str(getattr(deployment.status, "value", deployment.status))
                models[name] = ModelView(name, deployment_name, status, running, app.last_deployed_time_s)
    return models


class GantryRouter:
    """Serve wraps this in GantryRouterDeployment below; FastAPI routes are bound by serve.ingress."""

    def __init__(self) -> None:
        # Imported here, once per replica: the first request should not pay vLLM's import (~9 s).
        from ray.llm._internal.serve.core.configs import openai_api_models as protocol
        from ray.llm._internal.serve.core.protocol import RawRequestInfo

        self._protocol = protocol
        self._raw_request_info = RawRequestInfo
        self._own_app = serve.get_replica_context().app_name
        # A configured handle per model, reused: each .options() handle opens its own long poll to
        # the controller (Ray's ingress caches them for the same reason).
        self._handles: dict[str, Any] = {}
        self._models: dict[str, ModelView] = {}
        self._models_read_at = 0.0
        self._status_lock = asyncio.Lock()

    async def _read_models(self, *, fresh: bool = False) -> dict[str, ModelView]:
        async with self._status_lock:
            if fresh or time.monotonic() - self._models_read_at > STATUS_TTL_S:
                # serve.status() blocks on the controller; keep the event loop (and streams) moving.
                self._models = await asyncio.to_thread(read_models, self._own_app)
                self._models_read_at = time.monotonic()
            return self._models

    async def _lookup(self, model: str) -> ModelView | None:
        models = await self._read_models()
        if model not in models:
            models = await self._read_models(fresh=True)
        if model not in models:
            self._handles.pop(model, None)  # deleted: a later app of that name gets a fresh handle
        return models.get(model)

    def _handle(self, view: ModelView) -> Any:
        handle = self._handles.get(view.name)
        if handle is None:
            # The name came from Serve's status a moment ago: no need for another controller round trip.
            handle = serve.get_deployment_handle(view.deployment, app_name=view.name, _check_exists=False).options(stream=True)
            self._handles[view.name] = handle
        return handle

    def _forget(self, model: str) -> None:
        self._handles.pop(model, None)
        self._models_read_at = 0.0  # the next lookup reads Serve's status again

    @api.get("/v1/models")
    async def list_models(self) -> dict:
        models = await self._read_models()
        return {"object": "list", "data": [m.card() for m in sorted(models.values(), key=lambda m: m.name) if m.serving]}

    @api.get("/v1/models/{model:path}")
    async def retrieve_model(self, model: str) -> Response:
        view = await self._lookup(model)
        if view is None or not view.serving:
            return model_not_found(model)
        return JSONResponse(view.card())

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._forward(request, self._protocol.ChatCompletionRequest, "chat")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._forward(request, self._protocol.CompletionRequest, "completions")

    async def _forward(self, request: Request, request_type: type, method: str) -> Response:
        from pydantic import ValidationError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        try:
            payload = await request.json()
        except ValueError:
            return openai_error(400, "The request body is not valid JSON.")
        if not isinstance(payload, dict):
            return openai_error(400, "The request body must be a JSON object.")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            return openai_error(400, "Say which model to use: the request needs a \"model\" (GET /v1/models lists them).", param="model")
        view = await self._lookup(model)
        if view is None:
            return model_not_found(model)
        if not view.serving:
            return openai_error(
                503,
                f"The model {model!r} is not serving yet (Serve reports {view.deployment_status} with "
                f"{view.running} replica(s) running); try again shortly.",
                error_type="server_error",
                param="model",
                code="model_not_ready",
            )
        try:
            body = request_type.model_validate(payload)
        except ValidationError as exc:
            return openai_error(400, f"Invalid request: {exc}")
        if method == "chat":
            body = _materialize_messages(body)

        for attempt in (1, 2):
            generator = getattr(self._handle(view), method).remote(body, self._raw_request_info.from_starlette_request(request))
            try:
                # The first chunk decides the status: an engine error or a vanished model must become
                # a proper HTTP error, which is impossible once a 200 event stream has started.
                first = await generator.__anext__()
                break
            except StopAsyncIteration:
                return openai_error(502, f"The model {model!r} returned no response.", error_type="server_error")
            except DeploymentUnavailableError:
                # The application was deleted after the last status read (a cached handle itself
                # keeps working when an application of that name is deployed again — measured).
                # Ask Serve again; retry once with a fresh handle if a new one serves by now.
                log.info("the handle to %s was stale (its application was deleted); asking Serve again", model)
                self._forget(model)
                view = await self._lookup(model)
                if attempt == 2 or view is None or not view.serving:
                    return model_not_found(model)
            except BackPressureError:
                return openai_error(503, f"The model {model!r} has too many requests queued; retry shortly.", error_type="server_error", code="overloaded")
            except Exception as exc:  # noqa: BLE001 — a replica that died mid-call, an engine crash: say so in OpenAI's shape
                return openai_error(500, f"The model {model!r} failed to answer: {type(exc).__name__}: {exc}", error_type="server_error")
        head = first[0] if isinstance(first, list) and first else first
        if isinstance(head, self._protocol.ErrorResponse):
            error = head.error
            status = int(error.code) if isinstance(error.code, int) and 400 <= error.code < 600 else 500
            return openai_error(status, error.message, error_type=error.type or "server_error", param=getattr(error, "param", None))
        if not getattr(body, "stream", False):
            return JSONResponse(first.model_dump(mode="json") if hasattr(first, "model_dump") else first)
        return StreamingResponse(_server_sent_events(first, generator), media_type="text/event-stream")


GantryRouterDeployment = serve.deployment(
    name=ROUTER_DEPLOYMENT,
    num_replicas=1,
    # A proxy that holds each stream open: Serve's default of 5 ongoing requests would queue the
    # sixth client behind slow generations of other models.
    max_ongoing_requests=10_000,
    # It only forwards; a logical CPU reserved here would be one a model replica could not get.
    ray_actor_options={"num_cpus": 0},
)(serve.ingress(api)(GantryRouter))


def _materialize_messages(body: Any) -> Any:
    """Pydantic keeps `Iterable` message content as a lazy ValidatorIterator, which cannot cross a
    Ray call (pickling fails); turn such content and tool calls into lists first (as Ray's ingress
    does, see pydantic#9467)."""
    for i, message in enumerate(body.messages):
        if not isinstance(message, dict):
            body.messages[i] = message = message.model_dump()
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            message["content"] = list(content)
        if message.get("role") == "assistant" and message.get("tool_calls") is not None:
            message["tool_calls"] = list(message["tool_calls"])
    return body


def _sse(chunk: Any) -> str:
    """One chunk from LLMServer as server-sent events. With stream batching it yields lists of
    pre-formatted "data: …\\n\\n" strings; otherwise response objects."""
    if isinstance(chunk, list):
        return "".join(_sse(item) for item in chunk)
    if isinstance(chunk, str):
        return chunk
    if hasattr(chunk, "model_dump_json"):
        return f"data: {chunk.model_dump_json()}\n\n"
    raise TypeError(f"unexpected chunk from LLMServer: {type(chunk).__name__}")


async def _server_sent_events(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[str]:
    done = False
    packet = _sse(first)
    while True:
        done = done or packet.rstrip().endswith("data: [DONE]")
        yield packet
        try:
            packet = _sse(await rest.__anext__())
        except StopAsyncIteration:
            break
        except Exception as exc:  # noqa: BLE001 — the 200 is sent: an error event is all a client can still get
            message = f"The stream broke off: {type(exc).__name__}: {exc}"
            yield f"data: {json.dumps(error_body(message, error_type='server_error'))}\n\n"
            break
    if not done:
        yield "data: [DONE]\n\n"


def build_router_app() -> Any:
    """The router as a Serve application; client.py runs it as ROUTER_APP at route prefix "/"."""
    return GantryRouterDeployment.bind()
