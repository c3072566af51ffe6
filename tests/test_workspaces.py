"""Several Recall workspaces in one deployment: each with its own webhook secrets, key, base URL
and quotas; a job carries its workspace through every step."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from celery import Celery
from flask.testing import FlaskClient

from harness import (
    OTHER_SECRET,
    SECRET,
    EmulatorHandle,
    System,
    free_port,
    recording_done,
    signed,
    transcript_event,
    wait_for,
)
from receiver.app import create_app
from tasks.events import parse_event
from tasks.jobs.errors import ErrorCode
from tasks.jobs.states import State, Step
from tasks.names import EVENTS_QUEUE
from tasks.outcomes import Outcome
from tasks.recall.limiter import DEFAULT_RATES, Family, Limiter, Rate
from tasks.settings import ConfigError, Settings, load_settings
from tests.helpers import (
    QUICK_EMULATOR,
    Harness,
    by_workspace,
    queued_events,
    reconfigure,
    run,
    state,
    wait_transcript_done,
)

EU_SECRET = OTHER_SECRET
EU_KEY = "eu-key"
TOKEN = {"Authorization": "Bearer test-token"}


def eu_workspace(base_url: str, **extra: Any) -> str:
    return json.dumps(
        {
            "eu": {
                "api_key_env": "TEST_EU_KEY",
                "base_url": base_url,
                "webhook_secret_env": "TEST_EU_SECRET",
                **extra,
            }
        }
    )


@pytest.fixture
def eu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_EU_KEY", EU_KEY)
    monkeypatch.setenv("TEST_EU_SECRET", EU_SECRET)


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("eu_env")
def test_a_workspace_takes_its_secrets_from_the_environment_variables_it_names(
    settings: Settings,
) -> None:
    configured = reconfigure(
        settings,
        RECALL_WORKSPACES=eu_workspace("https://eu-central-1.recall.ai/", rate_limits="list=30/60"),
    )
    eu = configured.workspaces["eu"]
    assert eu.api_key is not None and eu.api_key.get_secret_value() == EU_KEY
    assert eu.webhook_secrets == [EU_SECRET]
    assert eu.base_url == "https://eu-central-1.recall.ai"
    assert eu.rate_limits is not None and eu.rate_limits[Family.LIST] == Rate(30, 60)
    assert eu.rate_limits[Family.RETRIEVE] == DEFAULT_RATES[Family.RETRIEVE]
    assert eu.provider == settings.TRANSCRIPT_PROVIDER  # the default provider unless given
    default = configured.workspaces["default"]
    assert default.base_url == settings.RECALL_API_BASE_URL
    assert default.webhook_secrets == [SECRET]
    assert EU_KEY not in repr(configured.workspaces)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("{not json", "not valid JSON"),
        ('["eu"]', "must be a JSON object"),
        ('{"default": {}}', "not 'default'"),
        ('{"EU": {}}', "lowercase letters"),
        (
            '{"eu": {"base_url": "ftp://x", "api_key": "k", "webhook_secret": "whsec_eA=="}}',
            "base_url",
        ),
        ('{"eu": {"base_url": "https://x", "api_key_env": "TEST_UNSET_VARIABLE"}}', "not set"),
        ('{"eu": {"base_url": "https://x", "api_key": "k"}}', "webhook_secret"),
        ('{"eu": {"base_url": "https://x", "api_key": "k", "webhook_secret": " , "}}', "no secret"),
        (
            '{"eu": {"base_url": "https://x", "api_key": "k", "webhook_secret": "whsec_eA==",'
            ' "rate_limits": null}}',
            "rate_limits",
        ),
        ("[" * 100_000, "nested too deep"),
        ('{"eu": {"base_url": "https://x", "api_key": "k", "webhook_secret": "nope!"}}', "whsec_"),
        ('{"eu": {"base_url": "https://x", "apikey": "k"}}', "an object with some of"),
        (
            '{"eu": {"base_url": "https://x", "api_key": "k", "api_key_env": "TEST_EU_KEY",'
            ' "webhook_secret": "whsec_eA=="}}',
            "not both",
        ),
    ],
)
@pytest.mark.usefixtures("eu_env")
def test_a_wrong_workspace_stops_start_up_with_one_readable_line(
    settings: Settings, value: str, says: str
) -> None:
    os.environ.pop("TEST_UNSET_VARIABLE", None)
    with pytest.raises(ConfigError) as raised:
        reconfigure(settings, RECALL_WORKSPACES=value)
    message = str(raised.value)
    assert "RECALL_WORKSPACES" in message and says in message and "\n" not in message


# -- webhooks ---------------------------------------------------------------------------------


@pytest.fixture
def client(settings: Settings, eu_env: None) -> FlaskClient:
    configured = reconfigure(
        settings, RECALL_WORKSPACES=eu_workspace("http://127.0.0.1:9"), API_TOKENS="test-token"
    )
    return create_app(configured).test_client()


def test_each_workspace_takes_only_webhooks_signed_with_its_own_secret(
    client: FlaskClient, rclient: redis.Redis
) -> None:
    event = recording_done("r1")
    for url, secret in [("/webhooks/recall/eu", SECRET), ("/webhooks/recall", EU_SECRET)]:
        body, headers = signed(event, secret)
        assert client.post(url, data=body, headers=headers).status_code == 401
    body, headers = signed(event, EU_SECRET)
    assert client.post("/webhooks/recall/us", data=body, headers=headers).status_code == 404
    assert rclient.llen(EVENTS_QUEUE) == 0

    body, headers = signed(event, EU_SECRET, msg_id="msg-1")
    assert client.post("/webhooks/recall/eu", data=body, headers=headers).status_code == 200
    body, headers = signed(event, SECRET, msg_id="msg-1")  # the same id in another workspace
    assert client.post("/webhooks/recall", data=body, headers=headers).status_code == 200
    body, headers = signed(event, SECRET, msg_id="eu/msg-1")  # no id spells another's
    assert client.post("/webhooks/recall", data=body, headers=headers).status_code == 200
    assert queued_events(rclient) == [event, event, event]
    workspaces = [json.loads(args)[2] for args in queued_args(rclient)]
    assert sorted(workspaces) == ["default", "default", "eu"]


def queued_args(rclient: redis.Redis) -> list[str]:
    """The JSON arguments of the queued ingest messages."""
    import base64

    return [
        json.dumps(json.loads(base64.b64decode(json.loads(raw)["body"]))[0])
        for raw in rclient.lrange(EVENTS_QUEUE, 0, -1)
    ]


def test_the_jobs_api_takes_shows_and_filters_by_workspace(client: FlaskClient) -> None:
    def create(**body: Any) -> Any:
        return client.post("/api/v1/jobs", json=body, headers=TOKEN)

    eu = create(recording_id="r1", workspace="eu")
    default = create(recording_id="r1")
    assert (eu.status_code, default.status_code) == (202, 202)
    assert eu.json["workspace"] == "eu" and default.json["workspace"] == "default"
    assert eu.json["id"] != default.json["id"]  # the same recording id, in two workspaces
    assert create(recording_id="r1", workspace="us").status_code == 400
    assert create(recording_id="r1", workspace="EU!").status_code == 400
    key = {"recording_id": "r2", "idempotency_key": "k-1"}
    assert create(**key, workspace="eu").status_code == 202
    assert create(**key, workspace="eu").status_code == 202  # the same job again
    assert create(**key).status_code == 202  # a key names a job within its workspace

    # No key, whatever its characters, names another workspace's job.
    squatter = create(recording_id="r2", idempotency_key="eu/k-2")
    assert squatter.status_code == 202 and squatter.json["workspace"] == "default"
    assert create(recording_id="r2", idempotency_key="k-2", workspace="eu").status_code == 202

    listed = client.get("/api/v1/jobs?workspace=eu", headers=TOKEN).json["jobs"]
    assert sorted(job["recording_id"] for job in listed) == ["r1", "r2", "r2"]
    assert {job["workspace"] for job in listed} == {"eu"}
    queued = client.get("/api/v1/jobs?workspace=eu&state=queued", headers=TOKEN).json["jobs"]
    assert len(queued) == 3
    assert client.get("/api/v1/jobs?workspace=EU!", headers=TOKEN).status_code == 400
    document = client.get("/openapi.json").json  # what a client may send, for this deployment
    request = document["components"]["schemas"]["JobRequest"]["properties"]["workspace"]
    assert request["enum"] == ["default", "eu"]
    hook = document["paths"]["/webhooks/recall/{workspace}"]["post"]
    assert hook["parameters"][0]["schema"]["enum"] == ["eu"]


def test_a_busy_workspace_never_takes_another_ones_quota(rclient: redis.Redis) -> None:
    rates = {**DEFAULT_RATES, Family.LIST: Rate(1, 60)}
    eu, us = (Limiter(rclient, rates, 0.25, name) for name in ("eu", "us"))
    assert eu.acquire(Family.LIST).wait == 0
    assert eu.acquire(Family.LIST).wait > 50  # eu's one list call a minute is spent
    eu.pause(Family.LIST, "", 30)  # and Recall told eu to wait
    assert us.acquire(Family.LIST).wait == 0


def test_a_step_of_a_workspace_this_worker_lacks_waits_for_a_worker_that_has_it(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    harness.pipeline.settings = reconfigure(settings, MAX_STEP_RETRIES=1)
    emulator.recording("r2")
    job_id = harness.submit("r2", {"recallai_async": {}}, workspace="eu")  # the receiver knows eu
    for _ in range(3):  # more than the retry budget: a wait, not a failure
        assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    assert state(harness, job_id).state == State.QUEUED
    harness.pipeline.recalls["eu"] = harness.pipeline.recalls["default"]  # now it has eu
    assert run(harness, Step.CREATE, job_id) == Outcome.CREATED


def test_a_wait_for_a_missing_workspace_never_fails_a_job_whose_retry_budget_is_spent(
    harness: Harness, emulator: EmulatorHandle, settings: Settings
) -> None:
    """A wait spends no budget, even when errors of the same kind spent it in this phase: the
    job waits for a worker that has its workspace instead of failing."""
    harness.pipeline.settings = reconfigure(settings, MAX_STEP_RETRIES=1)
    emulator.recording("r2")
    job_id = harness.submit("r2", {"recallai_async": {}}, workspace="eu")
    spent = harness.pipeline.jobs.record(job_id)
    assert spent is not None
    harness.pipeline.jobs.retry_later(spent, 0, ErrorCode.INTERNAL, "a disk was full")
    assert state(harness, job_id).failures == {ErrorCode.INTERNAL: 1}  # the budget is spent
    assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    assert state(harness, job_id).state == State.QUEUED


def test_a_transcript_event_from_another_workspace_never_moves_a_job(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    """Webhooks are verified per workspace, so a workspace's secret must not move another
    workspace's jobs: an event naming an eu job but arriving at the default endpoint is
    ignored."""
    harness.pipeline.recalls = {"default": harness.pipeline.recalls["default"]} | {
        "eu": harness.pipeline.recalls["default"]  # one emulator stands in for both
    }
    emulator.recording("r1")
    job_id, _ = harness.pipeline.dispatch.submit("r1", {"recallai_async": {}}, workspace="eu")
    harness.drain()
    wait_transcript_done(emulator, "r1")
    job = state(harness, job_id)
    assert job.workspace == "eu" and job.transcript_id is not None
    event = parse_event(
        transcript_event("transcript.done", "r1", job.transcript_id, {"job_id": job_id})
    )
    assert harness.pipeline.ingest(event).outcome == Outcome.IGNORED
    assert harness.pipeline.ingest(event, "eu").outcome == Outcome.FETCH
    harness.drain()
    assert state(harness, job_id).state == State.DONE


# -- the whole system -------------------------------------------------------------------------


def test_jobs_of_two_workspaces_each_call_their_own_recall_through_every_step(
    start_system: Any, tmp_path: Path
) -> None:
    """Two emulators, each accepting only its own key and signing with its own secret. The eu
    recordings go through a 5xx, a lost create answer and the 10-transcript limit: every call
    they make reaches eu's Recall, and none of the default workspace's."""
    eu_port = free_port()
    eu_url = f"http://127.0.0.1:{eu_port}"
    system: System = start_system(
        RECALL_WORKSPACES=eu_workspace(eu_url, rate_limits="list=20/60"),
        TEST_EU_KEY=EU_KEY,
        TEST_EU_SECRET=EU_SECRET,
        RECALL_POLL_INITIAL_S="1",
    )
    eu = system.start_emulator(
        *QUICK_EMULATOR, workspace="eu", api_key=EU_KEY, secret=EU_SECRET, port=eu_port
    )
    eu.seed("eu-full", 9, "done")
    eu.seed("eu-full", 1, "failed")
    eu.fault(target="create", action="status", status=503, times=1)
    eu.fault(target="create", action="lose_response", recording_id="eu-2", times=1)
    for index in range(3):
        eu.recording(f"eu-{index}", send_done=True)
        system.emulator.recording(f"us-{index}", send_done=True)
    eu.recording("eu-full", send_done=True)
    eu.recording("eu-celery")  # a job another service starts, from a bare Celery client
    Celery(broker=system.env["REDIS_URL"]).send_task(
        "recall.submit_job",
        kwargs={"recording_id": "eu-celery", "idempotency_key": "from-celery", "workspace": "eu"},
        queue="recall.pipeline",
        serializer="json",
    )

    def done() -> int:
        response = requests.get(
            f"{system.receiver_url}/api/v1/jobs", params={"state": "done"}, headers=TOKEN
        )
        return len(response.json()["jobs"])

    wait_for(lambda: done() == 8, 60, what="8 jobs done")
    eu_stats, us_stats = eu.stats(), system.emulator.stats()
    seeded_and_ours = {"eu-full": 10 + 1}
    ours = {f"eu-{i}": 1 for i in range(3)} | {"eu-celery": 1}
    assert eu_stats["created_by_recording"] == ours | seeded_and_ours
    assert us_stats["created_by_recording"] == {f"us-{i}": 1 for i in range(3)}
    assert us_stats["calls"].get("list", 0) == 0 and us_stats["calls"].get("delete", 0) == 0
    assert eu_stats["calls"]["delete"] == 1  # the failed transcript made room
    for index in range(3):
        (transcript,) = eu.transcripts(f"eu-{index}")
        stored = system.store / f"eu-{index}" / f"{transcript['id']}.json"
        assert stored.read_bytes() == eu.data(transcript["id"])

    jobs = requests.get(
        f"{system.receiver_url}/api/v1/jobs", params={"workspace": "eu"}, headers=TOKEN
    ).json()["jobs"]
    assert sorted(job["recording_id"] for job in jobs) == [
        "eu-0",
        "eu-1",
        "eu-2",
        "eu-celery",
        "eu-full",
    ]
    creates = by_workspace(
        system.receiver_url,
        "recall_transcribe_recall_requests_total",
        endpoint="create",
        status="201",
    )
    assert creates == {"default": 3, "eu": 5}


def test_the_single_workspace_settings_still_stand_alone(redis_url: str, tmp_path: Path) -> None:
    settings = load_settings(
        REDIS_URL=redis_url,
        RECALL_API_KEY="k",
        RECALL_WEBHOOK_SECRET=SECRET,
        TRANSCRIPTS_STORE=str(tmp_path),
    )
    assert list(settings.workspaces) == ["default"]
