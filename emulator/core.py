"""The emulator as one object its blueprints share (`app.extensions["emulator"]`): its state, the
scheduler and webhook sender, and what every endpoint needs (views, faults, webhooks)."""

from __future__ import annotations

import os
import select
import socket
import time
from typing import Any
from urllib.parse import urlencode

from flask import Response, abort, current_app, jsonify, request

from emulator.config import EmulatorConfig
from emulator.quotas import Quotas, parse_quotas, retry_after_header
from emulator.scheduler import Scheduler
from emulator.state import (
    RECORDING_TTL_S,
    EmulatorState,
    Fault,
    Recording,
    Transcript,
    download_signature,
    iso,
)
from emulator.webhooks import WebhookSender

HANG_MAX_S = 3600.0
HANG_POLL_S = 0.05


class Emulator:
    """Everything one emulator instance holds."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = EmulatorState(config.seed)
        self.scheduler = Scheduler()
        self.sender = WebhookSender(
            self.scheduler,
            config.webhook_urls,
            config.webhook_secret,
            config.retry_scale,
            config.legacy_headers,
        )
        self.url_secret = os.urandom(16)
        self.quotas = Quotas(parse_quotas(config.quotas), config.quota_scale)

    # -- in front of the API ----------------------------------------------------------------------

    def gateway(self, target: str, recording_id: str | None = None) -> Fault | None:
        """Rate limits, latency and injected faults: in front of the API (never replayed)."""
        self.state.calls[target] += 1
        scope = (recording_id or "") if target == "create" else ""  # create: per bot
        wait = self.quotas.admit(target, scope)
        if wait is not None:
            self.state.throttle(target)
            response = error(429, "Request was throttled.")
            response.headers["Retry-After"] = retry_after_header(wait)
            abort(response)
        if self.config.latency_s:
            time.sleep(self.config.latency_s)
        fault = self.state.take_fault(target, recording_id)
        if fault is None:
            return None
        if fault.action == "latency":
            time.sleep(fault.seconds)
            return None
        if fault.action == "status":
            abort(error(fault.status, f"injected {fault.status}", fault.retry_after))
        if fault.action == "reset":  # the connection closes before any answer; nothing happened
            abort(drop_connection())
        if fault.action == "hang":  # a region that never answers: the client's timeout ends it
            hang(fault, self.state)
            abort(drop_connection())
        return fault

    # -- views ---------------------------------------------------------------------------------

    def download_url(self, transcript: Transcript) -> str | None:
        if transcript.status != "done":
            return None
        expires = int(time.time() + self.config.url_ttl_s)
        signature = download_signature(self.url_secret, transcript.id, expires)
        query = urlencode({"expires": expires, "sig": signature})
        return f"{self.config.public_url}/_emulator/download/{transcript.id}?{query}"

    def view(self, transcript: Transcript) -> dict[str, Any]:
        """The transcript object as Recall's API answers it."""
        recording = self.state.recordings.get(transcript.recording_id)
        return {
            "id": transcript.id,
            "recording": {
                "id": transcript.recording_id,
                "metadata": recording.metadata if recording is not None else {},
            },
            "created_at": iso(transcript.created_at),
            "expires_at": iso(transcript.created_at + 7 * 86400),
            "status": {
                "code": transcript.status,
                "sub_code": transcript.sub_code,
                "updated_at": iso(transcript.updated_at),
            },
            "data": {
                "download_url": self.download_url(transcript),
                "provider_data_download_url": None,
            },
            "diarization": transcript.diarization,
            "metadata": transcript.metadata,
            "provider": transcript.provider,
        }

    def recording_view(self, recording: Recording) -> dict[str, Any]:
        """The recording object as List Recordings answers it."""
        transcript = self.state.newest_transcript(recording.id)
        finished = recording.completed_at
        return {
            "id": recording.id,
            "created_at": iso(recording.created_at),
            "started_at": iso(recording.started_at) if recording.started_at is not None else None,
            "completed_at": iso(finished) if finished is not None else None,
            "expires_at": iso(finished + RECORDING_TTL_S) if finished is not None else None,
            "status": {
                "code": recording.status,
                "sub_code": recording.sub_code,
                "updated_at": iso(recording.updated_at),
            },
            "metadata": recording.metadata,
            "bot": recording.bot,
            "media_shortcuts": {
                "transcript": self.view(transcript) if transcript is not None else None
            },
        }

    # -- webhooks ------------------------------------------------------------------------------

    def event(
        self, name: str, recording_id: str, transcript: Transcript | None = None
    ) -> dict[str, Any]:
        recording = self.state.recordings[recording_id]
        data: dict[str, Any] = {
            "data": {
                "code": transcript.status if transcript else "done",
                "sub_code": transcript.sub_code if transcript else None,
                "updated_at": iso(time.time()),
            },
            "recording": {"id": recording_id, "metadata": recording.metadata},
            "bot": recording.bot,
        }
        if transcript is not None:
            data["transcript"] = {"id": transcript.id, "metadata": transcript.metadata}
        return {"event": name, "data": data}

    def send_webhook(self, payload: dict[str, Any], recording_id: str) -> None:
        fault = self.state.take_fault("webhook", recording_id)
        if fault is not None and fault.action == "drop":
            return
        delay = fault.seconds if fault is not None and fault.action == "delay" else 0.0
        copies = 2 if fault is not None and fault.action == "duplicate" else 1
        self.sender.send(payload, delay=delay, copies=copies)

    def complete(self, transcript_id: str) -> None:
        """Processing ends: the transcript is done, or failed by an injected fault."""
        transcript = self.state.transcripts.get(transcript_id)
        if transcript is None:
            return
        fault = self.state.take_fault("transcript", transcript.recording_id)
        failed = fault.sub_code if fault is not None and fault.action == "fail" else None
        finished = self.state.finish(transcript_id, failed)
        if finished is not None:
            name = "transcript.failed" if failed else "transcript.done"
            self.send_webhook(
                self.event(name, finished.recording_id, finished), finished.recording_id
            )


def emulator() -> Emulator:
    """The current app's emulator."""
    found: Emulator = current_app.extensions["emulator"]
    return found


def error(status: int, detail: str, retry_after: float | None = None) -> Response:
    """An error answer in Recall's shape (`{"detail": ...}`), with `Retry-After` when given."""
    response = jsonify(detail=detail)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(int(retry_after) if retry_after >= 1 else retry_after)
    return response


def hang(fault: Fault, state: EmulatorState) -> None:
    """Answer nothing until the client goes away, the fault is cleared, or its `seconds` (when
    set; an hour at most) have passed."""
    sock = request.environ.get("werkzeug.socket")
    deadline = time.monotonic() + (fault.seconds or HANG_MAX_S)
    while time.monotonic() < deadline and fault in state.faults:
        if sock is None:
            time.sleep(HANG_POLL_S)
        elif _closed(sock):
            return


def _closed(sock: socket.socket) -> bool:
    """Whether the peer closed `sock`, waiting a little for it: the call counts as in flight
    until then, so it ends as soon as its client leaves. What the client sent is read and
    dropped (a body no one reads would hide the end of the stream), as no answer will come."""
    readable, _, _ = select.select([sock], [], [], HANG_POLL_S)
    try:
        return bool(readable) and not sock.recv(65536)
    except OSError:
        return True


def drop_connection() -> Response:
    """Close the client's connection without an answer."""
    sock = request.environ.get("werkzeug.socket")
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)
    return Response(status=204)
