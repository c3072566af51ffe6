"""Acknowledged means replicated: with REDIS_MIN_REPLICAS, a webhook is answered 2xx, and a
create may happen, only once a replica has the write (a primary and a replica of the test's own)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness import EmulatorHandle, Process, recording_done, signed, start_redis, wait_for
from receiver.app import create_app
from tasks import keys
from tasks.jobs.errors import ErrorCode
from tasks.jobs.states import State, Step
from tasks.jobs.store import JobStore
from tasks.outcomes import Outcome
from tasks.replicas import NotReplicated, replicated
from tasks.settings import Settings
from tests.helpers import Harness, reconfigure, run, start, state

pytestmark = pytest.mark.redis


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[tuple[str, Process]]:
    """A primary and its replica; yields the primary's URL and the replica's process."""
    for name in ("primary", "replica"):
        (tmp_path / name).mkdir()
    main, url = start_redis(tmp_path / "primary", "--repl-diskless-sync-delay", "0")
    port = url.rsplit(":", 1)[1].split("/")[0]
    replica, replica_url = start_redis(tmp_path / "replica", "--replicaof", "127.0.0.1", port)
    link = redis.Redis.from_url(replica_url)
    wait_for(lambda: link.info("replication")["master_link_status"] == "up", 10, what="in sync")
    yield url, replica
    for process in (replica, main):
        process.kill()


def on_primary(harness: Harness, url: str) -> JobStore:
    """The harness's job store, moved to the primary at `url`, with REDIS_MIN_REPLICAS=1."""
    jobs = harness.pipeline.jobs
    jobs.redis = redis.Redis.from_url(url)
    jobs._script = jobs.redis.register_script(jobs._script.script)
    jobs.min_replicas = 1
    return jobs


def test_a_webhook_is_acknowledged_only_once_a_replica_has_it(
    primary: tuple[str, subprocess.Popen[bytes]], settings: Settings
) -> None:
    url, replica = primary
    client = create_app(reconfigure(settings, REDIS_URL=url, REDIS_MIN_REPLICAS=1)).test_client()
    body, headers = signed(recording_done("r1"))
    assert client.post("/webhooks/recall", data=body, headers=headers).status_code == 200
    replica.kill()
    other, other_headers = signed(recording_done("r2"))
    answer = client.post("/webhooks/recall", data=other, headers=other_headers)
    assert answer.status_code == 503  # in the primary, maybe lost in a failover: Recall resends
    again = client.post("/webhooks/recall", data=other, headers=other_headers)
    assert again.status_code == 503  # a duplicate waits for the replica too
    assert json.loads(answer.data)["error"]


def test_no_create_happens_until_a_replica_knows_it_may(
    primary: tuple[str, subprocess.Popen[bytes]],
    harness: Harness,
    emulator: EmulatorHandle,
    settings: Settings,
) -> None:
    url, replica = primary
    harness.pipeline.settings = reconfigure(settings, MAX_STEP_RETRIES=1)
    jobs = on_primary(harness, url)
    job_id = start(harness, emulator)
    replica.kill()
    for _ in range(3):  # held back: a wait, no budget spent (one is allowed)
        assert run(harness, Step.CREATE, job_id) == Outcome.RETRY
    assert emulator.stats()["calls"].get("create", 0) == 0
    assert state(harness, job_id).state == State.CREATING
    assert state(harness, job_id).failures == {}  # nothing failed: a later error has its budget
    with pytest.raises(NotReplicated):
        jobs.start_create(state(harness, job_id), 0)


def test_a_job_the_api_accepts_is_on_a_replica_first(
    primary: tuple[str, subprocess.Popen[bytes]], settings: Settings
) -> None:
    url, replica = primary
    configured = reconfigure(settings, REDIS_URL=url, REDIS_MIN_REPLICAS=1, API_TOKENS="t")
    client = create_app(configured).test_client()
    token = {"Authorization": "Bearer t"}
    accepted = client.post("/api/v1/jobs", json={"recording_id": "r1"}, headers=token)
    assert accepted.status_code == 202
    port = redis.Redis.from_url(url).info("replication")["slave0"]["port"]
    assert redis.Redis(port=port).exists(keys.job(accepted.json["id"]))
    replica.kill()
    refused = client.post("/api/v1/jobs", json={"recording_id": "r2"}, headers=token)
    assert refused.status_code == 503  # maybe lost in a failover: the client asks again
    jobs = JobStore(redis.Redis.from_url(url), 10)
    assert jobs.fail(accepted.json["id"], ErrorCode.INTERNAL, "gave up")
    retried = client.post(f"/api/v1/jobs/{accepted.json['id']}/retry", headers=token)
    assert retried.status_code == 503  # a retry, too, is answered 202 only once replicated


def test_no_archived_transcript_is_deleted_until_a_replica_knows_the_archive(
    primary: tuple[str, subprocess.Popen[bytes]],
    harness: Harness,
    emulator: EmulatorHandle,
    settings: Settings,
) -> None:
    url, replica = primary
    harness.pipeline.settings = reconfigure(settings, LIMIT_POLICY="archive-oldest")
    jobs = on_primary(harness, url)
    emulator.recording("r1")
    owner = harness.submit("r1", {"assembly_ai_async": {}})  # a job of ours, failed since
    assert jobs.fail(owner, ErrorCode.INTERNAL, "gave up")
    emulator.seed("r1", 1, "done", metadata={"job_id": owner})  # the oldest: archive-oldest's pick
    emulator.seed("r1", 9, "done")
    job_id = harness.submit("r1")
    assert run(harness, Step.CREATE, job_id) == Outcome.REMEDIATE
    replica.kill()
    for _ in range(2):  # archived to the store, but the mark may not survive a failover
        assert run(harness, Step.REMEDIATE, job_id) == Outcome.RETRY
    assert all(t["status"]["code"] == "done" for t in emulator.transcripts("r1"))


def test_a_write_whose_script_is_missing_on_the_server_it_reached_runs_again(
    rclient: redis.Redis,
) -> None:
    """A pipeline loads its scripts before it runs; a retry that reconnected to another server
    (a failover) finds none there: the write runs again, loading them, once."""
    script = rclient.register_script("return redis.call('INCR', KEYS[1])")
    calls = []

    def write(pipe: redis.client.Pipeline) -> None:
        calls.append(1)
        if len(calls) == 1:  # as the promoted primary answers a script it never saw
            pipe.execute_command("EVALSHA", "0" * 40, 1, "counter")
        else:
            script(keys=["counter"], client=pipe)

    assert replicated(rclient, 0, write) == 1 and len(calls) == 2
    with pytest.raises(redis.exceptions.NoScriptError):  # a second miss is not a failover's
        replicated(rclient, 0, lambda pipe: pipe.execute_command("EVALSHA", "0" * 40, 0))
