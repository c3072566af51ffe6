"""Where transcripts go: `${TRANSCRIPTS_STORE}/${recording_id}/${transcript_id}.json` + meta.

Two kinds, one layout (`layout.py`): a directory (`local.py`), or S3-compatible object storage
shared by workers on many hosts (`s3.py`). Data is downloaded into a staging file (never held in
memory), then persisted, and its `.meta.json` after it, so a transcript is there (`has`) only
once both are; it is read back in chunks (`open`), never whole. A local store fsyncs every file
and directory it writes before `save` returns.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import IO, Any, Protocol

from tasks.store.layout import Stored, StoreError, UnsafeName


class Store(Protocol):
    def staging(self) -> AbstractContextManager[IO[bytes]]:
        """A temporary file to download into; removed at the end of the block unless saved."""

    def save(
        self,
        recording_id: str,
        transcript_id: str,
        data: IO[bytes],
        meta: dict[str, Any],
        beside: dict[str, bytes] | None = None,
    ) -> None:
        """Persist `data` (a file from `staging`) exactly, then the files `beside` it (by
        suffix: `.srt`, ...), then its meta; rewriting is harmless. Durable when it returns."""

    def has(self, recording_id: str, transcript_id: str) -> bool:
        """True once both objects of a transcript are in place."""

    def open(self, recording_id: str, transcript_id: str, suffix: str) -> Stored:
        """The object persisted under `suffix` (`.json`: the data; `.srt`, ...), to read in
        chunks and close; FileNotFoundError when it is not there."""


def open_store(location: str, s3_endpoint_url: str | None = None) -> Store:
    """The store `TRANSCRIPTS_STORE` names: `s3://bucket/prefix`, or a directory."""
    if location.startswith("s3://"):
        from tasks.store.s3 import S3Store  # boto3 loads only where an S3 store is used

        return S3Store(location, s3_endpoint_url)
    from tasks.store.local import LocalStore

    return LocalStore(location)


__all__ = ["Store", "StoreError", "Stored", "UnsafeName", "open_store"]
