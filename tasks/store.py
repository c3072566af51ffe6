"""Where transcripts go: `${TRANSCRIPTS_STORE}/${recording_id}/${transcript_id}.json` + meta.

Two kinds, one layout: a directory (`LocalStore`), or S3-compatible object storage shared by
workers on many hosts (`tasks/s3_store.py`). Data is written first and its `.meta.json` after, so
a transcript is there (`has`) only once both are.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class StoreError(Exception):
    """The store refused a write (an unsafe id, or a store kind not supported)."""


def _safe(value: str) -> str:
    if not _SAFE_ID.match(value) or ".." in value:
        raise StoreError(f"unsafe id for a file name: {value!r}")
    return value


class Store(Protocol):
    def save(
        self, recording_id: str, transcript_id: str, data: bytes, meta: dict[str, Any]
    ) -> object:
        """Write the data exactly as downloaded, then its meta; rewriting is harmless."""

    def has(self, recording_id: str, transcript_id: str) -> bool:
        """True once both objects of a transcript are in place."""


def open_store(location: str, s3_endpoint_url: str | None = None) -> Store:
    """The store `TRANSCRIPTS_STORE` names: `s3://bucket/prefix`, or a directory."""
    if location.startswith("s3://"):
        from tasks.s3_store import S3Store

        return S3Store(location, s3_endpoint_url)
    return LocalStore(location)


def object_name(recording_id: str, transcript_id: str, suffix: str) -> str:
    """`{recording_id}/{transcript_id}{suffix}`, both ids checked safe for any store."""
    return f"{_safe(recording_id)}/{_safe(transcript_id)}{suffix}"


def meta_bytes(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, indent=2, sort_keys=True).encode()


class LocalStore:
    """A directory; every file is written to a temporary name, fsynced, then renamed."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def data_path(self, recording_id: str, transcript_id: str) -> Path:
        return self.root / _safe(recording_id) / f"{_safe(transcript_id)}.json"

    def meta_path(self, recording_id: str, transcript_id: str) -> Path:
        return self.root / _safe(recording_id) / f"{_safe(transcript_id)}.meta.json"

    def save(
        self, recording_id: str, transcript_id: str, data: bytes, meta: dict[str, Any]
    ) -> Path:
        """Write the data exactly as downloaded, then its meta; rewriting is harmless."""
        data_path = self.data_path(recording_id, transcript_id)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(data_path, data)
        _atomic_write(self.meta_path(recording_id, transcript_id), meta_bytes(meta))
        return data_path

    def has(self, recording_id: str, transcript_id: str) -> bool:
        """True once both files of a transcript are in place."""
        return (
            self.meta_path(recording_id, transcript_id).exists()
            and self.data_path(recording_id, transcript_id).exists()
        )


def _atomic_write(path: Path, content: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
