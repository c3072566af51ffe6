"""`recall-transcribe worker`: run a Celery worker on the pipeline's queues, restarting itself
when Celery gives up on an unrecoverable error.

Why a restart in place and not a supervising parent (as rq's `WorkerPool` and dramatiq's CLI
have): kombu can fail for good while Redis restarts, Celery then logs "Unrecoverable error" and
its shutdown can hang on the broken connection. Whatever supervises the process (compose's
`restart: unless-stopped`, systemd, `recall-transcribe up`) only sees an exit, and a hung
shutdown never exits. So the worker watches its own log for that one line
(`RestartOnUnrecoverable`, a logging handler because Celery reports it nowhere else) and
`exec`s itself afresh: same PID, same arguments, nothing to forward signals through. What it
held is not lost: late acks, the due-set and the inbox re-drive it. A worker stopped by a
signal just stops. A parent process would add a second process per worker and a signal relay
for Celery's warm and cold shutdowns, to do what the exec does in one call.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

from celery.signals import worker_shutting_down

from tasks.names import QUEUES
from tasks.settings import Settings
from worker.celery_app import create_worker_app

log = logging.getLogger(__name__)


def run(settings: Settings, extra: list[str]) -> int:
    """Run the worker with `extra` passed to `celery worker`; returns its exit code."""
    app = create_worker_app(settings)
    argv = ["worker", "--loglevel=INFO", *extra]
    if not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in extra):
        argv += ["-Q", ",".join(QUEUES)]
    asked_to_stop: list[str] = []

    def on_shutdown(**kwargs: Any) -> None:
        asked_to_stop.append(kwargs["sig"])

    worker_shutting_down.connect(on_shutdown, weak=False)
    # Celery can give up on its own ("Unrecoverable error": kombu failing while Redis restarts),
    # and its shutdown after that can hang on the broken connection. Start afresh at once, as if
    # the process had been killed: late acks, the due-set and the inbox re-drive its work.
    logging.getLogger("celery.worker").addHandler(RestartOnUnrecoverable(extra))
    code: int = app.start(argv) or 0
    if asked_to_stop or code == 0:
        return code
    restart(extra, f"exit code {code}")
    return code


class RestartOnUnrecoverable(logging.Handler):
    """Restarts the worker when Celery logs that it cannot go on."""

    def __init__(self, extra: list[str]) -> None:
        super().__init__(logging.CRITICAL)
        self._extra = extra

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Unrecoverable error"):
            restart(self._extra, message)


def restart(extra: list[str], why: str) -> None:
    """Replace this process with a fresh worker (same arguments)."""
    log.critical("worker stopped (%s); restarting", why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    time.sleep(1)
    os.execv(sys.executable, [sys.executable, "-m", "recall_transcribe", "worker", *extra])
