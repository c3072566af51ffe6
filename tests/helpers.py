"""Builders the tests (and benchmarks) share: ports, signed webhooks, waiting, processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis
import requests
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_dGhpcyBpcyBhbm90aGVyIHNlY3JldCBrZXk="
T = TypeVar("T")


def command() -> list[str]:
    """How tests run `recall-transcribe` as a process: the console script RECALL_TRANSCRIBE_BIN
    names when set (CI: the built wheel, installed in an environment of its own, so the processes
    under test are the ones users deploy), else this interpreter's module (the checkout)."""
    installed = os.environ.get("RECALL_TRANSCRIBE_BIN")
    return [installed] if installed else [sys.executable, "-m", "recall_transcribe"]


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        last = result
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what or condition} (last: {last!r})"
    )


def recording_done(recording_id: str, bot_id: str | None = None) -> dict[str, Any]:
    return {
        "event": "recording.done",
        "data": {
            "data": {"code": "done", "sub_code": None, "updated_at": "2025-07-17T00:00:00Z"},
            "recording": {"id": recording_id, "metadata": {}},
            "bot": {"id": bot_id or str(uuid.uuid4()), "metadata": {}},
        },
    }


def transcript_event(
    name: str,
    recording_id: str,
    transcript_id: str,
    metadata: dict[str, Any] | None = None,
    sub_code: str | None = None,
) -> dict[str, Any]:
    event = recording_done(recording_id)
    event["event"] = name
    event["data"]["data"]["sub_code"] = sub_code
    event["data"]["transcript"] = {"id": transcript_id, "metadata": metadata or {}}
    return event


def signed(
    event: dict[str, Any] | bytes,
    secret: str = SECRET,
    msg_id: str | None = None,
    timestamp: datetime | None = None,
    legacy: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """A webhook body and the headers Recall would send with it."""
    body = event if isinstance(event, bytes) else json.dumps(event).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    when = timestamp or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, when, body.decode())
    prefix = "svix" if legacy else "webhook"
    return body, {
        "Content-Type": "application/json",
        f"{prefix}-id": msg_id,
        f"{prefix}-timestamp": str(int(when.timestamp())),
        f"{prefix}-signature": signature,
    }


class Process:
    """A `recall-transcribe` subcommand running as a real process, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [*command(), *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group (a worker's pool included)."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def redis_answers(url: str) -> Callable[[], bool]:
    client = redis.Redis.from_url(url)

    def check() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    return check


def http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return requests.get(url, timeout=1).status_code < 500
        except requests.RequestException:
            return False

    return check


def reconfigure(settings: Any, **changes: Any) -> Any:
    """A validated copy of `settings` with some values changed."""
    from tasks.settings import load_settings

    return load_settings(**{**dict(settings), **changes})
