"""Controls for tests, benchmarks and a newcomer's first run (no auth; loopback only)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from emulator.config import TUNABLE
from emulator.core import emulator, error

bp = Blueprint("controls", __name__, url_prefix="/_emulator")

FAULT_TARGETS = {"create", "retrieve", "list", "delete", "download", "webhook", "transcript"}
FAULT_ACTIONS = {
    "status",
    "latency",
    "reset",
    "lose_response",
    "delay_response",
    "drop",
    "duplicate",
    "delay",
    "fail",
}


@bp.post("/recordings")
def add_recording() -> Response:
    """One finished recording (`id` optional), or many (`ids`); each sends recording.done."""
    emu = emulator()
    body = request.get_json(silent=True) or {}
    ids = body.get("ids") or [body.get("id")]
    recordings = [emu.state.add_recording(recording_id) for recording_id in ids]
    if body.get("send_done", True):
        for recording in recordings:
            emu.send_webhook(emu.event("recording.done", recording["id"]), recording["id"])
    return jsonify(recordings if "ids" in body else recordings[0])


@bp.post("/transcripts")
def seed_transcripts() -> Response:
    """Put existing transcripts on a recording (e.g. to bring it to the limit)."""
    emu = emulator()
    body = request.get_json(silent=True) or {}
    recording_id = emu.state.add_recording(body.get("recording_id"))["id"]
    status = body.get("status", "done")
    made = []
    for _ in range(int(body.get("count", 1))):
        transcript = emu.state.create_transcript(
            recording_id, {"provider": {"recallai_async": {}}, "metadata": body.get("metadata")}
        )
        if status != "processing":
            failed = "provider_connection_failed" if status == "failed" else None
            emu.state.finish(transcript.id, failed)
        made.append(emu.view(transcript))
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
