"""The jobs API for other services: bearer tokens, idempotency keys, a job and its history, a
page of jobs, retry.

Requests are read into the pydantic models of receiver/schemas.py, which also generate the
OpenAPI document (receiver/openapi.py), so what the document promises is what the handlers check.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import (
    BaseModel,
    ValidationError,
)

from receiver.auth import bearer_is_one_of
from receiver.schemas import (
    DIGITS,
    HEADER_KEY,
    MAX_BODY_BYTES,
    MAX_KEY,
    TEXT,
    BadInput,
    BulkRetried,
    BulkRetry,
    ErrorBody,
    JobListQuery,
    JobPage,
    JobRequest,
    TooLarge,
    TranscriptQuery,
)
from tasks import limits
from tasks.callbacks.guard import Guard, Refused
from tasks.callbacks.model import owner
from tasks.callbacks.views import job_view, job_views
from tasks.dispatch import Dispatcher
from tasks.formats import CannotRender, open_transcript
from tasks.jobs.listing import Cursor, Filters
from tasks.jobs.states import State
from tasks.jobs.transitions import MAX_CALLBACKS_PER_CALLER
from tasks.jobs.views import Job, Source
from tasks.store import Store


@dataclass
class JobsApi:
    """What the jobs API works with: the dispatcher (and its job store), where transcripts are,
    and the guard of callback URLs (None: callbacks are not signed, so none is taken)."""

    dispatch: Dispatcher
    tokens: list[str]
    store: Store
    guard: Guard | None


bp = Blueprint("jobs_api", __name__, url_prefix="/api/v1")


def _api() -> JobsApi:
    api: JobsApi = current_app.extensions["jobs_api"]
    return api


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify(ErrorBody(error=message).model_dump()), status


def _job(job: Job, status: int) -> tuple[Response, int]:
    return jsonify(job.model_dump(mode="json")), status


@bp.before_request
def _authenticate() -> tuple[Response, int] | None:
    if not bearer_is_one_of(_api().tokens):
        return _error(401, "a valid bearer token is required")
    return None


@bp.errorhandler(BadInput)
@bp.errorhandler(limits.OverLimit)
def _bad_input(exc: ValueError) -> tuple[Response, int]:
    return _error(413 if isinstance(exc, TooLarge) else 400, str(exc))


@bp.errorhandler(redis.RedisError)
def _unavailable(_: redis.RedisError) -> tuple[Response, int]:
    return _error(503, "job store unavailable, retry later")


@bp.post("/jobs")
def create_job() -> tuple[Response, int]:
    body = _model(JobRequest, _json_body())
    header_key = _header_key()
    key = body.idempotency_key or header_key
    api = _api()
    by = owner(request.headers.get("Authorization", "").removeprefix("Bearer ").strip())
    if body.callback_url is not None:
        _check_callback(api, body.callback_url, by)
    dispatch = api.dispatch
    if not dispatch.knows(body.workspace):
        raise BadInput(f"workspace: no workspace {body.workspace!r} is set up here")
    job_id, created = dispatch.submit(
        body.recording_id,
        body.provider,
        body.metadata,
        key,
        workspace=body.workspace,
        source=Source.API,
    )
    job = job_view(dispatch.jobs, job_id)
    if job is None:  # expired between the two calls
        return _error(503, "the job vanished while it was being created, retry")
    provider = dispatch.provider(body.provider, body.workspace)
    if not created and key is not None and _differs(job, body.recording_id, provider, body):
        return _error(409, "this idempotency key was used with different parameters")
    if body.callback_url is None:
        return _job(job, 202)
    # Whoever asked is called back: the job's first caller, a second one, or recording.done.
    added = dispatch.jobs.add_callback(job_id, body.callback_url, by)
    if added is None:
        return _error(503, "the job vanished while it was being created, retry")
    if added == "full":
        mine = f"you gave this job {MAX_CALLBACKS_PER_CALLER} callback URLs already"
        return _error(409, f"callback_url: {mine}, the most")  # this caller's share alone
    return _job(job.model_copy(update={"callback_url": body.callback_url}), 202)  # the caller's


def _check_callback(api: JobsApi, url: str, by: str) -> None:
    if api.guard is None:
        raise BadInput("callback_url: callbacks are off here (no CALLBACK_SECRET to sign them)")
    try:
        api.guard.check(url, by)
    except Refused as exc:
        raise BadInput(f"callback_url: {exc}") from None


# Job ids are UUIDs (derived from idempotency keys): anything else is no job (404).
@bp.get("/jobs/<uuid:job_id>")
def get_job(job_id: UUID) -> tuple[Response, int]:
    job = job_view(_api().dispatch.jobs, str(job_id))
    if job is None:
        return _error(404, f"no job {job_id}")
    return _job(job, 200)


@bp.get("/jobs/<uuid:job_id>/history")
def get_history(job_id: UUID) -> tuple[Response, int]:
    """Every transition the job went through, oldest first (the newest JOB_HISTORY_MAX)."""
    history = _api().dispatch.jobs.history(str(job_id))
    if history is None:
        return _error(404, f"no job {job_id}")
    return jsonify(history.model_dump(mode="json")), 200


@bp.get("/jobs/<uuid:job_id>/transcript")
def get_transcript(job_id: UUID) -> tuple[Response, int]:
    """The job's persisted transcript, as stored or rendered for people: streamed, so that the
    memory a request holds is bounded (`open_transcript`)."""
    query = _model(TranscriptQuery, _query(()))
    api = _api()
    job = api.dispatch.jobs.record(str(job_id))
    if job is None:
        return _error(404, f"no job {job_id}")
    if job.state != State.DONE or job.transcript_id is None:
        return _error(409, f"job {job_id} is {job.state}: no transcript persisted")
    try:
        body = open_transcript(api.store, job.recording_id, job.transcript_id, query.format)
    except FileNotFoundError:
        return _error(404, f"transcript {job.transcript_id} is not in the store")
    except CannotRender as exc:  # the transcript's state, not the request: 409, not 413
        return _error(409, f"transcript {job.transcript_id}: {exc}")
    length = {"Content-Length": str(body.size)}  # a cut stream is then seen to be cut
    return Response(body, mimetype=query.format.media_type, headers=length), 200


@bp.get("/jobs")
def list_jobs() -> tuple[Response, int]:
    query = _model(JobListQuery, _query(("offset", "limit")))
    store = _api().dispatch.jobs
    after, before = query.created_after, query.created_before
    filters = Filters(
        recording_id=query.recording_id,
        state=query.state,
        workspace=query.workspace,
        error_code=query.error_code,
        created_after=after.timestamp() if after else None,
        created_before=before.timestamp() if before else None,
    )
    cursor = Cursor.parse(query.cursor) if query.cursor else None
    page = store.page(filters, cursor=cursor, offset=query.offset, limit=query.limit)
    more = page.next_cursor is not None
    answer = JobPage(
        jobs=job_views(store, page.records),
        next_cursor=str(page.next_cursor) if more else None,
        next_offset=page.next_offset if not cursor else None,
    )
    return jsonify(answer.model_dump(mode="json")), 200


@bp.post("/jobs/retry")
def retry_jobs() -> tuple[Response, int]:
    body = _model(BulkRetry, _json_body())
    retried = _api().dispatch.retry_failed(
        error_code=body.error_code,
        recording_id=body.recording_id,
        created_after=body.created_after.timestamp() if body.created_after else None,
    )
    return jsonify(BulkRetried(retried=retried).model_dump()), 202


@bp.post("/jobs/<uuid:job_id>/retry")
def retry_job(job_id: UUID) -> tuple[Response, int]:
    dispatch, key = _api().dispatch, str(job_id)
    job = job_view(dispatch.jobs, key)
    if job is None:
        return _error(404, f"no job {key}")
    if not dispatch.retry(key):
        return _error(409, f"job {key} is {job.state}; only failed jobs can be retried")
    retried = job_view(dispatch.jobs, key)
    return _job(retried or job, 202)


# -- reading requests strictly ------------------------------------------------------------------


M = TypeVar("M", bound=BaseModel)


def _model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadInput(f"{where}: {first['msg']}") from None


def _json_body() -> Any:
    """The body as JSON, refusing what is not JSON (NaN, Infinity, numbers that overflow), a
    body over MAX_BODY_BYTES and nesting deeper than a job's fields may hold."""
    data = request.get_data()
    if len(data) > MAX_BODY_BYTES:
        raise TooLarge(f"body: {len(data)} bytes, over the jobs API's limit of {MAX_BODY_BYTES}")
    try:
        value = json.loads(data, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadInput(f"body: nested deeper than {limits.MAX_DEPTH} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise BadInput(f"body: not valid JSON ({exc})") from None
    _check_text(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


def _check_text(body: Any) -> None:
    """No control characters in any text or key (tab, newline, carriage return in text only).
    Walked without recursion, so no depth breaks the walk; depth is the fields' limit
    (tasks/limits.py, checked where every job comes in)."""
    stack: list[tuple[Any, str]] = [(body, "body")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str) and not re.match(TEXT, value):
            raise BadInput(f"{where}: control characters are not allowed")
        if isinstance(value, list):
            stack.extend((item, f"{where}.{index}") for index, item in enumerate(value))
        if isinstance(value, dict):
            for name, item in value.items():
                if not re.match(TEXT, name):
                    raise BadInput(f"{where} (a key): control characters are not allowed")
                stack.append((item, f"{where}.{name}"))


def _header_key() -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    if len(value) > MAX_KEY or not re.match(HEADER_KEY, value):
        raise BadInput(f"Idempotency-Key: 1 to {MAX_KEY} printable ASCII characters")
    return value


def _query(integers: tuple[str, ...]) -> dict[str, Any]:
    """The query string; integer parameters must be plain ASCII digits (no sign, no spaces)."""
    values: dict[str, Any] = dict(request.args.items())
    for name in integers:
        if name in values:
            if not DIGITS.fullmatch(values[name]):
                raise BadInput(f"{name}: must be a whole number written in digits")
            values[name] = int(values[name])
    return values


def _differs(job: Job, recording_id: str, provider: dict[str, Any], body: JobRequest) -> bool:
    """A key reused for another job; a callback_url is not one (it is added to the job)."""
    return (job.recording_id, job.provider, job.metadata, job.workspace) != (
        recording_id,
        provider,
        body.metadata or {},
        body.workspace,
    )
