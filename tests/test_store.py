"""The local store: names that cannot collide, and writes that survive a power cut."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.store import UnsafeName
from tasks.store.layout import CHUNK, safe
from tasks.store.local import LocalStore


@pytest.mark.parametrize(
    "bad",
    ["", "x\n", "x\nevil", "../x", "a..b", ".hidden", "x.meta", "X.Meta", "a/b", "é", "x" * 129],
)
def test_unsafe_ids_are_refused(bad: str) -> None:
    with pytest.raises(UnsafeName):
        safe(bad)


@pytest.mark.parametrize(
    "good", ["3fa85f64-5717-4562-b3fc-2c963f66afa6", "r1", "a.b_c-d", "x.metadata"]
)
def test_recalls_ids_are_accepted(good: str) -> None:
    assert safe(good) == good


def test_a_transcript_whose_id_ends_in_meta_cannot_overwrite_anothers_meta(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    save(store, "r1", "x", b"[]")
    with pytest.raises(UnsafeName):
        save(store, "r1", "x.meta", b"overwrite")
    assert (tmp_path / "r1" / "x.meta.json").read_bytes() != b"overwrite"


def save(store: LocalStore, recording_id: str, transcript_id: str, data: bytes) -> None:
    with store.staging() as staged:
        staged.write(data)
        store.save(recording_id, transcript_id, staged, {"id": transcript_id})


def test_every_file_and_directory_entry_is_fsynced_before_save_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a power cut, a transcript the store said it saved is there: each file is fsynced
    before its rename, and its directory after the rename and after the directory was made."""
    store = LocalStore(str(tmp_path / "store"))
    events: list[tuple[str, str]] = []
    fsync, replace, mkdir = os.fsync, os.replace, Path.mkdir

    def record_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(dst)))
        replace(src, dst)

    def record_mkdir(path: Path, *args: object, **kwargs: object) -> None:
        mkdir(path, *args, **kwargs)  # type: ignore[arg-type]
        events.append(("mkdir", str(path)))

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    monkeypatch.setattr(Path, "mkdir", record_mkdir)
    save(store, "r1", "t1", b'[{"words": []}]')
    monkeypatch.undo()

    root, recording = str(tmp_path / "store"), str(tmp_path / "store" / "r1")
    data, meta = f"{recording}/t1.json", f"{recording}/t1.meta.json"
    assert (tmp_path / "store" / "r1" / "t1.json").read_bytes() == b'[{"words": []}]'
    at = {event: index for index, event in enumerate(events)}  # the last time each happened

    def before(first: tuple[str, str], then: tuple[str, str]) -> bool:
        return events.index(first) < at[then]

    assert before(("mkdir", recording), ("fsync", root))  # the new directory is in its parent
    data_fsyncs = [
        i for i, (kind, path) in enumerate(events) if kind == "fsync" and "staging" in path
    ]
    assert data_fsyncs and data_fsyncs[0] < events.index(("rename", data))  # data, then rename
    meta_tmp = [
        i for i, (kind, path) in enumerate(events) if kind == "fsync" and ".t1.meta" in path
    ]
    assert meta_tmp and meta_tmp[0] < events.index(("rename", meta))
    assert events.index(("rename", meta)) < at[("fsync", recording)]  # both renames durable
    assert events[-1] == ("fsync", recording)


def test_an_object_is_opened_to_read_in_chunks(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    data = bytes(range(256)) * (3 * CHUNK // 256 + 1)
    save(store, "r1", "t1", data)
    with store.open("r1", "t1", ".json") as stored:
        chunks = list(stored)
    assert stored.size == len(data) and b"".join(chunks) == data
    assert [len(chunk) for chunk in chunks] == [CHUNK] * 3 + [256]
    with pytest.raises(FileNotFoundError):
        store.open("r1", "t1", ".srt")
