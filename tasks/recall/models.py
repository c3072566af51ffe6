"""The objects Recall answers with, parsed with pydantic at the edge; unknown fields are kept
(Recall adds fields over time)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, PrivateAttr


class TranscriptStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    sub_code: str | None = None


class TranscriptData(BaseModel):
    model_config = ConfigDict(extra="allow")
    download_url: str | None = None


class RecordingRef(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str


class Transcript(BaseModel):
    """The transcript object, kept verbatim (`raw`) for persisting."""

    model_config = ConfigDict(extra="allow")
    id: str
    recording: RecordingRef | None = None
    created_at: datetime | None = None
    status: TranscriptStatus
    data: TranscriptData | None = None
    metadata: dict[str, Any] | None = None
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Transcript:
        """Parse an API answer and keep it verbatim for persisting."""
        transcript = cls.model_validate(raw)
        transcript._raw = raw
        return transcript

    @property
    def raw(self) -> dict[str, Any]:
        return self._raw

    @property
    def download_url(self) -> str | None:
        return self.data.download_url if self.data else None

    @property
    def job_id(self) -> str | None:
        """The job of ours this transcript is tagged with (its metadata), if any."""
        owner = (self.metadata or {}).get("job_id")
        return str(owner) if owner else None


TRANSCRIBED = ("done", "processing")  # a transcript in these statuses is one (media_shortcuts)


class RecordingStatus(BaseModel):
    model_config = ConfigDict(extra="allow")
    code: str
    sub_code: str | None = None
    updated_at: datetime | None = None


class MediaShortcuts(BaseModel):
    model_config = ConfigDict(extra="allow")
    transcript: dict[str, Any] | None = None  # one of its transcripts (which one: undocumented)


class Recording(BaseModel):
    """A recording as List Recordings shows it (reconciliation reads these)."""

    model_config = ConfigDict(extra="allow")
    id: str
    created_at: datetime | None = None
    completed_at: datetime | None = None
    status: RecordingStatus | None = None
    media_shortcuts: MediaShortcuts | None = None

    @property
    def finished_at(self) -> datetime | None:
        """When it finished: its `completed_at`, else when its status last changed."""
        return self.completed_at or (self.status.updated_at if self.status else None)

    @property
    def transcribed(self) -> bool:
        """Recall already holds a transcript of it (ours or anyone's) that is done or being made
        (someone pays for it); one that failed, or was deleted, is none."""
        return self._transcript_status() in TRANSCRIBED

    @property
    def transcript_pending(self) -> bool:
        """Its transcript is still being made: it may yet fail, and need one of ours."""
        return self._transcript_status() == "processing"

    def _transcript_status(self) -> object:
        transcript = self.media_shortcuts.transcript if self.media_shortcuts else None
        status = transcript.get("status") if transcript is not None else None
        return status.get("code") if isinstance(status, dict) else None
