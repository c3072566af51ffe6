"""Pydantic models against the payloads Recall documents (shared/recall-api.md)."""

from __future__ import annotations

import pytest

from tasks.events import InvalidEvent, parse_event
from tasks.recall.models import Transcript

DOCUMENTED_TRANSCRIPT = {
    "id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
    "recording": {"id": "03d06804-0cb2-42f8-a255-5b950dde7c57", "metadata": {}},
    "created_at": "2024-11-27T20:10:19.719Z",
    "expires_at": "2024-12-04T20:10:19.719Z",
    "status": {"code": "done", "sub_code": None, "updated_at": "2024-11-27T20:10:19.719Z"},
    "data": {"download_url": "https://example.com/d", "provider_data_download_url": "https://x"},
    "diarization": {"use_separate_streams_when_available": False},
    "metadata": {"custom_field": "some_value"},
    "provider": {"assembly_ai_async": {"language": "en"}},
}


def test_documented_transcript_parses_and_keeps_its_raw_form() -> None:
    transcript = Transcript.from_api(DOCUMENTED_TRANSCRIPT)
    assert transcript.status.code == "done"
    assert transcript.download_url == "https://example.com/d"
    assert transcript.recording is not None
    assert transcript.recording.id == "03d06804-0cb2-42f8-a255-5b950dde7c57"
    assert transcript.raw is DOCUMENTED_TRANSCRIPT


def test_unknown_transcript_fields_are_accepted() -> None:
    raw = {**DOCUMENTED_TRANSCRIPT, "new_field": {"x": 1}, "status": {"code": "processing", "x": 2}}
    transcript = Transcript.from_api(raw)
    assert transcript.status.code == "processing"
    assert transcript.raw["new_field"] == {"x": 1}


def test_processing_transcript_has_no_download_url() -> None:
    raw = {**DOCUMENTED_TRANSCRIPT, "data": {"download_url": None}}
    assert Transcript.from_api(raw).download_url is None


RECORDING_DONE = {
    "event": "recording.done",
    "data": {
        "data": {"code": "done", "sub_code": None, "updated_at": "2025-07-17T00:00:00Z"},
        "recording": {"id": "rec", "metadata": {}},
        "bot": {"id": "bot", "metadata": {}},
    },
}


def test_documented_recording_done_parses() -> None:
    event = parse_event(RECORDING_DONE)
    assert event.handled and event.data.recording is not None
    assert event.data.recording.id == "rec"


def test_transcript_failed_carries_sub_code_and_metadata() -> None:
    body = {
        "event": "transcript.failed",
        "data": {
            **RECORDING_DONE["data"],  # type: ignore[dict-item]
            "data": {
                "code": "failed",
                "sub_code": "provider_connection_failed",
                "updated_at": None,
            },
            "transcript": {"id": "t1", "metadata": {"job_id": "j1"}},
        },
    }
    event = parse_event(body)
    assert event.data.data is not None and event.data.data.sub_code == "provider_connection_failed"
    assert event.data.transcript is not None and event.data.transcript.metadata == {"job_id": "j1"}


def test_bot_may_be_null() -> None:
    body = {"event": "recording.done", "data": {**RECORDING_DONE["data"], "bot": None}}  # type: ignore[dict-item]
    assert parse_event(body).data.bot is None


def test_other_events_are_read_but_not_handled() -> None:
    event = parse_event({"event": "bot.status_change", "data": {"bot": {"id": "b"}, "x": 1}})
    assert not event.handled


@pytest.mark.parametrize(
    "body",
    [
        [],
        "recording.done",
        {"event": "recording.done"},
        {"event": "recording.done", "data": {}},
        {"event": "transcript.done", "data": RECORDING_DONE["data"]},
        {"event": 5, "data": {}},
    ],
)
def test_handled_events_without_their_objects_are_invalid(body: object) -> None:
    with pytest.raises(InvalidEvent):
        parse_event(body)
