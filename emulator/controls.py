"""Controls for tests, benchmarks and a newcomer's first run (no auth; loopback only)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, jsonify, request

from emulator.config import TUNABLE
from emulator.core import emulator, error
from emulator.state import FINISHED, RECORDING_STATUSES, AlreadyFinished

bp = Blueprint("controls", __name__, url_prefix="/_emulator")

FAULT_TARGETS = {
    "create",
    "retrieve",
    "list",
    "delete",
    "recordings",
    "download",
    "webhook",
    "transcript",
}
FAULT_ACTIONS = {
    "status",
    "latency",
    "reset",
    "hang",
    "lose_response",
    "delay_response",
    "drop",
    "duplicate",
    "delay",
    "fail",
}


@bp.post("/recordings")
def add_recording() -> Response:
    """One recording (`id` optional), many (`ids`), or a backfill (`count` spread evenly from
    `created_from` to `created_to`); each finished one sends recording.done unless `send_done`
    is false (or `silent` true). See `_recording_fields` for what else a body may say."""
    emu = emulator()
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        return error(400, "a JSON object is expected")
    try:
        fields = _recording_fields(body)
        if "count" in body:
            ids, spread = _backfill(body, fields)
        else:
            ids = list(body.get("ids") or [body.get("id")])
            spread = [fields] * len(ids)
    except (TypeError, ValueError) as exc:
        return error(400, str(exc))
    recordings = emu.state.add_recordings(ids, spread)
    transcript = body.get("transcript")
    if transcript:
        for recording in recordings:
            _seed(recording.id, 1, "done" if transcript is True else str(transcript), None)
    if _send_done(body):
        for recording in recordings:
            if recording.status == "done":
                emu.send_webhook(emu.event("recording.done", recording.id), recording.id)
    if "count" in body:
        return jsonify(created=len(recordings), ids=[r.id for r in recordings])
    views = [emu.recording_view(r) for r in recordings]
    return jsonify(views if "ids" in body else views[0])


@bp.post("/recordings/<recording_id>/finish")
def finish_recording(recording_id: str) -> Response:
    """A processing (or paused) recording ends: `status` done (default) or failed (`sub_code`),
    at `completed_at` (default now); recording.done is sent unless `send_done` is false (or
    `silent` true): a webhook that never arrived."""
    emu = emulator()
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        return error(400, "a JSON object is expected")
    status = body.get("status", "done")
    if status not in FINISHED:
        return error(400, f"status must be one of {list(FINISHED)}")
    try:
        at = _when(body, "completed_at")
        recording = emu.state.finish_recording(recording_id, status, body.get("sub_code"), at)
    except KeyError:
        return error(404, "Not found.")
    except AlreadyFinished as exc:
        return error(409, str(exc))
    except ValueError as exc:
        return error(400, str(exc))
    if status == "done" and _send_done(body):
        emu.send_webhook(emu.event("recording.done", recording_id), recording_id)
    return jsonify(emu.recording_view(recording))


def _send_done(body: dict[str, Any]) -> bool:
    return bool(body.get("send_done", True)) and not body.get("silent", False)


def _when(body: dict[str, Any], name: str) -> float | None:
    """An ISO 8601 date-time of the body (no offset: UTC) as a timestamp, or None."""
    text = body.get(name)
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        raise ValueError(f"{name}: not an ISO 8601 date-time: {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _strings(body: dict[str, Any], name: str) -> dict[str, str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{name}: an object of strings to strings")
    return value


def _recording_fields(body: dict[str, Any]) -> dict[str, Any]:
    """`created_at` (ISO; past times allowed), `status` (default done), `sub_code`,
    `completed_at` (ISO) or `duration_s` (default 1800, never past now), `metadata` and
    `bot_metadata` (strings), `bot_id` (default a new bot; null: none, a Desktop SDK upload),
    `desktop_sdk_upload_id`."""
    status = body.get("status", "done")
    if status not in RECORDING_STATUSES:
        raise ValueError(f"status must be one of {list(RECORDING_STATUSES)}")
    fields: dict[str, Any] = {
        "created_at": _when(body, "created_at"),
        "status": status,
        "sub_code": body.get("sub_code"),
        "completed_at": _when(body, "completed_at"),
        "duration_s": float(body.get("duration_s", 1800.0)),
        "metadata": _strings(body, "metadata"),
        "bot_metadata": _strings(body, "bot_metadata"),
        "desktop_sdk_upload_id": body.get("desktop_sdk_upload_id"),
    }
    if "bot_id" in body:
        fields["bot_id"] = None if body["bot_id"] is None else str(body["bot_id"])
    return fields


BACKFILL_MAX = 100_000


def _backfill(
    body: dict[str, Any], fields: dict[str, Any]
) -> tuple[list[str | None], list[dict[str, Any]]]:
    """`count` recordings created evenly from `created_from` (included) to `created_to`
    (default now), ids `id_prefix` + index when a prefix is given (else random)."""
    count = int(body["count"])
    if not 1 <= count <= BACKFILL_MAX:
        raise ValueError(f"count must be 1 to {BACKFILL_MAX}")
    start, end = _when(body, "created_from"), _when(body, "created_to")
    end = time.time() if end is None else end
    start = end if start is None else start
    if start > end:
        raise ValueError("created_from is after created_to")
    prefix = body.get("id_prefix")
    ids: list[str | None] = [f"{prefix}{i}" if prefix else None for i in range(count)]
    step = (end - start) / count
    return ids, [{**fields, "created_at": start + step * i} for i in range(count)]


def _seed(recording_id: str, count: int, status: str, metadata: Any) -> list[dict[str, Any]]:
    """`count` existing transcripts of the recording, `status` done, failed or processing."""
    emu = emulator()
    made = []
    for _ in range(count):
        transcript = emu.state.create_transcript(
            recording_id, {"provider": {"recallai_async": {}}, "metadata": metadata}
        )
        if status != "processing":
            failed = "provider_connection_failed" if status == "failed" else None
            emu.state.finish(transcript.id, failed)
        made.append(emu.view(transcript))
    return made


@bp.post("/transcripts")
def seed_transcripts() -> Response:
    """Put existing transcripts on a recording (e.g. to bring it to the limit, or to show one
    in List Recordings' `media_shortcuts.transcript`)."""
    emu = emulator()
    body = request.get_json(silent=True) or {}
    recording_id = emu.state.add_recording(body.get("recording_id")).id
    made = _seed(
        recording_id, int(body.get("count", 1)), body.get("status", "done"), body.get("metadata")
    )
    return jsonify(made)


@bp.get("/recordings/<recording_id>/transcripts")
def recording_transcripts(recording_id: str) -> Response:
    emu = emulator()
    with emu.state.lock:
        transcripts = [t for t in emu.state.transcripts.values() if t.recording_id == recording_id]
        return jsonify([emu.view(t) for t in transcripts])


@bp.get("/transcripts/<transcript_id>/data")
def transcript_bytes(transcript_id: str) -> Response:
    transcript = emulator().state.transcripts.get(transcript_id)
    if transcript is None or transcript.data is None:
        return error(404, "Not found.")
    return Response(transcript.data, mimetype="application/json")


@bp.post("/faults")
def add_faults() -> Response:
    body = request.get_json(silent=True)
    specs = body if isinstance(body, list) else [body]
    added = []
    for spec in specs:
        if not isinstance(spec, dict) or spec.get("target") not in FAULT_TARGETS:
            return error(400, f"target must be one of {sorted(FAULT_TARGETS)}")
        if spec.get("action") not in FAULT_ACTIONS:
            return error(400, f"action must be one of {sorted(FAULT_ACTIONS)}")
        try:
            added.append(emulator().state.add_fault(spec).id)
        except TypeError as exc:
            return error(400, str(exc))
    return jsonify(added=added)


@bp.delete("/faults")
def clear_faults() -> Response:
    state = emulator().state
    with state.lock:
        state.faults.clear()
    return Response(status=204)


@bp.patch("/config")
def patch_config() -> Response:
    emu = emulator()
    body = request.get_json(silent=True) or {}
    for name in TUNABLE:
        if name in body:
            setattr(emu.config, name, type(getattr(emu.config, name))(body[name]))
    if "webhook_urls" in body:
        emu.config.webhook_urls[:] = list(body["webhook_urls"])
    emu.sender.retry_scale = emu.config.retry_scale
    return jsonify({name: getattr(emu.config, name) for name in TUNABLE})


@bp.get("/stats")
def stats() -> Response:
    return jsonify(emulator().state.stats())


@bp.get("/webhooks")
def webhook_log() -> Response:
    limit = request.args.get("limit", default=1000, type=int)
    return jsonify(list(emulator().sender.log)[-limit:])


@bp.post("/reset")
def reset() -> Response:
    emu = emulator()
    emu.scheduler.clear()
    emu.state.reset()
    emu.quotas.reset()
    emu.sender.log.clear()
    return Response(status=204)
