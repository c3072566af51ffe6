"""The jobs API: bearer tokens, idempotency keys, reading jobs, retrying failed ones."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from harness import EmulatorHandle, recording_done, wait_for
from receiver.app import create_app
from tasks.events import parse_event
from tasks.formats import Format, render
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import default_idempotency_key
from tasks.jobs.states import Step
from tasks.names import PIPELINE_QUEUE
from tasks.outcomes import Outcome
from tasks.settings import Settings
from tests.helpers import Harness, reconfigure

AUTH = {"Authorization": "Bearer token-1"}


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(reconfigure(settings, API_TOKENS="token-1,token-2")).test_client()


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "token-1"}]
)
def test_requests_without_a_valid_bearer_token_are_refused(
    client: FlaskClient, headers: dict[str, str]
) -> None:
    assert (
        client.post("/api/v1/jobs", json={"recording_id": "r1"}, headers=headers).status_code == 401
    )
    assert client.get("/api/v1/jobs", headers=headers).status_code == 401


def test_without_configured_tokens_the_api_answers_401(settings: Settings) -> None:
    client = create_app(settings).test_client()
    assert client.get("/api/v1/jobs", headers=AUTH).status_code == 401


def test_create_job_is_idempotent_by_key(client: FlaskClient, rclient: object) -> None:
    body = {"recording_id": "r1", "idempotency_key": "abc", "metadata": {"team": "x"}}
    first = client.post("/api/v1/jobs", json=body, headers=AUTH)
    again = client.post("/api/v1/jobs", json=body, headers=AUTH)
    assert first.status_code == again.status_code == 202
    assert first.json["id"] == again.json["id"]
    assert first.json["state"] == "queued" and first.json["metadata"] == {"team": "x"}
    assert rclient.llen(PIPELINE_QUEUE) == 1  # type: ignore[attr-defined]


def test_idempotency_key_header_and_default_key(client: FlaskClient) -> None:
    by_header = client.post(
        "/api/v1/jobs", json={"recording_id": "r1"}, headers={**AUTH, "Idempotency-Key": "h"}
    )
    default = client.post("/api/v1/jobs", json={"recording_id": "r1"}, headers=AUTH)
    default_again = client.post("/api/v1/jobs", json={"recording_id": "r1"}, headers=AUTH)
    assert by_header.json["idempotency_key"] == "h"
    assert default.json["id"] == default_again.json["id"] != by_header.json["id"]


def test_a_client_cannot_take_a_recordings_job_by_naming_its_derived_key(
    client: FlaskClient, harness: Harness, settings: Settings
) -> None:
    """The key the webhook path derives for recording Z, given to the API for recording Y,
    names another job: Z's recording.done still starts Z's own job."""
    z_key = default_idempotency_key("Z", settings.TRANSCRIPT_PROVIDER)
    body = {"recording_id": "Y", "idempotency_key": z_key}
    taken = client.post("/api/v1/jobs", json=body, headers=AUTH)
    assert taken.status_code == 202 and taken.json["recording_id"] == "Y"
    result = harness.pipeline.ingest(parse_event(recording_done("Z")))
    assert result.outcome == Outcome.JOB_CREATED and result.job_id != taken.json["id"]
    job = harness.pipeline.jobs.record(result.job_id)
    assert job is not None and job.recording_id == "Z"
    # Without a key, a client's job for Z is Z's own (one transcript for one recording).
    keyless = client.post("/api/v1/jobs", json={"recording_id": "Z"}, headers=AUTH)
    assert keyless.json["id"] == result.job_id


@pytest.mark.parametrize(
    "body",
    [{}, {"recording_id": "../etc"}, {"recording_id": "r1", "provider": {"a": {}, "b": {}}}, [1]],
)
def test_invalid_job_requests_are_400(client: FlaskClient, body: object) -> None:
    assert client.post("/api/v1/jobs", json=body, headers=AUTH).status_code == 400


def test_get_and_list_jobs(client: FlaskClient) -> None:
    made = [
        client.post("/api/v1/jobs", json={"recording_id": f"r{i}"}, headers=AUTH).json
        for i in range(3)
    ]
    one = client.get(f"/api/v1/jobs/{made[0]['id']}", headers=AUTH)
    assert one.status_code == 200
    assert set(one.json) >= {
        "id",
        "recording_id",
        "state",
        "transcript_id",
        "attempts",
        "error",
        "created_at",
        "updated_at",
    }
    page = client.get("/api/v1/jobs?state=queued&limit=2", headers=AUTH).json
    assert len(page["jobs"]) == 2 and page["next_offset"] == 2
    by_recording = client.get("/api/v1/jobs?recording_id=r1", headers=AUTH).json["jobs"]
    assert [job["id"] for job in by_recording] == [made[1]["id"]]
    assert client.get("/api/v1/jobs/nope", headers=AUTH).status_code == 404
    assert client.get("/api/v1/jobs?state=bogus", headers=AUTH).status_code == 400


def test_retry_only_reruns_failed_jobs(
    client: FlaskClient, settings: Settings, emulator: EmulatorHandle
) -> None:
    job = client.post("/api/v1/jobs", json={"recording_id": "r1"}, headers=AUTH).json
    assert client.post(f"/api/v1/jobs/{job['id']}/retry", headers=AUTH).status_code == 409
    app = client.application
    app.extensions["jobs_api"].dispatch.jobs.fail(job["id"], ErrorCode.RECALL_REJECTED, "test")
    retried = client.post(f"/api/v1/jobs/{job['id']}/retry", headers=AUTH)
    assert retried.status_code == 202
    assert (
        retried.json["state"] == "queued"
        and retried.json["attempts"] == 2
        and retried.json["error"] is None
    )


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=-3", "limit=501", "offset=-5", "limit=%2B3", "limit=%EF%BC%93", "limit=3.0"],
)
def test_list_bounds_and_plain_digits_are_enforced(client: FlaskClient, query: str) -> None:
    response = client.get(f"/api/v1/jobs?{query}", headers=AUTH)
    assert response.status_code == 400
    assert set(response.json) == {"error"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"recording_id": "r1", "metadata": {"x": NaN}}',
        b'{"recording_id": "r1", "metadata": {"x": 1e400}}',
        b'{"recording_id": "r1", "provider": {"recallai_async": {"n": -Infinity}}}',
        b'{"recording_id": "r1", "metadata": {"a\\u0000b": 1}}',
        b'{"recording_id": "r1", "idempotency_key": "k\\u0000"}',
        b'{"recording_id": "r1", "unknown": 1}',
    ],
)
def test_non_json_numbers_control_characters_and_unknown_fields_are_400(
    client: FlaskClient, rclient: object, raw: bytes
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    assert client.post("/api/v1/jobs", data=raw, headers=headers).status_code == 400
    assert rclient.llen(PIPELINE_QUEUE) == 0  # type: ignore[attr-defined]


def test_an_idempotency_key_reused_with_other_parameters_is_409(client: FlaskClient) -> None:
    first = {"recording_id": "r1", "idempotency_key": "k1", "metadata": {"team": "a"}}
    assert client.post("/api/v1/jobs", json=first, headers=AUTH).status_code == 202
    for changed in ({"recording_id": "r2"}, {"metadata": {"team": "b"}}):
        response = client.post("/api/v1/jobs", json={**first, **changed}, headers=AUTH)
        assert response.status_code == 409, changed
    assert client.post("/api/v1/jobs", json=first, headers=AUTH).status_code == 202


def test_a_non_ascii_idempotency_key_header_is_refused(client: FlaskClient) -> None:
    headers = {**AUTH, "Idempotency-Key": "clé".encode().decode("latin-1")}
    response = client.post("/api/v1/jobs", json={"recording_id": "r1"}, headers=headers)
    assert response.status_code == 400


def test_bulk_retry_reruns_the_failed_jobs_that_match_and_says_how_many(
    client: FlaskClient,
) -> None:
    jobs = client.application.extensions["jobs_api"].dispatch.jobs
    made = {
        rid: client.post("/api/v1/jobs", json={"recording_id": rid}, headers=AUTH).json["id"]
        for rid in ("a", "b", "c", "d")
    }
    jobs.fail(made["a"], ErrorCode.RECALL_UNAVAILABLE, "x")
    jobs.fail(made["b"], ErrorCode.RECALL_UNAVAILABLE, "x")
    jobs.fail(made["c"], ErrorCode.LIMIT_REACHED, "x")
    body = {"state": "failed", "error_code": "recall_unavailable", "recording_id": "b"}
    response = client.post("/api/v1/jobs/retry", json=body, headers=AUTH)
    assert (response.status_code, response.json) == (202, {"retried": 1})
    assert jobs.record(made["b"]).state == "queued"  # type: ignore[union-attr]
    response = client.post("/api/v1/jobs/retry", json={"state": "failed"}, headers=AUTH)
    assert response.json == {"retried": 2}
    states = {rid: jobs.record(job_id).state for rid, job_id in made.items()}  # type: ignore[union-attr]
    assert set(states.values()) == {"queued"}
    later = {"state": "failed", "created_after": "2999-01-01T00:00:00Z"}
    jobs.fail(made["d"], ErrorCode.INTERNAL, "x")
    assert client.post("/api/v1/jobs/retry", json=later, headers=AUTH).json == {"retried": 0}
    for bad in ({"state": "done"}, {"state": "failed", "error_code": "nope"}, {}):
        assert client.post("/api/v1/jobs/retry", json=bad, headers=AUTH).status_code == 400


@pytest.mark.parametrize("token", ["tökén", "token-1\u0000", "token-1 extra"])
def test_a_malformed_bearer_token_is_401_never_500(client: FlaskClient, token: str) -> None:
    header = f"Bearer {token}".encode().decode("latin-1")
    assert client.get("/api/v1/jobs", headers={"Authorization": header}).status_code == 401


SIGNED = {"CALLBACK_SECRET": "whsec_dGVzdA==", "CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8"}


def test_a_callback_url_is_taken_only_where_callbacks_can_go(settings: Settings) -> None:
    off = create_app(reconfigure(settings, API_TOKENS="token-1")).test_client()
    body = {"recording_id": "r1", "callback_url": "https://hooks.example/done"}
    refused = off.post("/api/v1/jobs", json=body, headers=AUTH)
    assert refused.status_code == 400 and "CALLBACK_SECRET" in refused.json["error"]

    on = create_app(reconfigure(settings, API_TOKENS="token-1", **SIGNED)).test_client()
    taken = on.post("/api/v1/jobs", json=body, headers=AUTH)
    assert taken.status_code == 202
    assert (taken.json["callback_url"], taken.json["callbacks"]) == (body["callback_url"], [])
    for url in ("http://8.8.8.8/hook", "https://user:pw@hooks.example/", "ftp://hooks.example/"):
        answer = on.post(
            "/api/v1/jobs", json={"recording_id": "r2", "callback_url": url}, headers=AUTH
        )
        assert answer.status_code == 400, url
    inside = {"recording_id": "r3", "callback_url": "http://127.0.0.1:9/hook"}
    assert on.post("/api/v1/jobs", json=inside, headers=AUTH).status_code == 202
    again = {**body, "idempotency_key": "k"}
    assert on.post("/api/v1/jobs", json=again, headers=AUTH).status_code == 202
    other = {**again, "callback_url": "https://elsewhere.example/"}  # a second destination
    assert on.post("/api/v1/jobs", json=other, headers=AUTH).status_code == 202


def test_the_transcript_route_serves_each_format_once_the_job_is_done(
    client: FlaskClient, harness: Harness, emulator: EmulatorHandle
) -> None:
    emulator.recording("r1")
    job_id = harness.submit("r1")
    url = f"/api/v1/jobs/{job_id}/transcript"
    assert client.get(url, headers=AUTH).status_code == 409  # nothing persisted yet
    harness.drain()
    wait_for(lambda: all(t["status"]["code"] == "done" for t in emulator.transcripts("r1")), 10)
    harness.run(Step.AWAIT, job_id)
    harness.drain()
    (transcript,) = emulator.transcripts("r1")
    data = emulator.data(transcript["id"])
    as_json = client.get(url, headers=AUTH)
    assert (as_json.status_code, as_json.data) == (200, data)
    for fmt, media in (
        ("text", "text/plain"),
        ("srt", "application/x-subrip"),
        ("vtt", "text/vtt"),
    ):
        answer = client.get(f"{url}?format={fmt}", headers=AUTH)
        assert answer.status_code == 200 and answer.mimetype == media
        assert answer.data == render(data, Format(fmt))
    assert client.get(f"{url}?format=pdf", headers=AUTH).status_code == 400
    assert (
        client.get(
            "/api/v1/jobs/00000000-0000-0000-0000-000000000000/transcript", headers=AUTH
        ).status_code
        == 404
    )
