"""A job's history for other services (`GET /api/v1/jobs/{job_id}/history`): every transition it
went through, oldest first, behind the jobs API's bearer tokens."""

from __future__ import annotations

from uuid import UUID

import redis
from flask import Blueprint, Response, current_app, jsonify

from receiver.auth import bearer_is_one_of
from receiver.jobs_api import ErrorBody, JobsApi

bp = Blueprint("job_history", __name__, url_prefix="/api/v1")


def _api() -> JobsApi:
    api: JobsApi = current_app.extensions["jobs_api"]
    return api


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(ErrorBody(error=message).model_dump()), status


@bp.before_request
def _authenticate() -> tuple[Response, int] | None:
    if not bearer_is_one_of(_api().tokens):
        return _error(401, "a valid bearer token is required")
    return None


@bp.errorhandler(redis.RedisError)
def _unavailable(_: redis.RedisError) -> tuple[Response, int]:
    return _error(503, "job store unavailable, retry later")


# Job ids are UUIDs (derived from idempotency keys): anything else is no job (404).
@bp.get("/jobs/<uuid:job_id>/history")
def get_history(job_id: UUID) -> tuple[Response, int]:
    history = _api().dispatch.jobs.history(str(job_id))
    if history is None:
        return _error(404, f"no job {job_id}")
    return jsonify(history.model_dump(mode="json")), 200
