"""Flower, the dashboard, follows a job: each step a named task showing the job and recording,
and a job's failure or retry as its step's task state."""

from __future__ import annotations

import ast
import threading
from collections import Counter
from typing import Any

import redis
import requests
from celery import Celery

from harness import System, free_port, http_ready, recording_done, signed, wait_for
from tasks.jobs.states import State
from tasks.jobs.store import JobStore
from tasks.keys import KOMBU_UNACKED
from tasks.names import PIPELINE_QUEUE

AUTH = ("ops", "flower-password")


def test_flower_lists_each_step_of_a_job_with_its_ids_linked_to_its_root(
    start_system: Any,
) -> None:
    system: System = start_system(workers=1, FLOWER_BASIC_AUTH=":".join(AUTH))
    port = free_port()
    system.start("flower", ["flower", "--port", str(port)])
    api = f"http://127.0.0.1:{port}/api"
    wait_for(http_ready(f"{api}/workers"), 30, what="flower up")
    assert requests.get(f"{api}/tasks", timeout=5).status_code == 401

    def events_on() -> bool:  # Flower turns the workers' task events on when it starts
        workers = requests.get(f"{api}/workers", auth=AUTH, timeout=5).json()
        return any(w.get("stats") for w in workers.values()) if workers else False

    wait_for(events_on, 30, what="the worker seen by Flower")
    url = f"{system.receiver_url}/webhooks/recall"
    sent: list[str] = []

    def a_job_followed() -> dict[str, dict[str, Any]]:
        """Flower turns task events on every few seconds: finish recordings until it saw one's
        steps. Returns that job's steps by task name."""
        recording_id = f"fl-{len(sent)}"
        system.emulator.recording(recording_id)
        body, headers = signed(recording_done(recording_id))
        assert requests.post(url, data=body, headers=headers, timeout=5).status_code == 200
        sent.append(recording_id)
        tasks = requests.get(f"{api}/tasks", auth=AUTH, timeout=5).json().values()
        done = [t for t in tasks if t.get("state") == "SUCCESS"]
        for recording_id in sent:
            mine = [t for t in done if recording_id in (t.get("args") or "")]
            by_name = {t["name"]: t for t in mine if t["name"] != "recall.ingest_event"}
            started = [t for t in mine if "recording.done" in (t.get("args") or "")]
            if started:
                by_name["recording.done"] = started[0]
            if {"recall.create_transcript", "recall.fetch_and_persist", "recording.done"} <= set(
                by_name
            ):
                return by_name
        return {}

    seen = wait_for(a_job_followed, 60, interval=0.5, what="a job's steps in Flower")
    create, fetch = seen["recall.create_transcript"], seen["recall.fetch_and_persist"]
    job_id = create["result"].split()[1]
    assert job_id in create["args"] and job_id in fetch["args"]
    ingest = seen["recording.done"]  # the ingest task of the recording.done that started it
    assert create["parent_id"] == ingest["uuid"] == create["root_id"]  # linked: its child


class TaskEvents:
    """Every event the workers send, in order, captured by a thread of the test's own."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery(broker=broker_url)
        self.seen: list[dict[str, Any]] = []
        self.receiver: Any = None
        threading.Thread(target=self._capture, daemon=True).start()

    def _capture(self) -> None:
        with self.app.connection_for_read() as connection:
            self.receiver = self.app.events.Receiver(connection, handlers={"*": self.seen.append})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        self.receiver.should_stop = True

    def tasks(self, name: str, recording_id: str) -> list[str]:
        """Ids of the tasks of `name` for the recording's job, in the order they were taken."""
        return [
            e["uuid"]
            for e in self.seen
            if e["type"] == "task-received"
            and e["name"] == name
            and ast.literal_eval(e["args"])[1] == recording_id
        ]

    def job_id(self, recording_id: str) -> str:
        uuid = self.tasks("recall.create_transcript", recording_id)[0]
        received = next(e for e in self.seen if e.get("uuid") == uuid)
        return str(ast.literal_eval(received["args"])[0])

    def ended(self, uuid: str) -> dict[str, Any] | None:
        """The event that ended the task: task-succeeded, task-failed or task-retried."""
        ends = ("task-succeeded", "task-failed", "task-retried")
        return next((e for e in self.seen if e.get("uuid") == uuid and e["type"] in ends), None)

    def states(self, name: str, recording_id: str) -> list[str]:
        ended = [self.ended(uuid) for uuid in self.tasks(name, recording_id)]
        return [e["type"] if e else "running" for e in ended]


def test_a_failed_job_is_a_failed_task_and_a_retrying_one_a_retried_task_sent_once(
    start_system: Any,
) -> None:
    """In Flower and in the workers' events: a step that fails its job is FAILURE naming the
    error code, a step that leaves its job to retry after an error is RETRY, and the RETRY sends
    nothing (each task taken once, one create at Recall, the job done after its retries)."""
    system: System = start_system(workers=0, FLOWER_BASIC_AUTH=":".join(AUTH))
    events = TaskEvents(system.env["REDIS_URL"])
    port = free_port()
    system.start("flower", ["flower", "--port", str(port)])
    api = f"http://127.0.0.1:{port}/api"
    wait_for(http_ready(f"{api}/workers"), 30, what="flower up")
    system.start_worker("w1", "-E")  # task events from the start: none missed
    wait_for(lambda: any(e["type"] == "worker-heartbeat" for e in events.seen), 10)

    system.emulator.recording("fl-ok")
    system.emulator.recording("fl-flaky")
    system.emulator.fault(
        target="create", action="status", status=500, times=2, recording_id="fl-flaky"
    )
    for recording_id in ("fl-ok", "fl-gone", "fl-flaky"):  # Recall knows no fl-gone: 404
        assert system.post(recording_done(recording_id)).status_code == 200

    def finished() -> bool:
        fetched = [events.states("recall.fetch_and_persist", r) for r in ("fl-ok", "fl-flaky")]
        gone = events.states("recall.create_transcript", "fl-gone")
        return fetched == [["task-succeeded"]] * 2 and bool(gone) and "running" not in gone

    wait_for(finished, 60, interval=0.2, what="three jobs to end")
    create, fetch = "recall.create_transcript", "recall.fetch_and_persist"
    gone_job = events.job_id("fl-gone")
    assert events.states(create, "fl-gone") == ["task-failed"]
    failed = events.ended(events.tasks(create, "fl-gone")[0])
    assert failed is not None
    assert f"JobFailed('job {gone_job} failed: not_found: " in failed["exception"]
    assert events.states(create, "fl-flaky") == ["task-retried"] * 2 + ["task-succeeded"]
    retried = [events.ended(uuid) for uuid in events.tasks(create, "fl-flaky")[:2]]
    assert all(
        "JobRetrying(" in e["exception"] and "HTTP 500" in e["exception"] for e in retried if e
    )
    assert events.states(create, "fl-ok") == events.states(fetch, "fl-ok") == ["task-succeeded"]

    received = Counter(e["uuid"] for e in events.seen if e["type"] == "task-received")
    assert received and set(received.values()) == {1}  # no task was sent, or delivered, twice
    assert system.emulator.stats()["created_by_recording"]["fl-flaky"] == 1
    client = redis.Redis.from_url(system.env["REDIS_URL"])
    jobs = JobStore(client, 10)
    assert [
        getattr(jobs.record(events.job_id(r)), "state", None)
        for r in ("fl-ok", "fl-flaky", "fl-gone")
    ] == [State.DONE, State.DONE, State.FAILED]
    wait_for(
        lambda: client.hlen(KOMBU_UNACKED) == client.llen(PIPELINE_QUEUE) == 0, 10
    )  # all acked
    events.stop()

    def shown(state: str) -> dict[str, dict[str, Any]]:
        params: dict[str, str | int] = {"state": state, "limit": 100}
        found: dict[str, dict[str, Any]] = requests.get(
            f"{api}/tasks", params=params, auth=AUTH, timeout=5
        ).json()
        return found

    flower_failed = wait_for(lambda: shown("FAILURE"), 10, what="Flower's failed tasks")
    assert list(flower_failed) == [failed["uuid"]]
    assert "not_found" in flower_failed[failed["uuid"]]["exception"]
    flower_retried = wait_for(lambda: shown("RETRY"), 10, what="Flower's retried tasks")
    assert sorted(flower_retried) == sorted(events.tasks(create, "fl-flaky")[:2])
