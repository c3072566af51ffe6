"""Flower, the dashboard, follows a job: each step a named task showing the job and recording."""

from __future__ import annotations

from typing import Any

import requests

from tests.conftest import System
from tests.helpers import Process, free_port, http_ready, recording_done, signed, wait_for

AUTH = ("ops", "flower-password")


def test_flower_lists_each_step_of_a_job_with_its_ids_linked_to_its_root(
    start_system: Any,
) -> None:
    system: System = start_system(workers=1, FLOWER_BASIC_AUTH=":".join(AUTH))
    port = free_port()
    flower = Process(["flower", "--port", str(port)], system.env, system.tmp / "flower.log")
    system.processes.append(flower)
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
