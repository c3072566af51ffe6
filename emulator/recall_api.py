"""Recall's API as the pipeline uses it: create, retrieve, list and delete transcripts."""

from __future__ import annotations

import base64
import hmac
import time
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, jsonify, request

from emulator.core import drop_connection, emulator, error
from emulator.state import TRANSCRIPT_LIMIT, iso

bp = Blueprint("recall_api", __name__, url_prefix="/api/v1")


@bp.before_request
def _check_auth() -> None:
    """`Authorization: Token <key>` (the prefix optional); any key unless one is configured."""
    expected = emulator().config.api_key
    given = request.headers.get("Authorization", "").strip().removeprefix("Token ").strip()
    if not given or (expected and not hmac.compare_digest(given, expected)):
        abort(error(401, "Invalid API key."))


@bp.post("/recording/<recording_id>/create_transcript/")
def create_transcript(recording_id: str) -> Response:
    emu = emulator()
    fault = emu.gateway("create", recording_id)
    key = request.headers.get("Idempotency-Key")
    scope = (f"POST {request.path}", key) if key else None
    if scope is not None:
        outcome, stored = emu.state.idempotency_begin(scope)
        if outcome == "running":
            return error(409, "A request with this Idempotency-Key is still running.")
        if outcome == "replay":
            response = jsonify(stored[1])
            response.status_code = stored[0]
            response.headers["Idempotent-Replayed"] = "true"
            return response
    status, body = _create(recording_id)
    if scope is not None:
        emu.state.idempotency_end(scope, status, body)
    if fault is not None and fault.action == "lose_response":
        return drop_connection()
    if fault is not None and fault.action == "delay_response":
        time.sleep(fault.seconds)  # the transcript exists; its webhook may now arrive first
    response = jsonify(body)
    response.status_code = status
    return response


def _create(recording_id: str) -> tuple[int, dict[str, Any]]:
    emu = emulator()
    if recording_id not in emu.state.recordings:
        return 404, {"detail": "Not found."}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return 400, {"detail": "JSON body required."}
    provider = body.get("provider")
    if not isinstance(provider, dict) or len(provider) != 1:
        return 400, {"provider": ["Exactly one provider must be specified."]}
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or any(len(str(v)) > 500 for v in metadata.values()):
        return 400, {"metadata": ["Each value must be at most 500 characters."]}
    with emu.state.lock:
        if emu.state.live_count(recording_id) >= TRANSCRIPT_LIMIT:
            return 400, {
                "detail": f"This recording already has {TRANSCRIPT_LIMIT} transcripts. "
                "Delete an existing transcript before creating a new one."
            }
        transcript = emu.state.create_transcript(recording_id, body)
    emu.scheduler.call_later(emu.config.processing_s, lambda: emu.complete(transcript.id))
    return 201, emu.view(transcript)


@bp.get("/transcript/<transcript_id>/")
def retrieve_transcript(transcript_id: str) -> Response:
    emu = emulator()
    emu.gateway("retrieve")
    transcript = emu.state.transcripts.get(transcript_id)
    if transcript is None:
        return error(404, "Not found.")
    return jsonify(emu.view(transcript))


@bp.get("/transcript/")
def list_transcripts() -> Response:
    """Filtered by recording, status and creation time; cursor pagination with `next` links."""
    emu = emulator()
    recording_id = request.args.get("recording_id")
    emu.gateway("list", recording_id)
    status_code = request.args.get("status_code")
    after = request.args.get("created_at_after")
    before = request.args.get("created_at_before")
    with emu.state.lock:
        rows = sorted(emu.state.transcripts.values(), key=lambda t: (t.created_at, t.id))
        rows = [
            t
            for t in rows
            if (not recording_id or t.recording_id == recording_id)
            and (not status_code or t.status == status_code)
            and (not after or iso(t.created_at) > after)
            and (not before or iso(t.created_at) < before)
        ]
    cursor = request.args.get("cursor")
    try:
        offset = int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor else 0
    except ValueError:
        return error(400, "Invalid cursor.")
    size = emu.config.page_size

    def link(to: int) -> str:
        args = {k: v for k, v in request.args.items() if k != "cursor"}
        args["cursor"] = base64.urlsafe_b64encode(str(to).encode()).decode()
        return f"{emu.config.public_url}{request.path}?{urlencode(args)}"

    return jsonify(
        next=link(offset + size) if offset + size < len(rows) else None,
        previous=link(max(0, offset - size)) if offset > 0 else None,
        results=[emu.view(t) for t in rows[offset : offset + size]],
    )


@bp.delete("/transcript/<transcript_id>/")
def delete_transcript(transcript_id: str) -> Response:
    emu = emulator()
    emu.gateway("delete")
    with emu.state.lock:
        transcript = emu.state.transcripts.get(transcript_id)
        if transcript is None or transcript.status == "deleted":
            return error(404, "Not found.")
        transcript.status, transcript.data = "deleted", None
        transcript.updated_at = time.time()
    return Response(status=204)
