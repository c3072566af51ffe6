"""`recall-transcribe up`: every process of the system on one machine, stopped together."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import redis

from tasks.settings import ConfigError, Settings


class Ports(NamedTuple):
    receiver: int = 8000
    emulator: int = 8500
    flower: int = 5555


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _start_redis(url: str) -> subprocess.Popen[bytes]:
    parsed = urlparse(url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise ConfigError(
            f"no Redis answers at {url}, and it is not a local address to start one on"
        )
    server = shutil.which("redis-server")
    if server is None:
        raise ConfigError(f"no Redis answers at {url} and redis-server is not installed")
    data_dir = Path("data/redis").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(parsed.port or 6379),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not _redis_answers(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise ConfigError(f"could not start redis-server for {url}")
        time.sleep(0.1)
    return proc


def run_all(settings: Settings, ports: Ports) -> int:
    """Start Redis (if needed), the emulator (without an API key), receiver, worker and Flower."""
    env = dict(os.environ)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    if not _redis_answers(settings.REDIS_URL):
        procs.append(("redis", _start_redis(settings.REDIS_URL)))
    cli = [sys.executable, "-m", "recall_transcribe"]
    webhook_url = f"http://127.0.0.1:{ports.receiver}/webhooks/recall"
    if settings.RECALL_API_KEY is None:
        if not settings.webhook_secrets:
            env["RECALL_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        env["RECALL_API_KEY"] = "emulator"
        env["RECALL_API_BASE_URL"] = f"http://127.0.0.1:{ports.emulator}"
        env.setdefault("RECALL_POLL_INITIAL_S", "10")
        procs.append(
            (
                "emulator",
                subprocess.Popen(
                    [*cli, "emulator", "--port", str(ports.emulator), "--webhook-url", webhook_url],
                    env=env,
                ),
            )
        )
    procs.append(
        ("receiver", subprocess.Popen([*cli, "receiver", "--port", str(ports.receiver)], env=env))
    )
    procs.append(("worker", subprocess.Popen([*cli, "worker"], env=env)))
    procs.append(
        ("flower", subprocess.Popen([*cli, "flower", "--port", str(ports.flower)], env=env))
    )
    _banner(settings, ports, emulated=settings.RECALL_API_KEY is None)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, proc in procs:
                if proc.poll() is not None:
                    print(
                        f"recall-transcribe up: {name} exited ({proc.returncode}); stopping",
                        file=sys.stderr,
                    )
                    stopping = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for _, proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for _, proc in reversed(procs):
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0


def _banner(settings: Settings, ports: Ports, emulated: bool) -> None:
    lines = [
        "",
        "recall-transcribe is up:",
        f"  receiver  http://127.0.0.1:{ports.receiver}/webhooks/recall",
        f"  flower    http://127.0.0.1:{ports.flower}",
        f"  store     {Path(settings.TRANSCRIPTS_STORE).resolve()}",
    ]
    if emulated:
        lines += [
            f"  emulator  http://127.0.0.1:{ports.emulator} (no RECALL_API_KEY: emulated Recall)",
            "",
            "Finish a recording (the emulator sends a signed recording.done):",
            f"  curl -s -X POST http://127.0.0.1:{ports.emulator}/_emulator/recordings",
            "Then: recall-transcribe jobs list",
        ]
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)
