"""The jobs API for other services: bearer tokens, idempotency keys, a page of jobs, retry."""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import BaseModel, Field, ValidationError, field_validator

from tasks.jobs import STATES, Job, JobStore
from tasks.steps import Pipeline

RECORDING_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class JobRequest(BaseModel):
    """Body of `POST /api/v1/jobs`."""

    recording_id: str = Field(pattern=RECORDING_ID)
    provider: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)

    @field_validator("provider")
    @classmethod
    def _one_provider(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(value) != 1:
            raise ValueError("provider must hold exactly one provider key")
        return value


class JobPage(BaseModel):
    jobs: list[Job]
    next_offset: int | None


bp = Blueprint("jobs_api", __name__, url_prefix="/api/v1")


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(error=message), status


@bp.before_request
def _authenticate() -> tuple[Response, int] | None:
    tokens: list[str] = current_app.extensions["api_tokens"]
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    if not given or not any(hmac.compare_digest(given, token) for token in tokens):
        return _error(401, "a valid bearer token is required")
    return None


def _pipeline() -> Pipeline:
    pipeline: Pipeline = current_app.extensions["pipeline"]
    return pipeline


def _jobs() -> JobStore:
    return _pipeline().jobs


@bp.post("/jobs")
def create_job() -> tuple[Response, int]:
    try:
        body = JobRequest.model_validate(request.get_json(force=True, silent=False))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        return _error(400, f"{where}: {first['msg']}")
    except Exception:
        return _error(400, "body must be a JSON object")
    key = body.idempotency_key or request.headers.get("Idempotency-Key") or None
    job_id, _ = _pipeline().submit(body.recording_id, body.provider, body.metadata, key)
    job = _jobs().get(job_id)
    assert job is not None
    return jsonify(job.model_dump(mode="json")), 202


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> tuple[Response, int]:
    job = _jobs().get(job_id)
    if job is None:
        return _error(404, f"no job {job_id}")
    return jsonify(job.model_dump(mode="json")), 200


@bp.get("/jobs")
def list_jobs() -> tuple[Response, int]:
    state = request.args.get("state") or None
    if state is not None and state not in STATES:
        return _error(400, f"state must be one of {', '.join(STATES)}")
    try:
        offset = max(0, int(request.args.get("offset", "0")))
        limit = min(500, max(1, int(request.args.get("limit", "50"))))
    except ValueError:
        return _error(400, "offset and limit must be integers")
    jobs = _jobs().page(
        recording_id=request.args.get("recording_id") or None,
        state=state,
        offset=offset,
        limit=limit,
    )
    next_offset = offset + limit if len(jobs) == limit else None
    return jsonify(JobPage(jobs=jobs, next_offset=next_offset).model_dump(mode="json")), 200


@bp.post("/jobs/<job_id>/retry")
def retry_job(job_id: str) -> tuple[Response, int]:
    jobs = _jobs()
    job = jobs.get(job_id)
    if job is None:
        return _error(404, f"no job {job_id}")
    if not jobs.retry(job_id):
        return _error(409, f"job {job_id} is {job.state}; only failed jobs can be retried")
    _pipeline().enqueue("create", job_id)
    retried = jobs.get(job_id)
    assert retried is not None
    return jsonify(retried.model_dump(mode="json")), 202


def _json_of(ref: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": ref}}}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3 description of the receiver's endpoints."""
    schemas: dict[str, Any] = {}
    for model in (JobRequest, Job, JobPage):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    job_ref = {"$ref": "#/components/schemas/Job"}
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    path_id = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "recall-transcribe", "version": "0.1.0"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/webhooks/recall": {
                "post": {
                    "summary": "Recall webhook (Standard Webhooks / Svix signed)",
                    "responses": {
                        code: {"description": text}
                        for code, text in {
                            "200": "enqueued, duplicate, or ignored",
                            "400": "malformed JSON or payload",
                            "401": "missing or invalid signature",
                            "413": "body over 1 MiB",
                            "503": "Redis unavailable; Recall will retry",
                        }.items()
                    },
                }
            },
            "/healthz": {"get": {"responses": {"200": {"description": "process alive"}}}},
            "/readyz": {
                "get": {
                    "responses": {
                        "200": {"description": "Redis answers"},
                        "503": {"description": "Redis unavailable"},
                    }
                }
            },
            "/api/v1/jobs": {
                "post": {
                    "security": bearer,
                    "parameters": [
                        {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string"}}
                    ],
                    "requestBody": {
                        "required": True,
                        **_json_of({"$ref": "#/components/schemas/JobRequest"}),
                    },
                    "responses": {"202": {"description": "the job", **_json_of(job_ref)}},
                },
                "get": {
                    "security": bearer,
                    "parameters": [
                        {"name": name, "in": "query", "schema": {"type": kind}}
                        for name, kind in (
                            ("recording_id", "string"),
                            ("state", "string"),
                            ("offset", "integer"),
                            ("limit", "integer"),
                        )
                    ],
                    "responses": {
                        "200": {
                            "description": "a page of jobs",
                            **_json_of({"$ref": "#/components/schemas/JobPage"}),
                        }
                    },
                },
            },
            "/api/v1/jobs/{job_id}": {
                "get": {
                    "security": bearer,
                    "parameters": path_id,
                    "responses": {"200": {"description": "the job", **_json_of(job_ref)}},
                }
            },
            "/api/v1/jobs/{job_id}/retry": {
                "post": {
                    "security": bearer,
                    "parameters": path_id,
                    "responses": {
                        "202": {"description": "the job, queued again", **_json_of(job_ref)}
                    },
                }
            },
        },
    }
