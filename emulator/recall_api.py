"""Recall's API as the pipeline uses it: create, retrieve, list and delete transcripts, and list
recordings (reconciliation)."""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, jsonify, request

from emulator.core import drop_connection, emulator, error
from emulator.state import RECORDING_STATUSES, TRANSCRIPT_LIMIT, Recording, iso

bp = Blueprint("recall_api", __name__, url_prefix="/api/v1")


@bp.before_request
def _arrived() -> None:
    """Count the call in flight (first, so that `_left` always has one to take off)."""
    emulator().state.call_began()


@bp.teardown_request
def _left(_: BaseException | None) -> None:
    emulator().state.call_ended()


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


@bp.get("/recording/")
def list_recordings() -> Response:
    """List Recordings: filters `status_code`, `created_at_after` / `created_at_before` (both
    inclusive), `bot_id`, `desktop_sdk_upload_id`, `metadata__KEY=VALUE`; cursor pages of
    `page_size` in id order (Recall documents no order: a client follows `next` to the end). A
    cursor is a position (after or before an id), so pages stay put while recordings are added."""
    emu = emulator()
    fault = emu.gateway("recordings")
    args = request.args
    problems: dict[str, list[str]] = {}
    statuses = [s for s in args.getlist("status_code") if s]
    for status in statuses:
        if status not in RECORDING_STATUSES:
            problems["status_code"] = [
                f"Select a valid choice. {status} is not one of the available choices."
            ]
    after, before = (
        _datetime_arg("created_at_after", problems),
        _datetime_arg("created_at_before", problems),
    )
    if problems:
        response = jsonify(problems)
        response.status_code = 400
        return response
    bot_id, upload_id = args.get("bot_id") or None, args.get("desktop_sdk_upload_id") or None
    metadata = {
        k.removeprefix("metadata__"): v for k, v in args.items() if k.startswith("metadata__")
    }

    def wanted(r: Recording) -> bool:
        return (
            (not statuses or r.status in statuses)
            and (after is None or r.created_at >= after)
            and (before is None or r.created_at <= before)
            and (bot_id is None or (r.bot is not None and r.bot["id"] == bot_id))
            and (upload_id is None or r.desktop_sdk_upload_id == upload_id)
            and all(r.metadata.get(k) == v for k, v in metadata.items())
        )

    try:
        direction, anchor = _read_cursor(args.get("cursor"))
    except ValueError:
        return error(400, "Invalid cursor.")
    size = emu.config.page_size
    with emu.state.lock:
        order, recordings = emu.state.recording_order, emu.state.recordings

        def matching(start: int, step: int) -> Iterator[str]:
            index = start
            while 0 <= index < len(order):
                if wanted(recordings[order[index]]):
                    yield order[index]
                index += step

        if direction == "before":
            found = _take(matching(bisect.bisect_left(order, anchor) - 1, -1), size + 1)
            page, more_before = found[:size][::-1], len(found) > size
            more_after = bool(page) and bool(
                _take(matching(bisect.bisect_right(order, page[-1]), 1), 1)
            )
        else:
            start = bisect.bisect_right(order, anchor) if direction == "after" else 0
            found = _take(matching(start, 1), size + 1)
            page, more_after = found[:size], len(found) > size
            more_before = (
                bool(page)
                and direction == "after"
                and bool(_take(matching(bisect.bisect_left(order, page[0]) - 1, -1), 1))
            )
        results = [emu.recording_view(recordings[rid]) for rid in page]
    if fault is not None and fault.action == "lose_response":
        return drop_connection()
    if fault is not None and fault.action == "delay_response":
        time.sleep(fault.seconds)
    link = _cursor_link(emu.config.public_url)
    return jsonify(
        next=link("after", page[-1]) if more_after else None,
        previous=link("before", page[0]) if more_before else None,
        results=results,
    )


def _datetime_arg(name: str, problems: dict[str, list[str]]) -> float | None:
    """An ISO 8601 date-time (a date alone is its midnight; no offset is UTC), or None when
    absent or empty; a malformed one is noted in `problems` (a 400, as Recall's filters answer)."""
    text = request.args.get(name, "").strip()
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        problems[name] = ["Enter a valid date/time."]
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _read_cursor(cursor: str | None) -> tuple[str, str]:
    """('', '') for the first page, else ('after' or 'before', an id); ValueError if it is not
    one of ours."""
    if not cursor:
        return "", ""
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, UnicodeError, ValueError) as exc:
        raise ValueError("invalid cursor") from exc
    if not isinstance(position, list) or len(position) != 2:
        raise ValueError("invalid cursor")
    direction, anchor = position
    if direction not in ("after", "before") or not isinstance(anchor, str):
        raise ValueError("invalid cursor")
    return direction, anchor


def _cursor_link(public_url: str) -> Callable[[str, str], str]:
    """Builds this request's URL again with a cursor: every other argument kept."""

    def link(direction: str, anchor: str) -> str:
        args = [(k, v) for k, v in request.args.items(multi=True) if k != "cursor"]
        cursor = base64.urlsafe_b64encode(json.dumps([direction, anchor]).encode()).decode()
        return f"{public_url}{request.path}?{urlencode([*args, ('cursor', cursor)])}"

    return link


def _take(rows: Iterator[str], count: int) -> list[str]:
    taken = []
    for row in rows:
        taken.append(row)
        if len(taken) >= count:
            break
    return taken
