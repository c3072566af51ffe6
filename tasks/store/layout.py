"""The store's layout, shared by every kind: `{recording_id}/{transcript_id}{suffix}`.

Ids become file and object names, so only safe ones are accepted: a letter or digit, then up to
127 letters, digits, `_`, `.` or `-`, never `..`, and never ending in `.meta` (the data of
`x.meta` would be `x`'s meta file).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

DATA = ".json"
META = ".meta.json"
# What each object of a transcript holds, by suffix: the data (and its meta), and its renderings.
MEDIA_TYPES = {
    DATA: "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".srt": "application/x-subrip; charset=utf-8",
    ".vtt": "text/vtt; charset=utf-8",
}
CHUNK = 64 * 1024
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class StoreError(Exception):
    """The store could not take a transcript (the message says why)."""


class UnsafeName(StoreError):
    """An id that cannot name a file or object safely: retrying will not help."""


def safe(value: str) -> str:
    """`value` if it is safe as (part of) a name in any store, else `UnsafeName`."""
    if (
        not _SAFE_ID.fullmatch(value)
        or ".." in value
        or value.lower().endswith(META.removesuffix(DATA))
    ):
        raise UnsafeName(f"unsafe id for a file name: {value!r}")
    return value


def object_name(recording_id: str, transcript_id: str, suffix: str) -> str:
    """`{recording_id}/{transcript_id}{suffix}`, both ids checked safe."""
    return f"{safe(recording_id)}/{safe(transcript_id)}{suffix}"


def media_type(name: str) -> str:
    """The media type of the object `name`, by its suffix (JSON unless a rendering's)."""
    for suffix, kind in MEDIA_TYPES.items():
        if name.endswith(suffix):
            return kind
    return MEDIA_TYPES[DATA]


def meta_bytes(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, indent=2, sort_keys=True).encode()


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


@dataclass
class Stored:
    """An object opened for reading, iterated CHUNK bytes at a time so that serving one holds a
    chunk, not the object, in memory; closed when done (`with`, or by a WSGI server)."""

    size: int
    body: Readable

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.body.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> Stored:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
