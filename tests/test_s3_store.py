"""The S3 store against moto's server mode: a real S3 HTTP API on loopback, started here."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from harness import System, free_port, recording_done, wait_for
from tasks.store.layout import CHUNK
from tasks.store.s3 import S3Store, StoreUnavailable

AWS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An S3 endpoint on loopback with one bucket, `transcripts`; boto3's environment set."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    requests.post(
        f"{endpoint}/moto-api/reset", timeout=5
    ).raise_for_status()  # moto's state is global
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="transcripts")
    yield endpoint
    server.stop()


def objects(endpoint: str) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=endpoint)
    listed = client.list_objects_v2(Bucket="transcripts").get("Contents", [])
    return {
        o["Key"]: client.get_object(Bucket="transcripts", Key=o["Key"])["Body"].read()
        for o in listed
    }


def save(
    store: S3Store, recording_id: str, transcript_id: str, data: bytes, **beside: bytes
) -> None:
    with store.staging() as staged:
        staged.write(data)
        meta = {"id": transcript_id, "job_id": "j1"}
        store.save(
            recording_id, transcript_id, staged, meta, {f".{k}": v for k, v in beside.items()}
        )


def test_the_s3_store_keeps_the_directory_layout_meta_after_data(s3: str) -> None:
    store = S3Store("s3://transcripts/prod/eu", s3)
    assert not store.has("r1", "t1")
    save(store, "r1", "t1", b'[{"words": []}]', srt=b"1\n")
    assert store.has("r1", "t1")
    stored = objects(s3)
    assert stored["prod/eu/r1/t1.json"] == b'[{"words": []}]'
    assert b'"job_id": "j1"' in stored["prod/eu/r1/t1.meta.json"]
    assert stored["prod/eu/r1/t1.srt"] == b"1\n"
    with store.open("r1", "t1", ".json") as data:
        assert (data.size, b"".join(data)) == (15, b'[{"words": []}]')
    with pytest.raises(FileNotFoundError):
        store.open("r1", "missing", ".json")


@pytest.fixture
def s3_elsewhere(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's server in its own process, so that what it holds is not counted here."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(endpoint), 30, what="moto's server")
        for name, value in AWS.items():
            monkeypatch.setenv(name, value)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="transcripts")
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


def _answers(endpoint: str) -> bool:
    try:
        return requests.get(f"{endpoint}/moto-api/", timeout=1).ok
    except requests.ConnectionError:
        return False


def test_an_object_is_read_in_chunks_never_whole(s3_elsewhere: str) -> None:
    """20 MB served through `open` holds a few chunks at a time, not the object."""
    store = S3Store("s3://transcripts", s3_elsewhere)
    big = bytes(range(256)) * (20 * 1024 * 1024 // 256)
    boto3.client("s3", endpoint_url=s3_elsewhere).put_object(
        Bucket="transcripts", Key="r1/t1.srt", Body=big
    )
    save(store, "r1", "warm", b"[]")  # boto3 loads its models on first use: not counted
    with store.open("r1", "warm", ".json") as warm:
        assert b"".join(warm) == b"[]"
    tracemalloc.start()
    try:
        with store.open("r1", "t1", ".srt") as stored:
            sizes = [len(chunk) for chunk in stored]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stored.size == sum(sizes) == len(big) and max(sizes) <= CHUNK
    assert peak < 4 * 1024 * 1024, f"{peak} bytes held to read {len(big)}"


def test_an_unreachable_or_missing_bucket_is_a_readable_error_and_nothing_is_there(
    s3: str,
) -> None:
    missing = S3Store("s3://no-such-bucket/x", s3)
    with pytest.raises(StoreUnavailable, match=r"no-such-bucket.*NoSuchBucket"):
        save(missing, "r1", "t1", b"[]")
    unreachable = S3Store("s3://transcripts", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable, match="s3://transcripts/r1/t1"):
        save(unreachable, "r1", "t1", b"[]")
    assert objects(s3) == {}


def test_workers_persist_to_s3_and_a_refusing_store_fails_the_job_readably(
    start_system: Any, s3: str
) -> None:
    system: System = start_system(
        workers=1,
        TRANSCRIPTS_STORE="s3://transcripts/t",
        S3_ENDPOINT_URL=s3,
        MAX_STEP_RETRIES="2",
        RETRY_BACKOFF_BASE_S="0.1",
        RETRY_BACKOFF_MAX_S="0.2",
        **AWS,
    )
    for recording_id in ("ok", "refused"):
        system.emulator.recording(recording_id)
    assert system.post(recording_done("ok")).status_code == 200
    wait_for(lambda: system.count("done") == 1, 30, what="persisted to S3")
    (transcript,) = system.emulator.transcripts("ok")
    stored = objects(s3)
    assert stored[f"t/ok/{transcript['id']}.json"] == system.emulator.data(transcript["id"])
    assert f"t/ok/{transcript['id']}.meta.json" in stored

    boto3.client("s3", endpoint_url=s3).delete_object(
        Bucket="transcripts", Key=f"t/ok/{transcript['id']}.json"
    )
    boto3.client("s3", endpoint_url=s3).delete_object(
        Bucket="transcripts", Key=f"t/ok/{transcript['id']}.meta.json"
    )
    boto3.client("s3", endpoint_url=s3).delete_bucket(Bucket="transcripts")  # now it refuses
    assert system.post(recording_done("refused")).status_code == 200
    wait_for(lambda: system.count("failed") == 1, 60, what="the job failed")
    (job,) = system.jobs(state="failed")
    error = job["error"]
    assert error["code"] == "internal"
    assert "NoSuchBucket" in error["message"] and "s3://transcripts/t/" in error["message"]
