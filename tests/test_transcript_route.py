"""The transcript route and `jobs transcript` with data too deep, too large or hostile: what
cannot be rendered is still persisted and answered 409, a persisted rendering is streamed in
bounded memory, and on-demand rendering stops at RENDER_MAX_BYTES."""

from __future__ import annotations

import hashlib
import json
import logging
import tracemalloc
import unicodedata
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from harness import EmulatorHandle, wait_for
from recall_transcribe import jobs as jobs_commands
from receiver.app import create_app
from tasks import formats
from tasks.formats import RENDER_MAX_BYTES, Format, render
from tasks.jobs.listing import Filters
from tasks.jobs.states import State, Step
from tasks.settings import Settings
from tests.helpers import Harness, reconfigure

AUTH = {"Authorization": "Bearer token-1"}
BIG = 20 * 1024 * 1024
MAX_PEAK = 4 * 1024 * 1024  # a few chunks and the request's own objects


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return reconfigure(settings, API_TOKENS="token-1", TRANSCRIPT_FORMATS="json,srt,text")


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def done_job(harness: Harness, emulator: EmulatorHandle, data: bytes | None = None) -> Path:
    """Run a job to `done`, Recall's data replaced by `data`; its data file in the store."""
    emulator.recording("r1")
    job_id = harness.submit("r1")
    harness.drain()
    wait_for(lambda: all(t["status"]["code"] == "done" for t in emulator.transcripts("r1")), 10)
    (transcript,) = emulator.transcripts("r1")
    if data is not None:
        assert emulator.state is not None
        with emulator.state.lock:
            emulator.state.transcripts[transcript["id"]].data = data
    harness.run(Step.AWAIT, job_id)
    harness.drain()
    job = harness.pipeline.jobs.record(job_id)
    assert job is not None and job.state == State.DONE
    return Path(harness.pipeline.settings.TRANSCRIPTS_STORE) / "r1" / f"{transcript['id']}.json"


def route(harness: Harness) -> str:
    (job,) = harness.pipeline.jobs.page(Filters(recording_id="r1"), limit=1).records
    return f"/api/v1/jobs/{job.id}/transcript"


def test_data_nested_too_deep_is_persisted_as_downloaded_and_answered_409(
    client: FlaskClient,
    harness: Harness,
    emulator: EmulatorHandle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    deep = b"[" * 5000 + b"]" * 5000  # json.loads: RecursionError
    with caplog.at_level(logging.WARNING, logger="tasks.formats"):
        data = done_job(harness, emulator, deep)  # the job is done
    assert data.read_bytes() == deep
    assert not data.with_suffix(".srt").exists() and not data.with_suffix(".txt").exists()
    assert "transcript formats not written" in caplog.text
    assert client.get(route(harness), headers=AUTH).data == deep
    for fmt in ("srt", "text", "vtt"):
        answer = client.get(f"{route(harness)}?format={fmt}", headers=AUTH)
        assert answer.status_code == 409, answer.data
        error = answer.json["error"]  # type: ignore[index]
        assert "not Recall's transcript data" in error and "\n" not in error


# As the review found it: a name cut inside a UTF-16 pair (JSON.stringify writes "\\ud83d").
CUT_NAME = (
    b'[{"participant": {"id": 1, "name": "Ana \\ud83d"}, "words": [{"text": "hi", '
    b'"start_timestamp": {"relative": 1.0}, "end_timestamp": {"relative": 1.5}}]}]'
)


def test_a_name_cut_inside_a_utf16_pair_is_persisted_and_shown_with_a_replacement_character(
    client: FlaskClient, harness: Harness, emulator: EmulatorHandle
) -> None:
    """The lone surrogate left rendering raising UnicodeEncodeError: the data was never persisted
    (the fetch failed at every try) and on-demand renders answered 500."""
    data = done_job(harness, emulator, CUT_NAME)
    assert data.read_bytes() == CUT_NAME
    assert (
        data.with_suffix(".srt").read_text() == "1\n00:00:01,000 --> 00:00:01,500\nAna \ufffd: hi\n"
    )
    assert data.with_suffix(".txt").read_text() == "[00:00:01] Ana \ufffd: hi\n"
    answer = client.get(f"{route(harness)}?format=vtt", headers=AUTH)  # rendered on demand
    assert answer.status_code == 200 and "<v Ana \ufffd>hi" in answer.data.decode()


def test_a_rendering_that_fails_any_way_is_left_out_the_data_persisted_and_answered_409(
    client: FlaskClient,
    harness: Harness,
    emulator: EmulatorHandle,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever a renderer raises (a fault of ours), the data is persisted as downloaded with
    the other formats, and the route answers 409 in one line, never 500."""

    def broken(_: object) -> str:
        raise RuntimeError("a renderer's bug\nover two lines")

    monkeypatch.setitem(formats.RENDERERS, Format.SRT, broken)
    with caplog.at_level(logging.ERROR, logger="tasks.formats"):
        data = done_job(harness, emulator)  # the job is done
    assert not data.with_suffix(".srt").exists() and data.with_suffix(".txt").exists()
    assert "transcript not written as srt" in caplog.text
    answer = client.get(f"{route(harness)}?format=srt", headers=AUTH)
    assert answer.status_code == 409
    assert answer.json["error"].endswith(  # type: ignore[index]
        "cannot be rendered as srt: RuntimeError: a renderer's bug over two lines"
    )


def streamed(client: FlaskClient, route: str) -> tuple[int, str, int]:
    """Status, SHA-256 of the body and the peak of Python's memory while it was served."""
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        answer = client.get(route, headers=AUTH, buffered=False)
        for chunk in answer.response:
            digest.update(chunk)
        answer.close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return answer.status_code, digest.hexdigest(), peak


@pytest.mark.parametrize(("fmt", "suffix"), [("srt", ".srt"), ("json", ".json")])
def test_a_persisted_rendering_or_the_data_is_streamed_in_bounded_memory(
    client: FlaskClient, harness: Harness, emulator: EmulatorHandle, fmt: str, suffix: str
) -> None:
    data = done_job(harness, emulator)
    big = data.with_suffix(suffix)
    big.write_bytes(b"1\n00:00:00,000 --> 00:00:01,000\nAda: so\n\n" * (BIG // 41))
    status, digest, peak = streamed(client, f"{route(harness)}?format={fmt}")
    assert status == 200 and digest == hashlib.sha256(big.read_bytes()).hexdigest()
    assert peak < MAX_PEAK, f"{peak} bytes held to serve {big.stat().st_size}"


def test_on_demand_rendering_answers_409_over_render_max_bytes(
    client: FlaskClient, harness: Harness, emulator: EmulatorHandle
) -> None:
    """VTT is not persisted here: rendered from data of up to RENDER_MAX_BYTES, refused above
    with one line that says how to get it."""
    data = done_job(harness, emulator)
    original = data.read_bytes()
    vtt = f"{route(harness)}?format=vtt"
    data.write_bytes(original + b" " * (RENDER_MAX_BYTES - len(original)))  # still the same JSON
    at_limit = client.get(vtt, headers=AUTH)
    assert (at_limit.status_code, at_limit.data) == (200, render(original, Format.VTT))
    data.write_bytes(original + b" " * (RENDER_MAX_BYTES + 1 - len(original)))
    over = client.get(vtt, headers=AUTH)
    assert over.status_code == 409
    error = over.json["error"]  # type: ignore[index]
    assert "RENDER_MAX_BYTES" in error and "TRANSCRIPT_FORMATS" in error and "\n" not in error
    assert client.get(f"{route(harness)}?format=srt", headers=AUTH).status_code == 200


def test_jobs_transcript_prints_stored_json_with_nothing_a_terminal_runs(
    harness: Harness,
    emulator: EmulatorHandle,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    """Stored data holding raw ESC, BEL, NUL, a C1 CSI and a bidi override is printed with them
    as \\u escapes: the same JSON, nothing for the terminal to run."""
    hostile = '[{"participant": {"id": 1, "name": "\x1b]0;x\x07\x00\x9b2J\u202eEve"}, "words": []}]'
    data = done_job(harness, emulator, hostile.encode())
    for name in ("REDIS_URL", "TRANSCRIPTS_STORE"):
        monkeypatch.setenv(name, str(getattr(settings, name)))
    (job,) = harness.pipeline.jobs.page(Filters(recording_id="r1"), limit=1).records
    assert jobs_commands._transcript(harness.pipeline.jobs, job.id, "json") == 0
    shown = capsysbinary.readouterr().out
    assert data.read_bytes() == hostile.encode()
    assert not [c for c in shown.decode() if unicodedata.category(c) == "Cc" or c == "\u202e"]
    assert json.loads(shown) == json.loads(hostile, strict=False)
    assert b"\\u001b]0;x\\u0007\\u0000\\u009b2J\\u202eEve" in shown
