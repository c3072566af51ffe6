"""Every caller that asked for a callback gets one, and sees no one else's URL: a job holds
several callback_url destinations, added by each request that names the job (by key, by
recording, or the job recording.done started), up to MAX_CALLBACKS_PER_CALLER from each API
token, so no caller can fill the job for another; its news is stored once,
however many destinations it goes to. The jobs API, the outbox and the deliveries, on a real
Redis."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from receiver.app import create_app
from tasks import keys
from tasks.callbacks.deliveries import Deliveries
from tasks.callbacks.model import owner
from tasks.callbacks.outbox import Outbox
from tasks.jobs.errors import ErrorCode
from tasks.jobs.store import JobStore
from tasks.jobs.transitions import MAX_CALLBACKS_PER_CALLER
from tasks.settings import Settings
from tests.helpers import reconfigure

FIRST = {"Authorization": "Bearer token-1"}
SECOND = {"Authorization": "Bearer token-2"}
OPERATORS = "https://ops.example/hook?token=operator-secret"
CALLBACKS = {
    "CALLBACK_SECRET": "whsec_dGVzdA==",
    "CALLBACK_URLS": OPERATORS,
    "CALLBACK_TASK": "theirs.job_finished",
    "CALLBACK_QUEUE": "theirs",
}


@pytest.fixture
def on(settings: Settings) -> Settings:
    return reconfigure(settings, API_TOKENS="token-1,token-2", **CALLBACKS)  # type: ignore[no-any-return]


@pytest.fixture
def client(on: Settings) -> FlaskClient:
    return create_app(on).test_client()


@pytest.fixture
def jobs(on: Settings, rclient: redis.Redis) -> JobStore:
    return JobStore.from_settings(rclient, on)


@pytest.fixture
def outbox(on: Settings, rclient: redis.Redis, jobs: JobStore) -> Outbox:
    deliveries = Deliveries.from_settings(rclient, on)
    return Outbox(jobs, deliveries, on.callback_urls, on.CALLBACK_TASK, on.CALLBACK_QUEUE)


def post(client: FlaskClient, headers: dict[str, str], **body: Any) -> Any:
    return client.post("/api/v1/jobs", json={"recording_id": "r1", **body}, headers=headers)


def sent_to(rclient: redis.Redis, job_id: str) -> dict[str, str]:
    """Each delivery of the job's news: its URL and the client it is shared out by."""
    found = {}
    for key in rclient.scan_iter(f"{keys.CALLBACK_PREFIX}*"):
        fields = {k.decode(): v.decode() for k, v in rclient.hgetall(key).items()}
        if fields.get("job_id") == job_id:
            found[fields["url"]] = fields["client"]
    return found


def test_every_caller_that_asked_is_called_back_and_none_sees_anothers_url(
    client: FlaskClient, jobs: JobStore, outbox: Outbox, rclient: redis.Redis
) -> None:
    """As the review reproduced it: a second request without a key for the same recording got
    the first one's job with 202, its own callback_url dropped and the first's shown to it."""
    first_url, second_url = "https://a.example/done?sig=first-secret", "https://b.example/x/s3cr3t"
    first = post(client, FIRST, callback_url=first_url)
    second = post(client, SECOND, callback_url=second_url)
    assert first.status_code == second.status_code == 202
    job_id = first.json["id"]
    assert second.json["id"] == job_id
    assert (first.json["callback_url"], second.json["callback_url"]) == (first_url, second_url)
    assert "first-secret" not in second.text
    jobs.fail(job_id, ErrorCode.TIMEOUT, "too slow")
    assert outbox.send_on() == 1
    assert sent_to(rclient, job_id) == {
        OPERATORS: "",  # CALLBACK_URLS: the operator's, paced per destination only
        first_url: owner("token-1"),
        second_url: owner("token-2"),
    }
    # its three deliveries listed on the finished job, which Redis still keeps compact
    assert rclient.object("encoding", keys.job(job_id)) == b"listpack"
    shown = client.get(f"/api/v1/jobs/{job_id}", headers=SECOND)
    listed = client.get("/api/v1/jobs", headers=SECOND)
    for answer in (shown, listed):
        for secret in ("first-secret", "s3cr3t", "operator-secret", "sig=", "token="):
            assert secret not in answer.text
    assert shown.json["callback_url"] == "https://a.example/…"
    assert sorted(c["url"] for c in shown.json["callbacks"]) == [
        "https://a.example/…",
        "https://b.example/…",
        "https://ops.example/…",
    ]


def test_the_job_recording_done_started_calls_back_whoever_asks_for_it(
    client: FlaskClient, jobs: JobStore, outbox: Outbox, rclient: redis.Redis, on: Settings
) -> None:
    started, _ = jobs.submit("r1", on.TRANSCRIPT_PROVIDER)  # as recording.done starts it
    answer = post(client, FIRST, callback_url="https://a.example/hook")
    assert answer.status_code == 202 and answer.json["id"] == started
    jobs.fail(started, ErrorCode.TIMEOUT, "too slow")
    outbox.send_on()
    assert "https://a.example/hook" in sent_to(rclient, started)


def test_a_destination_added_after_the_news_was_sent_on_still_gets_it(
    client: FlaskClient, jobs: JobStore, outbox: Outbox, rclient: redis.Redis, on: Settings
) -> None:
    """The interleaving: the outbox takes the finish and reads the job, a caller adds its URL,
    the outbox makes the deliveries it read of and is done. The new URL is not forgotten, and
    nothing goes out twice (the CALLBACK_TASK message included)."""
    job_id = post(client, FIRST, callback_url="https://a.example/hook").json["id"]
    jobs.fail(job_id, ErrorCode.TIMEOUT, "too slow")
    deliveries = Deliveries.from_settings(rclient, on)
    ((taken, attempt),) = deliveries.take_outbox()
    record = jobs.record(taken)
    assert record is not None
    assert post(client, SECOND, callback_url="https://b.example/hook").status_code == 202
    outbox._send(record)  # what it read: a.example alone
    deliveries.sent_on(taken, attempt)
    assert set(sent_to(rclient, job_id)) == {OPERATORS, "https://a.example/hook"}
    assert outbox.send_on() == 1  # the finish is back, for b.example
    assert set(sent_to(rclient, job_id)) == {
        OPERATORS,
        "https://a.example/hook",
        "https://b.example/hook",
    }
    assert rclient.zcard(keys.CALLBACKS_DUE) == 3 and rclient.llen("theirs") == 1
    assert outbox.send_on() == 0
    shown = client.get(f"/api/v1/jobs/{job_id}", headers=FIRST).json["callbacks"]
    assert len(shown) == 3


def test_one_caller_spends_only_its_own_share_of_a_jobs_callback_urls(
    client: FlaskClient, jobs: JobStore
) -> None:
    """As the review reproduced it: one token gave a job 10 URLs (the limit per job), and every
    other caller of that job was answered 409 and never called back. The limit is per caller."""
    job_id = post(client, SECOND, idempotency_key="k").json["id"]  # the victim's job, no URL yet
    for index in range(MAX_CALLBACKS_PER_CALLER):
        answer = post(client, FIRST, idempotency_key="k", callback_url=f"https://h{index}.example/")
        assert answer.status_code == 202
    again = post(client, FIRST, idempotency_key="k", callback_url="https://h1.example/")
    assert again.status_code == 202  # known already: nothing more to hold
    full = post(client, FIRST, idempotency_key="k", callback_url="https://one-more.example/")
    assert full.status_code == 409
    assert full.json["error"] == (
        f"callback_url: you gave this job {MAX_CALLBACKS_PER_CALLER} callback URLs already, "
        "the most"
    )
    for index in range(MAX_CALLBACKS_PER_CALLER):  # the other caller has its whole share
        url = f"https://victim{index}.example/"
        assert post(client, SECOND, idempotency_key="k", callback_url=url).status_code == 202
    record = jobs.record(job_id)
    assert record is not None
    held = [(d.by, d.url) for d in record.callback_urls]
    assert held.count((owner("token-2"), "https://victim0.example/")) == 1
    assert [by for by, _ in held].count(owner("token-1")) == MAX_CALLBACKS_PER_CALLER
    assert len(held) == 2 * MAX_CALLBACKS_PER_CALLER


def test_a_jobs_data_is_stored_once_however_many_destinations_it_goes_to(
    client: FlaskClient, jobs: JobStore, outbox: Outbox, rclient: redis.Redis
) -> None:
    """As the review measured it: the metadata was copied into every delivery's body."""
    metadata = {"notes": "m" * 15_000}
    for index in range(2 * MAX_CALLBACKS_PER_CALLER):
        url = f"https://h{index}.example/"
        caller = FIRST if index % 2 else SECOND
        answer = post(client, caller, idempotency_key="k", metadata=metadata, callback_url=url)
        assert answer.status_code == 202
    job_id = answer.json["id"]
    jobs.fail(job_id, ErrorCode.TIMEOUT, "too slow")
    outbox.send_on()
    assert len(sent_to(rclient, job_id)) == 2 * MAX_CALLBACKS_PER_CALLER + 1
    copies, used = 0, 0
    for key in rclient.scan_iter(f"{keys.PREFIX}callback*"):
        if rclient.type(key) == b"hash":
            copies += sum(value.count(b"m" * 15_000) for value in rclient.hvals(key))
            used += int(rclient.memory_usage(key) or 0)
    assert copies == 1
    assert used < 2 * 15_000 + (2 * MAX_CALLBACKS_PER_CALLER + 1) * 1024
    (message,) = rclient.lrange("theirs", 0, -1)
    assert json.loads(message)["headers"]["task"] == "theirs.job_finished"
