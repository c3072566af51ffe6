"""The receiver's OpenAPI 3.1 document, generated from the pydantic models the handlers validate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from receiver.schemas import (
    HEADER_KEY,
    JSON_VALUE_MARKER,
    JSON_VALUE_REF,
    MAX_KEY,
    BulkRetried,
    BulkRetry,
    ErrorBody,
    JobListQuery,
    JobPage,
    JobRequest,
    TranscriptQuery,
    json_value_schemas,
)
from tasks.formats import Format
from tasks.jobs.history import History
from tasks.jobs.views import Job
from tasks.names import DEFAULT

BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_TRANSCRIPT = {
    Format.JSON: {"type": "array", "description": "Recall's data: participants and their words"},
    Format.TEXT: {"type": "string"},
    Format.SRT: {"type": "string"},
    Format.VTT: {"type": "string"},
}


def _ref(model: type[BaseModel] | str) -> dict[str, str]:
    name = model if isinstance(model, str) else model.__name__
    return {"$ref": f"#/components/schemas/{name}"}


def _content(model: type[BaseModel]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(model)}}}


def _answers(ok: tuple[str, type[BaseModel], str], *errors: str, **links: Any) -> dict[str, Any]:
    """Responses: the success one, then error statuses that carry `{"error": "..."}`."""
    texts = {
        "400": "invalid input; `error` says where",
        "401": "no valid bearer token",
        "404": "no such job",
        "409": "conflict; `error` says why",
        "413": "body over the limit (the jobs API: 64 KiB; webhooks: 1 MiB)",
        "503": "Redis unavailable; retry later",
    }
    status, model, text = ok
    success: dict[str, Any] = {"description": text, **_content(model)}
    if links:
        success["links"] = links
    return {
        status: success,
        **{code: {"description": texts[code], **_content(ErrorBody)} for code in errors},
        "414": {"description": "request line over 4094 bytes (refused by gunicorn, no JSON)"},
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One query parameter per field; an optional field's schema without its `null` branch."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    parameters = []
    for name, field in schema["properties"].items():
        branches = [b for b in field.get("anyOf", [field]) if b.get("type") != "null"]
        (kept,) = branches
        kept = {k: v for k, v in kept.items() if k != "title"}
        if "default" in field and field["default"] is not None:
            kept["default"] = field["default"]
        parameters.append({"name": name, "in": "query", "required": False, "schema": kept})
    return parameters


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = json_value_schemas()
    models: tuple[type[BaseModel], ...] = (
        JobRequest,
        Job,
        JobPage,
        History,
        ErrorBody,
        JobListQuery,
        TranscriptQuery,
        BulkRetry,
        BulkRetried,
    )
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    del schemas["JobListQuery"], schemas["TranscriptQuery"]  # their fields are query parameters
    with_refs: dict[str, Any] = _with_refs(schemas)
    return with_refs


def _with_refs(node: Any) -> Any:
    """The schemas with each JsonValue marker replaced by a reference to JsonValue."""
    if node == JSON_VALUE_MARKER:
        return JSON_VALUE_REF
    if isinstance(node, dict):
        return {key: _with_refs(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_with_refs(value) for value in node]
    return node


def openapi_document(workspaces: list[str], callbacks: bool) -> dict[str, Any]:
    """The OpenAPI 3.1 description of the receiver's endpoints as this deployment serves them:
    `workspaces`, the names a job's `workspace` may take; `callback_url` offered only where
    `callbacks` can be signed and sent (without CALLBACK_SECRET every use of it is refused)."""
    document = _document()
    request = document["components"]["schemas"]["JobRequest"]["properties"]
    request["workspace"]["enum"] = workspaces
    if not callbacks:
        del request["callback_url"]
    # Listing takes any name: jobs stay listed after their workspace leaves RECALL_WORKSPACES.
    others = [name for name in workspaces if name != DEFAULT]
    if others:
        hook = dict(document["paths"]["/webhooks/recall"])
        hook["post"] = {
            **hook["post"],
            "operationId": "receiveWorkspaceWebhook",
            "summary": "a RECALL_WORKSPACES workspace's Recall webhook, verified with its secret",
            "parameters": [
                {
                    "name": "workspace",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": others},
                }
            ],
        }
        document["paths"]["/webhooks/recall/{workspace}"] = hook
    return document


def _document() -> dict[str, Any]:
    job_id = [
        {
            "name": "job_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        }
    ]
    job_links = {
        "GetJob": {"operationId": "getJob", "parameters": {"job_id": "$response.body#/id"}},
        "RetryJob": {"operationId": "retryJob", "parameters": {"job_id": "$response.body#/id"}},
        "GetTranscript": {
            "operationId": "getTranscript",
            "parameters": {"job_id": "$response.body#/id"},
        },
    }
    idempotency_header = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "used when the body has no idempotency_key",
        "schema": {"type": "string", "pattern": HEADER_KEY, "maxLength": MAX_KEY},
    }
    webhook_answers = {
        "200": "enqueued, duplicate, or ignored",
        "400": "malformed JSON or payload",
        "401": "missing or invalid signature, or timestamp outside 5 minutes",
        "413": "body over the limit (the jobs API: 64 KiB; webhooks: 1 MiB)",
        "503": "Redis unavailable; Recall will retry",
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "recall-transcribe", "version": "0.1.0"},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/webhooks/recall": {
                "post": {
                    "operationId": "receiveWebhook",
                    "summary": "Recall webhook (Standard Webhooks / Svix signed)",
                    "responses": {k: {"description": v} for k, v in webhook_answers.items()},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus text format, the whole fleet's (read from Redis)",
                    "responses": {
                        "200": {"description": "the metrics", "content": {"text/plain": {}}},
                        "401": {
                            "description": "METRICS_TOKEN is set and the bearer token is not it",
                            **_content(ErrorBody),
                        },
                        "503": {"description": "Redis unavailable"},
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "responses": {"200": {"description": "the process runs"}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "responses": {
                        "200": {"description": "Redis answers"},
                        "503": {"description": "Redis unavailable"},
                    },
                }
            },
            "/api/v1/jobs": {
                "post": {
                    "operationId": "createJob",
                    "security": BEARER,
                    "parameters": [idempotency_header],
                    "requestBody": {"required": True, **_content(JobRequest)},
                    "responses": _answers(
                        ("202", Job, "the job (the same key: the same job)"),
                        "400",
                        "401",
                        "409",
                        "413",
                        "503",
                        **job_links,
                    ),
                },
                "get": {
                    "operationId": "listJobs",
                    "security": BEARER,
                    "parameters": _query_parameters(JobListQuery),
                    "responses": _answers(
                        ("200", JobPage, "a page of jobs, newest first"), "400", "401", "503"
                    ),
                },
            },
            "/api/v1/jobs/retry": {
                "post": {
                    "operationId": "retryJobs",
                    "summary": "re-run the failed jobs that match, each from where it stopped",
                    "security": BEARER,
                    "requestBody": {"required": True, **_content(BulkRetry)},
                    "responses": _answers(
                        ("202", BulkRetried, "how many were queued again"),
                        "400",
                        "401",
                        "413",
                        "503",
                    ),
                }
            },
            "/api/v1/jobs/{job_id}": {
                "get": {
                    "operationId": "getJob",
                    "security": BEARER,
                    "parameters": job_id,
                    "responses": _answers(("200", Job, "the job"), "401", "404", "503"),
                }
            },
            "/api/v1/jobs/{job_id}/transcript": {
                "get": {
                    "operationId": "getTranscript",
                    "summary": "the job's persisted transcript: as stored (json), or for people",
                    "security": BEARER,
                    "parameters": job_id + _query_parameters(TranscriptQuery),
                    "responses": {
                        "200": {
                            "description": "the transcript in the format asked for",
                            "content": {
                                fmt.media_type.split(";")[0]: {"schema": _TRANSCRIPT[fmt]}
                                for fmt in Format
                            },
                        },
                        **{
                            code: {"description": text, **_content(ErrorBody)}
                            for code, text in {
                                "400": "an unknown format",
                                "401": "no valid bearer token",
                                "404": "no such job, or its transcript is not in the store",
                                "409": "the job has no persisted transcript (yet)",
                                "503": "Redis unavailable; retry later",
                            }.items()
                        },
                    },
                }
            },
            "/api/v1/jobs/{job_id}/history": {
                "get": {
                    "operationId": "getJobHistory",
                    "summary": "every transition of the job, oldest first (the newest "
                    "JOB_HISTORY_MAX kept): the state and step after it, and the error met",
                    "security": BEARER,
                    "parameters": job_id,
                    "responses": _answers(
                        ("200", History, "the job's history"), "401", "404", "503"
                    ),
                }
            },
            "/api/v1/jobs/{job_id}/retry": {
                "post": {
                    "operationId": "retryJob",
                    "security": BEARER,
                    "parameters": job_id,
                    "responses": _answers(
                        ("202", Job, "the job, queued again"), "401", "404", "409", "503"
                    ),
                }
            },
        },
    }
