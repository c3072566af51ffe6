"""What the tests share beyond harness/: the pipeline run in-process step by step on a real Redis
(the Redis tier), the queues read back, settings changed, raw socket hosts."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from emulator.config import EmulatorConfig
from emulator.server import KeepAliveHandler, create_emulator
from harness import API_KEY, SECRET, EmulatorHandle, free_port, wait_for
from tasks.jobs.record import JobRecord
from tasks.jobs.sending import Message
from tasks.jobs.states import Step
from tasks.messages import step_message
from tasks.names import DEFAULT, EVENTS_QUEUE, PIPELINE_QUEUE, STEP_TASKS
from tasks.outcomes import Outcome, Result
from tasks.pipeline import Pipeline
from tasks.settings import load_settings

QUICK_EMULATOR = ("--processing-s", "0.2", "--retry-scale", "0.01", "--page-size", "4")
FAST_RECOVERY = {
    "JOB_STEP_LEASE_S": "3",
    "INBOX_RESEND_S": "3",
    "SWEEP_INTERVAL_S": "0.2",
    "CELERY_VISIBILITY_TIMEOUT_S": "5",
}


@dataclass
class Harness:
    """The pipeline with a real dispatcher on the tests' Redis: steps are sent as real messages
    onto the pipeline queue, and run by hand, as a worker would."""

    pipeline: Pipeline
    redis: redis.Redis

    def queued(self) -> list[tuple[Step, str, str]]:
        """The step messages in the queue, oldest first: (step, job id, task id)."""
        raw = cast(list[bytes], self.redis.lrange(PIPELINE_QUEUE, 0, -1))
        return [_parsed(message) for message in reversed(raw)]

    @property
    def enqueued(self) -> list[tuple[Step, str]]:
        return [(step, job_id) for step, job_id, _ in self.queued()]

    def clear(self) -> None:
        """Lose every queued message (a crash, a purge)."""
        self.redis.delete(PIPELINE_QUEUE)

    def drain(self, limit: int = 50) -> list[Result]:
        """Take queued messages in order and run them, as a worker would; their results."""
        results = []
        while limit:
            message = cast(bytes | None, self.redis.rpop(PIPELINE_QUEUE))
            if message is None:
                break
            step, job_id, task_id = _parsed(message)
            results.append(self.pipeline.run_step(step, job_id, task_id))
            limit -= 1
        return results

    def submit(
        self,
        recording_id: str,
        provider: dict[str, Any] | None = None,
        key: str | None = None,
        workspace: str = DEFAULT,
    ) -> str:
        """Start a job (its create is queued); its id."""
        job_id, created = self.pipeline.dispatch.submit(
            recording_id, provider, None, key, workspace=workspace
        )
        assert created
        return job_id

    def run(self, step: Step, job_id: str) -> Result:
        """Send `step` for the job as the sweeper would, and run it at once."""
        body, task_id = step_message(step, job_id, "")
        sent = self.pipeline.jobs.send([Message(job_id, step, task_id, body)], redrive=True)
        self.redis.lrem(PIPELINE_QUEUE, 1, body)
        return self.pipeline.run_step(step, job_id, task_id if sent else "never-sent")


def _parsed(message: bytes) -> tuple[Step, str, str]:
    envelope = json.loads(message)
    args = json.loads(base64.b64decode(envelope["body"]))[0]
    step = Step(next(s for s, name in STEP_TASKS.items() if name == envelope["headers"]["task"]))
    return step, args[0], envelope["headers"]["id"]


def start(harness: Harness, emulator: EmulatorHandle, recording_id: str = "r1") -> str:
    emulator.recording(recording_id)
    return harness.submit(recording_id)


def state(harness: Harness, job_id: str) -> JobRecord:
    record = harness.pipeline.jobs.record(job_id)
    assert record is not None
    return record


def run(harness: Harness, step: Step, job_id: str) -> Outcome:
    """Send `step` for the job as the sweeper would, run it as a worker would: its outcome."""
    return harness.run(step, job_id).outcome


def outcomes(results: list[Result]) -> list[Outcome]:
    return [result.outcome for result in results]


def wait_transcript_done(emulator: EmulatorHandle, recording_id: str) -> None:
    wait_for(
        lambda: all(t["status"]["code"] == "done" for t in emulator.transcripts(recording_id)),
        10,
        what="emulator finished processing",
    )


def job_whose_transcript_fails(harness: Harness, emulator: EmulatorHandle) -> tuple[str, str]:
    """A job on r1 whose transcript Recall fails (provider_connection_failed): (job, transcript)."""
    emulator.recording("r1")
    emulator.fault(target="transcript", action="fail", sub_code="provider_connection_failed")
    job_id = harness.submit("r1")
    harness.drain()
    transcript_id = state(harness, job_id).transcript_id
    assert transcript_id is not None
    return job_id, transcript_id


@contextmanager
def serving_emulator(**config: Any) -> Iterator[EmulatorHandle]:
    """An emulator served in-process on a free loopback port, `config` over the tests' own."""
    port = free_port()
    settings: dict[str, Any] = {
        "api_key": API_KEY,
        "webhook_secret": SECRET,
        "processing_s": 0.05,
        "retry_scale": 0.01,
        "page_size": 3,
        "quotas": "none",  # this tier injects its 429s one by one
    }
    emulator_config = EmulatorConfig(public_url=f"http://127.0.0.1:{port}", **settings | config)
    app = create_emulator(emulator_config)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=KeepAliveHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    emulator = app.extensions["emulator"]
    try:
        yield EmulatorHandle(emulator_config.public_url, emulator.state)
    finally:
        server.shutdown()
        emulator.scheduler.stop()


def queued_events(rclient: redis.Redis) -> list[dict[str, object]]:
    """The events waiting in the ingest queue, decoded from their Celery messages."""
    messages = [json.loads(raw) for raw in rclient.lrange(EVENTS_QUEUE, 0, -1)]
    return [json.loads(json.loads(base64.b64decode(m["body"]))[0][0]) for m in messages]


def serve_connections(
    listener: socket.socket,
    stop: threading.Event,
    handle: Callable[[socket.socket], None],
    opened: list[socket.socket] | None = None,
) -> None:
    """In the background, accept connections on `listener` until `stop` (or until it is closed),
    each handled by `handle` on a thread of its own and kept in `opened` if given."""

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            if opened is not None:
                opened.append(conn)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def reconfigure(settings: Any, **changes: Any) -> Any:
    """A validated copy of `settings` with some values changed."""
    return load_settings(**{**dict(settings), **changes})


def by_workspace(receiver_url: str, name: str, **labels: str) -> dict[str, float]:
    """The samples of metric `name` with `labels` that the receiver's /metrics shows, by
    workspace."""
    text = requests.get(f"{receiver_url}/metrics", timeout=5).text
    return {
        sample.labels["workspace"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    }
