"""`recall-transcribe up`, as a newcomer runs it: no Redis, no Recall key, one command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import redis
import requests

from harness import command, free_port, http_ready, wait_for

pytestmark = pytest.mark.system  # every test here runs `recall-transcribe` as a process


def ignoring_sigint() -> None:
    """As a shell script's background job starts: SIGINT ignored from the start."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_up_runs_the_whole_system_says_what_it_made_and_a_signal_stops_all_of_it(
    tmp_path: Path, stop_with: signal.Signals
) -> None:
    redis_port, receiver, emulator, flower = (free_port() for _ in range(4))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RECALL_", "FLOWER_", "REDIS_"))
    }
    env.update(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", TRANSCRIPTS_STORE=str(tmp_path / "t"))
    log = (tmp_path / "up.log").open("wb")
    up = subprocess.Popen(
        [
            *command(),
            "up",
            "--receiver-port",
            str(receiver),
            "--emulator-port",
            str(emulator),
            "--flower-port",
            str(flower),
        ],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=ignoring_sigint,
    )
    try:
        wait_for(http_ready(f"http://127.0.0.1:{emulator}/_emulator/stats"), 30, what="emulator")
        wait_for(http_ready(f"http://127.0.0.1:{receiver}/readyz"), 30, what="receiver")
        wait_for(http_ready(f"http://127.0.0.1:{flower}/"), 30, what="flower")
        recording = requests.post(
            f"http://127.0.0.1:{emulator}/_emulator/recordings", timeout=5
        ).json()
        folder = tmp_path / "t" / recording["id"]
        wait_for(
            lambda: folder.exists() and len(list(folder.glob("*.meta.json"))) == 1,
            60,
            what="transcript persisted",
        )
        (data,) = [p for p in folder.glob("*.json") if not p.name.endswith(".meta.json")]
        served = requests.get(
            f"http://127.0.0.1:{emulator}/_emulator/transcripts/{data.stem}/data", timeout=5
        ).content
        assert data.read_bytes() == served
        assert (tmp_path / "data" / "redis").is_dir()  # up started its own Redis, with AOF
        # It said "ready" with what a user needs next: the API token, Flower's credentials.
        said = wait_for(
            lambda: (
                (text := (tmp_path / "up.log").read_text())
                and "recall-transcribe is ready" in text
                and text
            ),
            30,
            what="up to say it is ready",
        )
        token = re.search(r"Authorization: Bearer (\S+)\)", said)
        assert token is not None
        auth = {"Authorization": f"Bearer {token[1]}"}
        jobs_url = f"http://127.0.0.1:{receiver}/api/v1/jobs"
        wait_for(
            lambda: (
                requests.get(jobs_url, headers=auth, timeout=5).json()["jobs"][0]["state"] == "done"
            ),
            10,
            what="the job done, read with the token up printed",
        )
        credentials = re.search(r"curl -u (\S+?):(\S+) http", said)
        assert credentials is not None
        flower_api = f"http://127.0.0.1:{flower}/api/tasks"
        assert requests.get(flower_api, timeout=5).status_code == 401
        assert requests.get(flower_api, auth=credentials.groups(), timeout=5).status_code == 200
        assert re.search(r"webhook secret \(generated\) whsec_\S+", said)
    finally:
        up.send_signal(stop_with)
        assert up.wait(60) == 0
        log.close()
    for port in (receiver, emulator, flower):
        assert not http_ready(f"http://127.0.0.1:{port}/")()
    try:
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()
        raise AssertionError("the Redis that up started is still running")
    except redis.ConnectionError:
        pass
