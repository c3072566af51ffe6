"""`recall-transcribe up`: every process of the system on one machine, stopped together."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import redis
import requests

from tasks.connection import redis_client
from tasks.settings import ConfigError, Settings


class Ports(NamedTuple):
    receiver: int = 8000
    emulator: int = 8500
    flower: int = 5555


def _redis_answers(settings: Settings) -> bool:
    try:
        return bool(redis_client(settings).ping())
    except redis.RedisError:
        return False


def _start_redis(settings: Settings) -> subprocess.Popen[bytes]:
    url = settings.REDIS_URL
    parsed = urlparse(url)
    if settings.sentinels:
        raise ConfigError("no Redis primary answers through REDIS_SENTINELS")
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
    while not _redis_answers(settings):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise ConfigError(f"could not start redis-server for {url}")
        time.sleep(0.1)
    return proc


def run_all(settings: Settings, ports: Ports) -> int:
    """Start Redis (if needed), the emulator (without an API key), receiver, worker and Flower;
    say "ready" once the receiver and a worker answer; stop them all on SIGINT or SIGTERM (however
    `up` was started), Redis last."""
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # a script may have started us ignoring SIGINT
        signal.signal(signum, lambda *_: stopping.set())
    redis_proc = None if _redis_answers(settings) else _start_redis(settings)
    env = dict(os.environ)
    generated = _development_values(settings, ports, env)
    cli = [sys.executable, "-m", "recall_transcribe"]
    commands = {
        "receiver": ["receiver", "--port", str(ports.receiver)],
        "worker": ["worker"],
        "flower": ["flower", "--port", str(ports.flower)],
    }
    if settings.RECALL_API_KEY is None:
        webhook_url = f"http://127.0.0.1:{ports.receiver}/webhooks/recall"
        commands = {
            "emulator": ["emulator", "--port", str(ports.emulator), "--webhook-url", webhook_url],
            **commands,
        }
    apps: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for name, args in commands.items():  # own sessions: only `up` decides when they stop
            apps.append((name, subprocess.Popen([*cli, *args], env=env, start_new_session=True)))
        if _wait_ready(settings, ports, apps, stopping):
            _banner(settings, ports, env, generated)
        while not stopping.wait(0.5):
            exited = [(name, p.returncode) for name, p in apps if p.poll() is not None]
            if exited:
                print(f"recall-transcribe up: {exited[0][0]} exited; stopping", file=sys.stderr)
                break
    finally:
        for _, proc in reversed(apps):
            _stop(proc)
        if redis_proc is not None:  # last: the others may still write to it as they stop
            _stop(redis_proc)
    return 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _development_values(settings: Settings, ports: Ports, env: dict[str, str]) -> set[str]:
    """Fill in what a first run needs and has not been given; returns the names generated."""
    generated = set()
    if settings.RECALL_API_KEY is None:
        env["RECALL_API_KEY"] = "emulator"
        env["RECALL_API_BASE_URL"] = f"http://127.0.0.1:{ports.emulator}"
        env.setdefault("RECALL_POLL_INITIAL_S", "10")
        if not settings.webhook_secrets:
            env["RECALL_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(os.urandom(24)).decode()
            generated.add("RECALL_WEBHOOK_SECRET")
    if not settings.api_tokens:
        env["API_TOKENS"] = f"dev-{secrets.token_hex(16)}"
        generated.add("API_TOKENS")
    if settings.FLOWER_BASIC_AUTH is None:
        env["FLOWER_BASIC_AUTH"] = f"dev:{secrets.token_hex(8)}"
        generated.add("FLOWER_BASIC_AUTH")
    if settings.CALLBACK_SECRET is None:
        env["CALLBACK_SECRET"] = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        generated.add("CALLBACK_SECRET")
    return generated


def _wait_ready(
    settings: Settings,
    ports: Ports,
    apps: list[tuple[str, subprocess.Popen[bytes]]],
    stopping: threading.Event,
) -> bool:
    """True once the receiver is ready and a worker answers a ping (within a minute)."""
    from worker.celery_app import create_celery

    celery = create_celery(settings)
    deadline = time.monotonic() + 60
    receiver_ready = False
    while time.monotonic() < deadline and not stopping.is_set():
        if any(proc.poll() is not None for _, proc in apps):
            return False
        if not receiver_ready:
            try:
                url = f"http://127.0.0.1:{ports.receiver}/readyz"
                receiver_ready = requests.get(url, timeout=1).status_code == 200
            except requests.RequestException:
                pass
        if receiver_ready and celery.control.ping(timeout=0.5):
            return True
        stopping.wait(0.5)
    if not stopping.is_set():
        print("recall-transcribe up: not ready after a minute; stopping", file=sys.stderr)
        stopping.set()
    return False


def _banner(settings: Settings, ports: Ports, env: dict[str, str], generated: set[str]) -> None:
    base = f"http://127.0.0.1:{ports.receiver}"
    flower_user, flower_password = env["FLOWER_BASIC_AUTH"].split(":", 1)
    token = env["API_TOKENS"].split(",")[0].strip()
    lines = [
        "",
        "recall-transcribe is ready:",
        f"  webhooks  {base}/webhooks/recall",
        f"  jobs API  {base}/api/v1/jobs (Authorization: Bearer {token})",
        f"  flower    http://{flower_user}:{flower_password}@127.0.0.1:{ports.flower}"
        f"  (API: curl -u {flower_user}:{flower_password} http://127.0.0.1:{ports.flower}/api/tasks)",
        f"  store     {Path(settings.TRANSCRIPTS_STORE).resolve()}",
    ]
    if "RECALL_WEBHOOK_SECRET" in generated:
        lines.append(f"  webhook secret (generated) {env['RECALL_WEBHOOK_SECRET']}")
    if "CALLBACK_SECRET" in generated:
        lines.append(
            f"  callback secret (generated; callbacks are signed with it) {env['CALLBACK_SECRET']}"
        )
    if generated:
        names = ", ".join(sorted(generated))
        lines.append(f"  generated for this run only: {names} (set them in .env to keep them)")
    if settings.RECALL_API_KEY is None:
        lines += [
            f"  emulator  http://127.0.0.1:{ports.emulator} (no RECALL_API_KEY: emulated Recall)",
            "",
            "Finish a recording (the emulator sends a signed recording.done):",
            f"  curl -s -X POST http://127.0.0.1:{ports.emulator}/_emulator/recordings",
            "Then: recall-transcribe jobs list",
        ]
    lines.append("Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)
