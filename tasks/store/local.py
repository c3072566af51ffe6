"""A directory store: every file is staged, fsynced and renamed into place, and every directory
entry it creates or renames is fsynced too, so a job marked `done` (or a transcript deleted at
Recall after its archive) always has its files after a power loss."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tasks.store.layout import DATA, META, Stored, meta_bytes, object_name

STAGING = ".staging"  # beside the recordings (ids start with a letter or digit): renames stay local


class LocalStore:
    """`${root}/${recording_id}/${transcript_id}.json` and `.meta.json`."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def data_path(self, recording_id: str, transcript_id: str) -> Path:
        return self.root / object_name(recording_id, transcript_id, DATA)

    def meta_path(self, recording_id: str, transcript_id: str) -> Path:
        return self.root / object_name(recording_id, transcript_id, META)

    @contextmanager
    def staging(self) -> Iterator[IO[bytes]]:
        """A temporary file in the store's own file system, so `save` only renames it."""
        directory = self.root / STAGING
        make_dirs(directory)
        with tempfile.NamedTemporaryFile(dir=directory, suffix=".tmp", delete=False) as handle:
            try:
                yield handle
            finally:
                Path(handle.name).unlink(missing_ok=True)  # gone already once saved

    def save(
        self,
        recording_id: str,
        transcript_id: str,
        data: IO[bytes],
        meta: dict[str, Any],
        beside: dict[str, bytes] | None = None,
    ) -> None:
        """Rename the staged data into place, write the files beside it, then its meta; all
        durable on return."""
        data_path = self.data_path(recording_id, transcript_id)
        meta_path = self.meta_path(recording_id, transcript_id)
        make_dirs(data_path.parent)
        data.flush()
        os.fsync(data.fileno())
        os.replace(data.name, data_path)
        for suffix, content in (beside or {}).items():
            write_file(self.root / object_name(recording_id, transcript_id, suffix), content)
        write_file(meta_path, meta_bytes(meta))  # fsyncs the directory: every rename durable

    def open(self, recording_id: str, transcript_id: str, suffix: str) -> Stored:
        handle = (self.root / object_name(recording_id, transcript_id, suffix)).open("rb")
        return Stored(os.fstat(handle.fileno()).st_size, handle)

    def has(self, recording_id: str, transcript_id: str) -> bool:
        """True once both files of a transcript are in place."""
        return (
            self.meta_path(recording_id, transcript_id).exists()
            and self.data_path(recording_id, transcript_id).exists()
        )


def write_file(path: Path, content: bytes) -> None:
    """Write `content` to `path` atomically and durably: a temporary file, fsynced, renamed,
    then the directory fsynced."""
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
    fsync_dir(path.parent)


def make_dirs(path: Path) -> None:
    """`mkdir -p`, each directory it creates made durable in its parent."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    try:
        path.mkdir()
    except FileExistsError:
        return  # another worker made it (and made it durable)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
