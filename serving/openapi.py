"""The OpenAPI 3.1 document of /api/v2 (served at /api/v2/openapi.json)."""
from __future__ import annotations

from serving.spec.validation import ENGINE_KWARGS_ALLOWED


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


_MODEL_KEY = {"name": "model_key", "in": "path", "required": True, "schema": {"type": "string"}}
_AUTH_ERRORS = {"401": _error("Not logged in and no valid bearer token.")}
# Every query parameter declared here is validated by serving/api.py: a value outside its schema is
# this 400, with `field` naming the parameter.
_BAD_PARAMETER = {"400": _error("A query parameter is outside its schema (`code` bad_parameter, `field` names it).")}


def document() -> dict:
    model_props = {
        "model_key": {"type": "string", "description": "Stable key used in URLs; also the Serve application name."},
        "model_id": {"type": "string", "description": "Public id for OpenAI calls: <user>-<YYYYMMDDHHMM UTC>-<suffix>."},
        "suffix": {"type": "string"},
        "state": {"$ref": "#/components/schemas/State"},
        "generation": {"type": "integer", "minimum": 1},
        "num_replicas": {"type": "integer", "minimum": 0},
        "gpus_per_replica": {"type": "integer", "minimum": 0},
        "owner": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "error_summary": {"type": "string"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Gantry API",
            "version": "2",
            "description": "Deploy, scale and delete LLMs on Ray Serve. Authenticate with `Authorization: Bearer <token>` "
            "(create tokens under Settings → API tokens). The models themselves answer OpenAI calls at `openai_base_url`, "
            "which has no authentication of its own.",
        },
        "servers": [{"url": "/api/v2"}],
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/me": {"get": {"summary": "Who this token or session is", "responses": {"200": {"description": "The caller."}, **_AUTH_ERRORS}}},
            "/serve/models": {
                "post": {
                    "summary": "Create a model, or update yours with the same suffix (generation + 1)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/yaml": {"schema": {"$ref": "#/components/schemas/Spec"}}},
                    },
                    "responses": {
                        "202": {"description": "Accepted; the reconciler applies it.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                        "400": _error("The body is not YAML, or not a mapping."),
                        "403": _error("model_source resolves outside the shared HF root and your own root."),
                        "409": _error("The model with this suffix is being deleted."),
                        "422": _error("The spec is invalid; `field` names the culprit."),
                        **_AUTH_ERRORS,
                    },
                },
                "get": {
                    "summary": "Your models (admins: everyone's)",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": {"$ref": "#/components/schemas/State"}, "description": "Only models in this state (any letter case). Without it, DELETED models are left out."},
                        {"name": "owner", "in": "query", "schema": {"type": "string", "pattern": r"^[\w.@+-]{1,150}$"}, "description": "A username. Admins only; ignored for everyone else."},
                        {"name": "include_deleted", "in": "query", "schema": {"type": "boolean"}, "description": "true/false or 1/0."},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}, "description": "Models per page."},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}, "description": "Opaque: where the page starts. Take it from `next`; pages stay right while models are added."},
                    ],
                    "responses": {
                        "200": {
                            "description": "One page of models, newest first, and the OpenAI base URL they answer at.",
                            "content": {"application/json": {"schema": {"type": "object", "properties": {
                                "items": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
                                "next": {"type": ["string", "null"], "description": "The next page's URL (same filters, with `cursor`), or null on the last page."},
                                "openai_base_url": {"type": "string"},
                            }}}},
                        },
                        **_BAD_PARAMETER,
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/serve/models/{model_key}": {
                "parameters": [_MODEL_KEY],
                "get": {
                    "summary": "One model with its resolved spec, events (newest first, paged), revisions and live Serve status",
                    "parameters": [{"name": "events_before", "in": "query", "schema": {"type": "integer", "minimum": 1}, "description": "Event id from `events.next`."}],
                    "responses": {"200": {"description": "The model.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ModelDetail"}}}}, **_BAD_PARAMETER, "404": _error("Unknown, or not yours."), **_AUTH_ERRORS},
                },
                "patch": {
                    "summary": "Scale: change num_replicas (0 keeps the record and frees the GPUs), or the autoscaling bounds (applied without restarting replicas; a partial mapping keeps the rest)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                        {"type": "object", "required": ["num_replicas"], "additionalProperties": False, "properties": {"num_replicas": {"type": "integer", "minimum": 0, "maximum": 64}}},
                        {"type": "object", "required": ["autoscaling"], "additionalProperties": False, "properties": {"autoscaling": {"$ref": "#/components/schemas/Autoscaling"}}},
                    ]}}}},
                    "responses": {"202": {"description": "Accepted."}, "400": _error("Not JSON."), "404": _error("Unknown, or not yours."), "409": _error("The model is DELETING or DELETED."), "422": _error("Invalid value or field."), **_AUTH_ERRORS},
                },
                "delete": {
                    "summary": "Delete: the Serve application is removed; events and revisions stay",
                    "responses": {"202": {"description": "Accepted."}, "404": _error("Unknown, or not yours."), "409": _error("Already DELETED."), **_AUTH_ERRORS},
                },
            },
            "/serve/models/{model_key}/rollback": {
                "parameters": [_MODEL_KEY],
                "post": {
                    "summary": "Put the model back to an earlier revision's spec; applied as a new revision (audited)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["revision", "confirm"], "properties": {"revision": {"type": "integer"}, "confirm": {"const": True}}}}}},
                    "responses": {"202": {"description": "Accepted."}, "404": _error("Unknown model or revision."), "409": _error("The model is DELETING or DELETED."), "422": _error("Missing revision or confirm."), **_AUTH_ERRORS},
                },
            },
            "/preflight": {
                "post": {
                    "summary": "Run the preflight guards on a spec now (version skew, CUDA probe, prompt lint, secrets as set now); nothing is deployed",
                    "requestBody": {"required": True, "content": {"application/yaml": {"schema": {"$ref": "#/components/schemas/Spec"}}}},
                    "responses": {
                        "200": {"description": "The report: `status` ok/warn/fail, `passed`, `guards` with declared/effective evidence and a remedy, `url`."},
                        "400": _error("The body is not YAML, or not a mapping."),
                        "403": _error("model_source resolves outside the shared HF root and your own root."),
                        "422": _error("The spec (or its preflight block) is invalid; `field` names the culprit."),
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/preflight/vram-fit": {
                "post": {
                    "summary": "Will this spec's model fit: by vLLM's own memory rule, on the cluster's GPUs (the newest NVML reading) and on each GPU asked about; nothing is deployed",
                    "parameters": [{"name": "gpu", "in": "query", "schema": {"type": "string", "maxLength": 100}, "description": "Repeatable, at most 16: a known GPU (H100-80GB, L4, …) or NAME:TOTAL_GiB[:FREE_GiB]."}],
                    "requestBody": {"required": True, "content": {"application/yaml": {"schema": {"$ref": "#/components/schemas/Spec"}}}},
                    "responses": {
                        "200": {"description": "`cluster` (null on the CPU engine) and `what_if`, one row per GPU asked about: every term in bytes, kv_tokens, fits, starts, largest_max_model_len, smallest_gpus_per_replica, verdict, advice."},
                        "400": _error("The body is not YAML, or a `gpu` is not one the check knows nor NAME:TOTAL_GiB[:FREE_GiB]."),
                        "403": _error("model_source resolves outside the shared HF root and your own root."),
                        "422": _error("The spec is invalid, or its folder cannot be estimated; `field` names the culprit."),
                        **_AUTH_ERRORS,
                    },
                },
            },
            "/preflight/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "get": {"summary": "One preflight report", "responses": {"200": {"description": "The report."}, "404": _error("Unknown, or not yours."), **_AUTH_ERRORS}},
            },
            "/preflight/{id}/force": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "post": {
                    "summary": "Deploy past a version skew, with a reason kept beside your name (audited); other failures cannot be forced",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string", "minLength": 10, "maxLength": 2000}}}}}},
                    "responses": {"200": {"description": "The forced report; the model deploys."}, "403": _error("Not the owner or an admin."), "404": _error("Unknown, or not yours."), "409": _error("Nothing to force, or not a version skew."), "422": _error("The reason is missing or too short."), **_AUTH_ERRORS},
                },
            },
            "/secrets": {
                "get": {"summary": "Your secrets' names and when they were set (never a value)", "responses": {"200": {"description": "Names."}, **_AUTH_ERRORS}},
            },
            "/secrets/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]{0,127}$"}}],
                "put": {
                    "summary": "Set or replace a secret (write-only: no call returns it again)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["value"], "additionalProperties": False, "properties": {"value": {"type": "string"}}}}}},
                    "responses": {"201": {"description": "Created."}, "200": {"description": "Replaced."}, "400": _error("Not JSON."), "422": _error("Bad name or value."), **_AUTH_ERRORS},
                },
                "delete": {"summary": "Delete a secret (audited)", "responses": {"204": {"description": "Deleted."}, "404": _error("Unknown, or not yours."), "422": _error("Bad name."), **_AUTH_ERRORS}},
            },
            "/gates/evalsets": {
                "get": {"summary": "Eval sets: name, DVC md5 (and the DVC 2 one), rows, buckets with their n", "responses": {"200": {"description": "Eval sets."}, **_AUTH_ERRORS}},
                "post": {
                    "summary": "Upload an eval set (JSONL body, ?name=…); stored by content, never changed",
                    "parameters": [{"name": "name", "in": "query", "required": True, "schema": {"type": "string"}}],
                    "requestBody": {"required": True, "content": {"application/x-ndjson": {"schema": {"type": "string"}}}},
                    "responses": {"201": {"description": "Stored."}, "200": {"description": "The same name and content were stored already."}, "400": _error("Not UTF-8 JSON lines."), "422": _error("A row is invalid; the message names its line."), **_AUTH_ERRORS},
                },
            },
            "/gates/baselines": {
                "get": {"summary": "Baselines by name: current, proposed, history", "responses": {"200": {"description": "Baselines."}, **_AUTH_ERRORS}},
                "post": {
                    "summary": "Propose a baseline: eval_baseline.json plus `name` and `justification_url`; a reviewer who is not you approves it",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["name", "justification_url", "eval_set_dvc_hash", "baseline_sha", "tolerance_pp", "buckets"]}}}},
                    "responses": {"201": {"description": "Proposed."}, "400": _error("Not JSON."), "422": _error("Invalid field; `field` names it."), **_AUTH_ERRORS},
                },
            },
            "/gates/baselines/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "get": {"summary": "One baseline with its per-bucket diff against the current one and whether you may decide", "responses": {"200": {"description": "The baseline."}, "404": _error("Unknown."), **_AUTH_ERRORS}},
            },
            "/gates/baselines/{id}/approve": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "post": {"summary": "Reviewers (never the author): make it current (audited)", "responses": {"200": {"description": "Approved."}, "403": _error("The author, or no reviewer permission."), "404": _error("Unknown."), "409": _error("Not a proposal, or proposed against an older current baseline."), **_AUTH_ERRORS}},
            },
            "/gates/baselines/{id}/reject": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "post": {"summary": "Reviewers (never the author): reject it with a note (audited)", "responses": {"200": {"description": "Rejected."}, "403": _error("The author, or no reviewer permission."), "404": _error("Unknown."), "409": _error("Not a proposal."), "422": _error("A note is required."), **_AUTH_ERRORS}},
            },
            "/gates/baselines/{id}/export": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "get": {"summary": "The baseline as eval_baseline.json (the seed's keys plus previous_baseline_sha)", "responses": {"200": {"description": "The file."}, "404": _error("Unknown."), **_AUTH_ERRORS}},
            },
            "/gates/runs": {
                "get": {
                    "summary": "Gate runs, newest first (?state=, ?gate=), each with its steps",
                    "parameters": [{"name": "state", "in": "query", "schema": {"type": "string", "enum": ["queued", "running", "awaiting_signoff", "promoted", "failed"]}},
                                   {"name": "gate", "in": "query", "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"}}],
                    "responses": {"200": {"description": "Gate runs."}, "400": _error("Unknown state."), **_AUTH_ERRORS},
                },
                "post": {
                    "summary": "Start a gate run: fetch → preflight → deploy → evaluate → cleanup → compare → promote (last)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["gate", "mlflow_run_id", "semver"], "additionalProperties": False,
                        "properties": {"gate": {"type": "string"}, "mlflow_run_id": {"type": "string"}, "semver": {"type": "string"},
                                       "registered_model": {"type": "string"}, "artifact_path": {"type": "string"}}}}}},
                    "responses": {"202": {"description": "Queued."}, "400": _error("Not JSON."), "422": _error("Invalid field; `field` names it."), **_AUTH_ERRORS},
                },
            },
            "/gates/runs/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "get": {"summary": "One gate run: steps, comparison, verdict, promotion, and whether you may sign it off", "responses": {"200": {"description": "The run."}, "404": _error("Unknown."), **_AUTH_ERRORS}},
            },
            "/gates/runs/{id}/signoff": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "post": {
                    "summary": "Reviewers (never the requester): promote an INCONCLUSIVE run; bound to the result_sha256 you reviewed (audited)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object", "required": ["result_sha256", "note"], "properties": {"result_sha256": {"type": "string"}, "note": {"type": "string"}}}}}},
                    "responses": {"202": {"description": "Signed off; promotion queued."}, "404": _error("Unknown."), "403": _error("The requester, or no reviewer permission, or not INCONCLUSIVE."), "409": _error("The result changed since you reviewed it."), "422": _error("A note is required."), **_AUTH_ERRORS},
                },
            },
            "/gates/runs/{id}/reject": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
                "post": {"summary": "Reviewers (never the requester): end an INCONCLUSIVE run unpromoted (audited)", "responses": {"200": {"description": "Rejected."}, "403": _error("The requester, or no reviewer permission."), "404": _error("Unknown."), **_AUTH_ERRORS}},
            },
            "/serve/status": {
                "get": {
                    "summary": "Admins: Serve applications, cluster GPUs, models pending resources, applications Gantry does not know",
                    "responses": {"200": {"description": "Cluster status."}, "403": _error("Not an admin."), **_AUTH_ERRORS},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
            "schemas": {
                "State": {"type": "string", "enum": ["QUEUED", "DEPLOYING", "RUNNING", "FAILED", "DELETING", "DELETED"]},
                "Spec": {
                    "type": "object",
                    "required": ["model_id", "model_source"],
                    "additionalProperties": False,
                    "properties": {
                        "model_id": {"type": "string", "pattern": "^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$", "description": "The suffix of the public id."},
                        "model_source": {"type": "string", "description": "$HOME/…, $HOME/common/hf/… or an absolute path under those roots."},
                        "num_replicas": {"type": "integer", "minimum": 0, "maximum": 64, "default": 1},
                        "autoscaling": {"$ref": "#/components/schemas/Autoscaling"},
                        "gpus_per_replica": {"type": "integer", "minimum": 0, "maximum": 8, "description": "Default 1 on the GPU engine, 0 on the CPU engine."},
                        "engine_kwargs": {"type": "object", "additionalProperties": False, "properties": {k: {} for k in sorted(ENGINE_KWARGS_ALLOWED)}},
                        "preflight": {"type": "object", "additionalProperties": False, "properties": {
                            "ignore_versions": {"type": "array", "items": {"type": "string"}, "description": "Semver levels (patch, minor, major) and/or model-card keys."},
                            "secrets": {"type": "array", "items": {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]{0,127}$"}},
                            "secret_timeout": {"type": ["number", "string"], "description": "Seconds, 0 to 3600 (\"90s\" too)."},
                            "prompt_files": {"type": "array", "items": {"type": "string"}},
                            "cuda_probe": {"type": "object", "properties": {"mode": {"enum": ["fallback", "warn", "fail"]}}},
                        }},
                    },
                },
                "Autoscaling": {
                    "type": "object",
                    "additionalProperties": False,
                    "description": "Serve's autoscaler scales on ongoing requests per replica (queue depth); the delays are its stabilization window. Exclusive with num_replicas.",
                    "properties": {
                        "min_replicas": {"type": "integer", "minimum": 1, "maximum": 64, "default": 1},
                        "max_replicas": {"type": "integer", "minimum": 1, "maximum": 64, "description": "Required in a spec."},
                        "target_ongoing_requests": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000, "default": 2},
                        "upscale_delay_s": {"type": "number", "minimum": 0, "maximum": 3600, "default": 30},
                        "downscale_delay_s": {"type": "number", "minimum": 0, "maximum": 86400, "default": 600},
                    },
                },
                "Accepted": {"type": "object", "properties": {"model_key": {"type": "string"}, "model_id": {"type": "string"}, "state": {"$ref": "#/components/schemas/State"}, "generation": {"type": "integer"}, "created": {"type": "boolean"}}},
                "Model": {"type": "object", "properties": model_props},
                "ModelDetail": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Model"},
                        {"type": "object", "properties": {
                            "openai_base_url": {"type": "string"},
                            "resolved_spec_yaml": {"type": "string"},
                            "events": {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object"}}, "next": {"type": ["string", "null"]}}},
                            "revisions": {"type": "array", "items": {"type": "object"}},
                            "serve_status": {"type": "object"},
                        }},
                    ]
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "object", "required": ["status", "code", "message"], "properties": {
                        "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"},
                    }}},
                },
            },
        },
    }
