"""The command line: misconfiguration is one readable line; enqueue and jobs work end to end."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest
import srt

from harness import System, command, free_port
from tasks.formats import words

pytestmark = pytest.mark.system  # every test here runs `recall-transcribe` as a process


def run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("command", "env", "says"),
    [
        (["worker"], {"RECALL_POLL_MAX_S": "soon"}, "invalid setting RECALL_POLL_MAX_S"),
        (["receiver"], {"RECALL_WEBHOOK_SECRET": ""}, "RECALL_WEBHOOK_SECRET is not set"),
        (["enqueue", "r1"], {"TRANSCRIPT_PROVIDER": "[]"}, "invalid setting TRANSCRIPT_PROVIDER"),
        (
            ["flower"],
            {"REDIS_URL": "redis://redis.example:6379/0"},
            "FLOWER_BASIC_AUTH is required",
        ),
        (["flower", "--address", "0.0.0.0"], {}, "FLOWER_BASIC_AUTH is required when Flower"),
        (["health"], {}, "health: PID 1 runs none of"),  # outside a container: name one
        (
            ["enqueue", "r1", "--provider", '{"recallai_async": ' * 9 + "{}" + "}" * 9],
            {},
            "provider: nested deeper than 8 levels",
        ),
        (
            ["enqueue", "r1", "--provider", '{"recallai_async": {"language_code": "\\ud800"}}'],
            {},
            "provider: holds a lone surrogate, '\\ud800', which is not text",
        ),
    ],
)
def test_misconfiguration_stops_with_one_readable_line(
    command: list[str], env: dict[str, str], says: str, tmp_path: Any
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RECALL_", "FLOWER_"))}
    result = run(command, {**clean, **env}, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr


def test_enqueue_waits_for_the_transcript_and_jobs_shows_it(start_system: Any) -> None:
    system: System = start_system()
    system.emulator.recording("cli-rec")
    result = run(["enqueue", "cli-rec", "--wait", "--timeout", "60"], system.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "persisted" in result.stdout and "done" in result.stdout
    job_id = result.stdout.split()[1]
    listed = run(["jobs", "list"], system.env)
    assert job_id in listed.stdout and "done" in listed.stdout
    shown = run(["jobs", "show", job_id, "--json"], system.env)
    assert '"state": "done"' in shown.stdout
    again = run(["enqueue", "cli-rec"], system.env)
    assert f"job {job_id} (already exists)" in again.stdout
    transcript_id = json.loads(shown.stdout)["transcript_id"]
    subtitles = run(["jobs", "transcript", job_id, "--format", "srt"], system.env)
    cues = list(srt.parse(subtitles.stdout))
    spoken = [w.text for w in words(system.emulator.data(transcript_id))]
    assert cues and " ".join(c.content.split(": ", 1)[1] for c in cues).split() == spoken
    stored = run(["jobs", "transcript", job_id], system.env)
    assert stored.stdout.encode() == system.emulator.data(transcript_id)


def test_worker_restarts_in_place_on_celerys_unrecoverable_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import main

    execs: list[list[str]] = []
    monkeypatch.setattr(main.os, "execv", lambda path, argv: execs.append(argv))
    monkeypatch.setattr(main.time, "sleep", lambda _: None)
    handler = main.RestartOnUnrecoverable(["-n", "w1@%h"])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("celery.worker", logging.CRITICAL, "", 0, message, None, None)

    handler.emit(record("Lost connection to broker."))
    assert execs == []
    handler.emit(record("Unrecoverable error: AttributeError(\"'NoneType' object...\")"))
    assert execs == [[sys.executable, "-m", "recall_transcribe", "worker", "-n", "w1@%h"]]


def test_jobs_retry_failed_replays_the_failed_jobs_of_a_code(redis_url: str) -> None:
    import redis

    from tasks.jobs.errors import ErrorCode
    from tasks.jobs.store import JobStore

    jobs = JobStore(redis.Redis.from_url(redis_url), 10)
    provider = {"recallai_async": {}}
    unavailable, _ = jobs.submit("r1", provider)
    limited, _ = jobs.submit("r2", provider)
    jobs.fail(unavailable, ErrorCode.RECALL_UNAVAILABLE, "x")
    jobs.fail(limited, ErrorCode.LIMIT_REACHED, "x")
    env = {**os.environ, "REDIS_URL": redis_url}
    result = run(["jobs", "retry", "--failed", "--code", "recall_unavailable"], env)
    assert result.returncode == 0 and "1 failed job(s) queued again" in result.stdout
    assert [jobs.record(j).state for j in (unavailable, limited)] == ["queued", "failed"]  # type: ignore[union-attr]
    bad = run(["jobs", "retry", "--failed", "--created-after", "yesterday"], env)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0


def test_jobs_list_pages_under_a_header_and_says_how_to_see_more(redis_url: str) -> None:
    import redis

    from tasks.jobs.store import JobStore

    jobs = JobStore(redis.Redis.from_url(redis_url), 10)
    made = [jobs.submit(f"rec-{i}", {"recallai_async": {}})[0] for i in range(5)]
    env = {**os.environ, "REDIS_URL": redis_url}
    first = run(["jobs", "list", "--limit", "3"], env).stdout.splitlines()
    assert first[0].split() == ["JOB", "STATE", "RECORDING", "TRANSCRIPT", "ERROR"]
    assert len(first) == 5 and first[-1].startswith("(more: --cursor ")
    cursor = first[-1].removeprefix("(more: --cursor ").rstrip(")")
    rest = run(["jobs", "list", "--limit", "3", "--cursor", cursor], env).stdout.splitlines()
    assert len(rest) == 3 and "more" not in rest[-1]
    listed = {line.split()[0] for line in first[1:4] + rest[1:]}
    assert listed == set(made)
    for bad in (["--cursor", "yesterday"], ["--created-before", "soon"], ["--code", "nope"]):
        refused = run(["jobs", "list", *bad], env)
        assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0


def test_health_says_whether_each_service_is_ready_in_one_line(start_system: Any) -> None:
    system: System = start_system(workers=0)
    receiver_port = system.receiver_url.rsplit(":", 1)[1]
    emulator_port = system.emulator_url.rsplit(":", 1)[1]
    for argv in (
        ["health", "receiver", "--port", receiver_port],
        ["health", "emulator", "--port", emulator_port],
        ["health", "worker"],
    ):
        result = run(argv, system.env, timeout=30)
        assert (result.returncode, result.stderr) == (0, ""), argv
    closed = str(free_port())
    unreachable = {**system.env, "REDIS_URL": f"redis://127.0.0.1:{closed}/0"}
    for argv, env in (
        (["health", "receiver", "--port", closed], system.env),
        (["health", "worker"], unreachable),
    ):
        result = run(argv, env, timeout=30)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"recall-transcribe: not ready: {argv[1]}: ")
