"""Transcripts in S3-compatible object storage (`TRANSCRIPTS_STORE=s3://bucket/prefix`).

Credentials, region and endpoint come from boto3's standard environment (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`); `S3_ENDPOINT_URL` is an alias
of the last. A PUT is atomic and durable once answered, and the meta object is written after the
data, so `has` (a HEAD of the meta) is true only once both are in place. A store that cannot be
reached or refuses raises `StoreUnavailable` with what S3 said: the step retries, and past its
budget the job fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tasks.store.layout import DATA, META, Stored, StoreError, media_type, meta_bytes, object_name


class StoreUnavailable(StoreError):
    """S3 could not be reached, or refused (the message says which and why)."""


class S3Store:
    """One bucket and prefix; one boto3 client per process (they are thread-safe)."""

    def __init__(self, location: str, endpoint_url: str | None = None) -> None:
        parts = urlsplit(location)
        if parts.scheme != "s3" or not parts.netloc:
            raise StoreError(f"not an s3://bucket/prefix location: {location!r}")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        retries = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5)
        self._client = boto3.client("s3", endpoint_url=endpoint_url, config=retries)

    def key(self, recording_id: str, transcript_id: str, suffix: str) -> str:
        name = object_name(recording_id, transcript_id, suffix)
        return f"{self.prefix}/{name}" if self.prefix else name

    @contextmanager
    def staging(self) -> Iterator[IO[bytes]]:
        """An anonymous temporary file: the data is uploaded from it, never held in memory."""
        with tempfile.TemporaryFile() as handle:
            yield handle

    def save(
        self,
        recording_id: str,
        transcript_id: str,
        data: IO[bytes],
        meta: dict[str, Any],
        beside: dict[str, bytes] | None = None,
    ) -> None:
        """PUT the data exactly as downloaded, then the objects beside it, then its meta."""
        data.flush()
        data.seek(0)
        self._put(self.key(recording_id, transcript_id, DATA), data)
        for suffix, content in (beside or {}).items():
            self._put(self.key(recording_id, transcript_id, suffix), content)
        self._put(self.key(recording_id, transcript_id, META), meta_bytes(meta))

    def open(self, recording_id: str, transcript_id: str, suffix: str) -> Stored:
        """The object's body as S3 sends it: read in chunks off the connection."""
        key = self.key(recording_id, transcript_id, suffix)
        try:
            answer = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(key) from None
            raise self._unavailable("GET", key, exc) from None
        except BotoCoreError as exc:
            raise self._unavailable("GET", key, exc) from None
        return Stored(answer["ContentLength"], answer["Body"])

    def has(self, recording_id: str, transcript_id: str) -> bool:
        meta_key = self.key(recording_id, transcript_id, META)
        try:
            self._client.head_object(Bucket=self.bucket, Key=meta_key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._unavailable("HEAD", meta_key, exc) from None
        except BotoCoreError as exc:
            raise self._unavailable("HEAD", meta_key, exc) from None
        return True

    def _put(self, key: str, body: bytes | IO[bytes]) -> None:
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=media_type(key)
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._unavailable("PUT", key, exc) from None

    def _unavailable(self, what: str, key: str, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"{what} s3://{self.bucket}/{key}: {exc}")
