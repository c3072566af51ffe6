"""Results reach the services that asked: signed webhooks to real HTTP receivers, at least once,
never to an address they may not reach; and a Celery task for services on the same broker."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from standardwebhooks.webhooks import Webhook

from harness import System, command, free_port, recording_done, wait_for
from tasks import keys
from tasks.callbacks.model import event_id, task_id

SECRET = "whsec_Y2FsbGJhY2stc2VjcmV0LWZvci10aGUtdGVzdHM="
AUTH = {"Authorization": "Bearer test-token"}


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A real HTTP server on loopback that answers each path as a test says, and keeps every
    request it got."""

    url: str
    hits: list[Hit] = field(default_factory=list)
    answers: dict[str, list[int]] = field(default_factory=dict)  # path -> statuses, last repeats

    def on(self, path: str) -> list[Hit]:
        return [hit for hit in self.hits if hit.path == path]


def serve(host: str) -> tuple[Receiver, ThreadingHTTPServer]:
    port = free_port()
    receiver = Receiver(f"http://{host}:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            receiver.hits.append(Hit(self.path, dict(self.headers), body, time.monotonic()))
            statuses = receiver.answers.get(self.path, [200])
            status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            if status == 0:  # a receiver that answers too late
                time.sleep(3)
                status = 200
            self.send_response(status)
            if status == 302:
                self.send_header("Location", "http://127.0.0.2:9/stolen")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver, server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found, server = serve("127.0.0.1")
    yield found
    server.shutdown()


def verified(hit: Hit) -> dict[str, Any]:
    """The payload, once its Standard Webhooks signature checked out."""
    headers = {k.lower(): v for k, v in hit.headers.items()}
    payload: dict[str, Any] = Webhook(SECRET).verify(hit.body, headers)
    return payload


def webhook_ids(hits: list[Hit]) -> set[str]:
    return {hit.headers["webhook-id"] for hit in hits}


def start(start_system: Any, receiver: Receiver, **env: str) -> System:
    system: System = start_system(
        CALLBACK_SECRET=SECRET,
        CALLBACK_ALLOWED_NETWORKS="127.0.0.1/32",
        CALLBACK_RETRY_SCHEDULE_S="0,0.5,0.5",
        **env,
    )
    return system


def post_recording(system: System, recording_id: str) -> None:
    system.emulator.recording(recording_id)
    assert system.post(recording_done(recording_id)).status_code == 200


def test_every_finished_job_is_sent_signed_at_least_once_to_every_destination(
    start_system: Any, receiver: Receiver
) -> None:
    """A receiver that answers 500 and then 200 gets the event twice, with one webhook-id;
    every request carries a signature the standardwebhooks library accepts."""
    receiver.answers["/flaky"] = [500, 200]
    system = start(
        start_system,
        receiver,
        CALLBACK_URLS=f"{receiver.url}/ok,{receiver.url}/flaky",
    )
    post_recording(system, "r1")
    wait_for(lambda: len(receiver.on("/flaky")) == 2 and receiver.on("/ok"), 30, what="both")
    job = system.job_of("r1")
    assert job["state"] == "done"
    for hit in receiver.hits:
        payload = verified(hit)
        assert payload["type"] == "job.done" and payload["data"]["id"] == job["id"]
        assert payload["data"]["transcript_id"] == job["transcript_id"]
        assert "callbacks" not in payload["data"]  # no destination learns another's URL
    expected = {event_id(job["id"], 1, "done")}
    assert webhook_ids(receiver.hits) == expected  # one id, repeated by every attempt
    wait_for(lambda: {c["state"] for c in system.job_of("r1")["callbacks"]} == {"delivered"}, 10)
    callbacks = system.job_of("r1")["callbacks"]
    assert sorted(c["attempts"] for c in callbacks) == [1, 2]
    assert {c["last_status"] for c in callbacks} == {200}
    assert {c["url"] for c in callbacks} == {f"{receiver.url}/…"}  # paths may carry tokens
    metrics = requests.get(f"{system.receiver_url}/metrics", timeout=5).text
    assert 'recall_transcribe_callbacks_total{outcome="delivered"} 2.0' in metrics
    assert 'recall_transcribe_callbacks_total{outcome="retried"} 1.0' in metrics


def test_a_jobs_own_callback_follows_no_redirect_and_is_sent_again_once_asked(
    start_system: Any, receiver: Receiver, tmp_path: Path
) -> None:
    """A receiver that redirects (here towards a private address) gets no request followed:
    each attempt fails, the schedule is spent, and `callbacks retry --failed` sends it again
    once the receiver answers. (The job's view shows only where each URL goes, the same host
    here: the job's own callback is the one that is not delivered at once.)"""
    elsewhere, other = serve("127.0.0.2")  # where the redirect would lead, were it followed
    try:
        receiver.answers["/mine"] = [302]
        system = start(start_system, receiver, CALLBACK_URLS=f"{receiver.url}/all")
        system.emulator.recording("r2")

        def states() -> list[tuple[str, int, Any]]:
            shown = system.job_of("r2")["callbacks"]
            return sorted((c["state"], c["attempts"], c["last_status"]) for c in shown)

        body = {"recording_id": "r2", "callback_url": f"{receiver.url}/mine"}
        created = requests.post(
            f"{system.receiver_url}/api/v1/jobs", json=body, headers=AUTH, timeout=5
        )
        assert created.status_code == 202
        wait_for(lambda: len(receiver.on("/mine")) == 3, 30, what="three attempts")
        wait_for(lambda: states() == [("delivered", 1, 200), ("failed", 3, 302)], 10)
        assert elsewhere.hits == []
        (everyones,) = receiver.on("/all")  # told of the job, not of where else it goes
        assert "callback_url" not in verified(everyones)["data"]
        assert "/mine" not in everyones.body.decode()

        receiver.answers["/mine"] = [200]
        retried = subprocess.run(
            [*command(), "callbacks", "retry", "--failed"],
            env=system.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "1 failed callback(s) will be sent again" in retried.stdout, retried.stderr
        wait_for(lambda: states() == [("delivered", 1, 200)] * 2, 20)
        assert len(webhook_ids(receiver.on("/mine"))) == 1 and len(receiver.on("/mine")) == 4
    finally:
        other.shutdown()


def test_a_receiver_that_answers_too_late_is_cut_at_its_timeout_and_tried_again(
    start_system: Any, receiver: Receiver
) -> None:
    """CALLBACK_TIMEOUT_S (10 s by default) shortened to 1.5 s; the receiver answers after 3."""
    receiver.answers["/slow"] = [0, 200]
    system = start(
        start_system, receiver, CALLBACK_URLS=f"{receiver.url}/slow", CALLBACK_TIMEOUT_S="1.5"
    )
    post_recording(system, "r3")
    wait_for(lambda: len(receiver.on("/slow")) == 2, 40, what="a second attempt")
    first, second = receiver.on("/slow")
    assert 1.4 < second.at - first.at < 3  # the first cut at 1.5 s, not waited for
    wait_for(lambda: system.job_of("r3")["callbacks"][0]["state"] == "delivered", 10)


def test_a_failed_job_sends_job_failed(start_system: Any, receiver: Receiver) -> None:
    system = start(start_system, receiver, CALLBACK_URLS=f"{receiver.url}/ok")
    system.emulator.fault(target="transcript", action="fail", sub_code="provider_connection_failed")
    post_recording(system, "r4")
    wait_for(lambda: receiver.on("/ok"), 30, what="the callback")
    payload = verified(receiver.on("/ok")[0])
    assert payload["type"] == "job.failed"
    assert payload["data"]["error"]["code"] == "transcript_failed"


SERVICE = """
import json, os, redis
from celery import Celery

app = Celery(broker=os.environ["REDIS_URL"])
seen = redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="myservice.job_finished", bind=True)
def job_finished(self, job):
    seen.rpush("test:seen", json.dumps({"task_id": self.request.id, "job": job}))
"""


def test_a_plain_celery_worker_of_another_service_gets_each_finished_job_once(
    start_system: Any, receiver: Receiver, tmp_path: Path
) -> None:
    # No CALLBACK_SECRET: a message through our own broker is not signed, so a task needs none.
    system: System = start_system(CALLBACK_TASK="myservice.job_finished", CALLBACK_QUEUE="theirs")
    (tmp_path / "service.py").write_text(SERVICE)
    service = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "service", "worker", "-Q", "theirs", "-P", "solo"],
        cwd=tmp_path,
        env={**system.env, "PYTHONPATH": str(tmp_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for recording_id in ("c1", "c2"):
            post_recording(system, recording_id)
        client = redis.Redis.from_url(system.env["REDIS_URL"])
        wait_for(lambda: client.llen("test:seen") == 2, 60, what="both jobs at the service")
        seen = [json.loads(raw) for raw in client.lrange("test:seen", 0, -1)]
        for recording_id in ("c1", "c2"):
            job = system.job_of(recording_id)
            (got,) = [s for s in seen if s["job"]["id"] == job["id"]]
            assert got["task_id"] == task_id(event_id(job["id"], 1, "done"))
            assert got["job"]["state"] == "done" and got["job"]["recording_id"] == recording_id
        time.sleep(2)
        assert client.llen("test:seen") == 2
        assert client.zcard(keys.OUTBOX) == 0
    finally:
        service.terminate()
        service.wait(20)
