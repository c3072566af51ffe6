"""Processes the tests and benchmarks start, and stop by PID: Redis and `recall-transcribe`'s
subcommands, each in a process group of its own with its output in a log file."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis
import requests

T = TypeVar("T")


def command() -> list[str]:
    """How `recall-transcribe` runs as a process: the console script RECALL_TRANSCRIBE_BIN names
    when set (CI: the built wheel, installed in an environment of its own, so the processes under
    test are the ones users deploy), else this interpreter's module (the checkout)."""
    installed = os.environ.get("RECALL_TRANSCRIBE_BIN")
    return [installed] if installed else [sys.executable, "-m", "recall_transcribe"]


LISTEN_PORTS = range(20000, 32768)  # below Linux's ephemeral range (32768-60999 by default)


def free_port() -> int:
    """A loopback port free now, for a server about to listen on it. Chosen below the range the
    kernel hands out to outgoing connections: a port from bind(0) could be taken by one of the
    tests' many client sockets before the server bound it ("Address already in use")."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
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


class Process:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process group (a worker's pool included), as a crash would."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM the process group, without waiting for it to end."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the process group and wait for it to end (SIGKILL after `timeout`)."""
        if self.alive():
            self.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """User + system CPU of the process and its children still running."""
        total = 0.0
        for pid in [self.pid, *_children(self.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        direct = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, direct):
        found += [child, *_children(child)]
    return found


def recall_transcribe(args: list[str], env: dict[str, str], log_path: Path) -> Process:
    """A `recall-transcribe` subcommand as a real process."""
    return Process([*command(), *args], log_path, env)


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


def start_redis(directory: Path, *extra: str, port: int | None = None) -> tuple[Process, str]:
    """A redis-server of the caller's own on a free loopback port (or on `port`, to restart one),
    keeping nothing on disk unless `extra` asks for it."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir"]
    argv += [str(directory), "--appendonly", "no", *extra]
    proc = Process(argv, directory / f"redis-{port}.log")
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(redis_answers(url), 10, what="redis-server to answer")
    return proc, url
