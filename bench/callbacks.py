"""Callbacks: how soon a persisted transcript's callback arrives, how many deliveries a worker
process makes per second, and what a receiver down for 30 s gets once it is back."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.pipeline import start_system
from harness import deliver_recordings_done, free_port, wait_for
from tasks import keys
from tasks.callbacks.deliveries import Deliveries
from tasks.callbacks.model import Delivery, destination

SECRET = "whsec_YmVuY2gtY2FsbGJhY2stc2VjcmV0"
LOOPBACK = "127.0.0.1/32"


@dataclass
class Sink:
    """A loopback HTTP receiver that answers 200 and notes when each event arrived."""

    port: int
    arrivals: dict[str, float] = field(default_factory=dict)  # webhook-id -> first arrival
    requests: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.requests += 1
                sink.arrivals.setdefault(self.headers["webhook-id"], time.time())
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def latency(workdir: Path, jobs: int) -> dict[str, Any]:
    """`jobs` recordings, one at a time: from the job marked done (its transcript persisted) to
    its callback's arrival."""
    sink = Sink(free_port())
    sink.start()
    system = start_system(
        workdir, CALLBACK_URLS=sink.url, CALLBACK_SECRET=SECRET, CALLBACK_ALLOWED_NETWORKS=LOOPBACK
    )
    try:
        ids = [f"cb-{index}" for index in range(jobs)]
        system.emulator.recordings(ids)
        delays: list[float] = []
        for recording_id in ids:
            deliver_recordings_done(system.receiver_url, [recording_id])
            wait_for(lambda: len(sink.arrivals) >= len(delays) + 1, 30, what="the callback")
            job_id = system.jobs(recording_id=recording_id)[0]["id"]
            done_at = float(system.redis.hget(keys.job(job_id), "updated_at") or 0)
            delays.append(max(sink.arrivals.values()) - done_at)
    finally:
        system.stop()
        sink.stop()
    delays.sort()
    return {
        "jobs": jobs,
        "persisted -> delivered p50 ms": round(statistics.median(delays) * 1000, 1),
        "p99 ms": round(delays[int(0.99 * (len(delays) - 1))] * 1000, 1),
    }


def throughput(workdir: Path, deliveries: int) -> dict[str, Any]:
    """`deliveries` due at once, one worker process (CALLBACK_THREADS threads), one receiver on
    loopback: deliveries per second."""
    sink = Sink(free_port())
    sink.start()
    system = start_system(
        workdir,
        workers=0,
        CALLBACK_PER_DESTINATION="64",
        CALLBACK_SECRET=SECRET,
        CALLBACK_ALLOWED_NETWORKS=LOOPBACK,
    )
    try:
        store = Deliveries(system.redis, [0.0, 5.0], 64, 3600)
        for index in range(deliveries):
            store.create(
                Delivery(
                    id=f"d-{index}",
                    job_id=f"j-{index}",
                    event_id=f"msg_{index}",
                    url=sink.url,
                    destination=destination(sink.url),
                    body='{"type": "job.done"}',
                )
            )
        started = time.monotonic()
        system.start_worker("w1", wait=False)
        wait_for(lambda: len(sink.arrivals) >= deliveries, 120 + deliveries / 10, what="delivered")
        seconds = time.monotonic() - started  # the worker's start-up included
    finally:
        system.stop()
        sink.stop()
    return {
        "deliveries": deliveries,
        "seconds (worker start included)": round(seconds, 1),
        "deliveries/s, one worker process": round(deliveries / seconds, 1),
    }


def receiver_down(workdir: Path, jobs: int, down_s: float) -> dict[str, Any]:
    """`jobs` recordings whose callback receiver refuses connections for `down_s` and then comes
    back: every event delivered, and the duplicates (only a lost answer may cause one)."""
    sink = Sink(free_port())
    schedule = "0,5,60,300"  # Svix's first steps, the rest of the day cut short
    system = start_system(
        workdir,
        CALLBACK_URLS=sink.url,
        CALLBACK_RETRY_SCHEDULE_S=schedule,
        CALLBACK_SECRET=SECRET,
        CALLBACK_ALLOWED_NETWORKS=LOOPBACK,
    )
    try:
        seconds = system.persist_all([f"down-{index}" for index in range(jobs)])
        time.sleep(max(0.0, down_s - seconds))
        back = time.monotonic()
        sink.start()
        wait_for(lambda: len(sink.arrivals) >= jobs, 600, what="every event delivered")
        seconds_after = time.monotonic() - back
    finally:
        system.stop()
        sink.stop()
    return {
        "jobs": jobs,
        "receiver down (s)": down_s,
        "schedule (s)": schedule,
        "events delivered": len(sink.arrivals),
        "requests received": sink.requests,
        "duplicates": sink.requests - len(sink.arrivals),
        "seconds from back to all delivered": round(seconds_after, 1),
    }
