"""A job's `source`: what started it, set when it is created and never changed by a later
submission of the same job from elsewhere (the first source wins)."""

from __future__ import annotations

import json

import pytest
from celery import Celery

from harness import recording_done
from receiver.app import create_app
from tasks import keys
from tasks.celery_tasks import register
from tasks.events import parse_event
from tasks.inbox import Inbox
from tasks.names import SUBMIT_TASK
from tasks.settings import Settings
from tests.helpers import Harness, reconfigure

AUTH = {"Authorization": "Bearer token-1"}


def _source(harness: Harness, job_id: str) -> str:
    job = harness.pipeline.jobs.record(job_id)
    assert job is not None
    return job.view().source


def _posted(settings: Settings, recording_id: str) -> dict[str, str]:
    client = create_app(reconfigure(settings, API_TOKENS="token-1")).test_client()
    answer = client.post("/api/v1/jobs", json={"recording_id": recording_id}, headers=AUTH)
    assert answer.status_code == 202
    shown = client.get(f"/api/v1/jobs/{answer.json['id']}", headers=AUTH)  # type: ignore[index]
    return shown.json  # type: ignore[return-value]


def _ingested(harness: Harness, recording_id: str) -> str:
    result = harness.pipeline.ingest(parse_event(recording_done(recording_id)))
    assert result.job_id
    return result.job_id


def test_jobs_api_post_is_api(settings: Settings, harness: Harness) -> None:
    assert _posted(settings, "r1")["source"] == "api"


def test_webhook_is_webhook(harness: Harness) -> None:
    assert _source(harness, _ingested(harness, "r1")) == "webhook"


def test_submit_task_is_task(harness: Harness) -> None:
    app = Celery("sources", set_as_current=False)
    register(app, harness.pipeline, Inbox(harness.redis, 60, 60), lambda: None)
    job_id = app.tasks[SUBMIT_TASK](recording_id="r1")
    assert _source(harness, job_id) == "task"


def test_cli_enqueue_is_api(
    settings: Settings, harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    from recall_transcribe.cli import main

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", settings.REDIS_URL)
        patch.setenv("RECALL_API_BASE_URL", settings.RECALL_API_BASE_URL)
        patch.setenv("RECALL_API_KEY", "test-key")
        assert main(["enqueue", "r1"]) == 0
    job_id = capsys.readouterr().out.split()[1]
    assert _source(harness, job_id) == "api"


def test_first_source_wins(settings: Settings, harness: Harness) -> None:
    """Without a key, the API names the recording's job, as recording.done does."""
    by_webhook = _ingested(harness, "r1")
    shown = _posted(settings, "r1")
    assert (shown["id"], shown["source"]) == (by_webhook, "webhook")

    by_api = _posted(settings, "r2")
    assert _ingested(harness, "r2") == by_api["id"]
    assert _source(harness, by_api["id"]) == "api"


@pytest.mark.parametrize(
    ("metadata", "source"),
    [
        ({"source": "recording.done"}, "webhook"),
        ({"source": "reconcile"}, "reconcile"),
        ({"team": "a"}, "api"),
        ({"source": "somewhere"}, "api"),
    ],
)
def test_records_from_before_the_field_say_what_their_metadata_says(
    harness: Harness, metadata: dict[str, str], source: str
) -> None:
    job_id, _ = harness.pipeline.jobs.submit("r1", {"recallai_async": {}}, metadata)
    harness.redis.hdel(keys.job(job_id), "source")
    harness.redis.hset(keys.job(job_id), "metadata", json.dumps(metadata))
    assert _source(harness, job_id) == source
