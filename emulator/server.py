"""The emulator's HTTP surface: Recall's endpoints under /api/v1, test controls under /_emulator."""

from __future__ import annotations

import base64
import hmac
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, abort, jsonify, request
from werkzeug.serving import WSGIRequestHandler, make_server

from emulator.scheduler import Scheduler
from emulator.state import (
    TRANSCRIPT_LIMIT,
    EmulatorState,
    Fault,
    Transcript,
    download_signature,
    iso,
)
from emulator.webhooks import WebhookSender

log = logging.getLogger(__name__)

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


@dataclass
class EmulatorConfig:
    """How the emulator behaves; most fields can change at run time (PATCH /_emulator/config)."""

    public_url: str
    api_key: str | None = None
    webhook_urls: list[str] = field(default_factory=list)
    webhook_secret: str | None = None
    legacy_headers: bool = False
    processing_s: float = 1.0
    latency_s: float = 0.0
    retry_scale: float = 1.0
    url_ttl_s: float = 6 * 3600
    page_size: int = 10
    seed: int | None = None


def create_emulator(config: EmulatorConfig) -> Flask:
    """The emulator app; `app.extensions["emulator"]` holds its state for in-process use."""
    app = Flask("recall-emulator")
    state = EmulatorState(config.seed)
    scheduler = Scheduler()
    sender = WebhookSender(
        scheduler,
        config.webhook_urls,
        config.webhook_secret,
        config.retry_scale,
        config.legacy_headers,
    )
    url_secret = os.urandom(16)
    app.extensions["emulator"] = state
    app.extensions["emulator_scheduler"] = scheduler

    # -- helpers --------------------------------------------------------------------------------

    def error(status: int, detail: str, retry_after: float | None = None) -> Response:
        response = jsonify(detail=detail)
        response.status_code = status
        if retry_after is not None:
            response.headers["Retry-After"] = str(
                int(retry_after) if retry_after >= 1 else retry_after
            )
        return response

    def check_auth() -> None:
        given = request.headers.get("Authorization", "").strip()
        given = given.removeprefix("Token ").strip()
        if not given or (config.api_key and not hmac.compare_digest(given, config.api_key)):
            abort(error(401, "Invalid API key."))

    def gateway(target: str, recording_id: str | None = None) -> Fault | None:
        """Latency and injected faults that happen in front of the API (never replayed)."""
        state.calls[target] += 1
        if config.latency_s:
            time.sleep(config.latency_s)
        fault = state.take_fault(target, recording_id)
        if fault is None:
            return None
        if fault.action == "latency":
            time.sleep(fault.seconds)
            return None
        if fault.action == "status":
            abort(error(fault.status, f"injected {fault.status}", fault.retry_after))
        if fault.action == "reset":  # the connection closes before any answer; nothing happened
            abort(drop_connection())
        return fault

    def drop_connection() -> Response:
        sock = request.environ.get("werkzeug.socket")
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        return Response(status=204)

    def download_url(transcript: Transcript) -> str | None:
        if transcript.status != "done":
            return None
        expires = int(time.time() + config.url_ttl_s)
        query = urlencode(
            {"expires": expires, "sig": download_signature(url_secret, transcript.id, expires)}
        )
        return f"{config.public_url}/_emulator/download/{transcript.id}?{query}"

    def view(transcript: Transcript) -> dict[str, Any]:
        recording = state.recordings.get(transcript.recording_id, {})
        return {
            "id": transcript.id,
            "recording": {"id": transcript.recording_id, "metadata": recording.get("metadata", {})},
            "created_at": iso(transcript.created_at),
            "expires_at": iso(transcript.created_at + 7 * 86400),
            "status": {
                "code": transcript.status,
                "sub_code": transcript.sub_code,
                "updated_at": iso(transcript.updated_at),
            },
            "data": {"download_url": download_url(transcript), "provider_data_download_url": None},
            "diarization": transcript.diarization,
            "metadata": transcript.metadata,
            "provider": transcript.provider,
        }

    def event(name: str, recording_id: str, transcript: Transcript | None = None) -> dict[str, Any]:
        recording = state.recordings[recording_id]
        status = transcript.status if transcript else "done"
        data: dict[str, Any] = {
            "data": {
                "code": status,
                "sub_code": transcript.sub_code if transcript else None,
                "updated_at": iso(time.time()),
            },
            "recording": {"id": recording_id, "metadata": recording["metadata"]},
            "bot": recording["bot"],
        }
        if transcript is not None:
            data["transcript"] = {"id": transcript.id, "metadata": transcript.metadata}
        return {"event": name, "data": data}

    def send_webhook(payload: dict[str, Any], recording_id: str) -> None:
        fault = state.take_fault("webhook", recording_id)
        if fault is not None and fault.action == "drop":
            return
        delay = fault.seconds if fault is not None and fault.action == "delay" else 0.0
        copies = 2 if fault is not None and fault.action == "duplicate" else 1
        sender.send(payload, delay=delay, copies=copies)

    def complete(transcript_id: str) -> None:
        transcript = state.transcripts.get(transcript_id)
        if transcript is None:
            return
        fault = state.take_fault("transcript", transcript.recording_id)
        failed = fault.sub_code if fault is not None and fault.action == "fail" else None
        finished = state.finish(transcript_id, failed)
        if finished is not None:
            name = "transcript.failed" if failed else "transcript.done"
            send_webhook(event(name, finished.recording_id, finished), finished.recording_id)

    # -- Recall's API -----------------------------------------------------------------------------

    @app.post("/api/v1/recording/<recording_id>/create_transcript/")
    def create_transcript(recording_id: str) -> Response:
        check_auth()
        fault = gateway("create", recording_id)
        key = request.headers.get("Idempotency-Key")
        scope = (f"POST {request.path}", key) if key else None
        if scope is not None:
            outcome, stored = state.idempotency_begin(scope)
            if outcome == "running":
                return error(409, "A request with this Idempotency-Key is still running.")
            if outcome == "replay":
                response = jsonify(stored[1])
                response.status_code = stored[0]
                response.headers["Idempotent-Replayed"] = "true"
                return response
        status, body = _create(recording_id)
        if scope is not None:
            state.idempotency_end(scope, status, body)
        if fault is not None and fault.action == "lose_response":
            return drop_connection()
        if fault is not None and fault.action == "delay_response":
            time.sleep(fault.seconds)  # the transcript exists; its webhook may now arrive first
        response = jsonify(body)
        response.status_code = status
        return response

    def _create(recording_id: str) -> tuple[int, dict[str, Any]]:
        if recording_id not in state.recordings:
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
        with state.lock:
            if state.live_count(recording_id) >= TRANSCRIPT_LIMIT:
                return 400, {
                    "detail": f"This recording already has {TRANSCRIPT_LIMIT} transcripts. "
                    "Delete an existing transcript before creating a new one."
                }
            transcript = state.create_transcript(recording_id, body)
        scheduler.call_later(config.processing_s, lambda: complete(transcript.id))
        return 201, view(transcript)

    @app.get("/api/v1/transcript/<transcript_id>/")
    def retrieve_transcript(transcript_id: str) -> Response:
        check_auth()
        gateway("retrieve")
        transcript = state.transcripts.get(transcript_id)
        if transcript is None:
            return error(404, "Not found.")
        return jsonify(view(transcript))

    @app.get("/api/v1/transcript/")
    def list_transcripts() -> Response:
        check_auth()
        recording_id = request.args.get("recording_id")
        gateway("list", recording_id)
        status_code = request.args.get("status_code")
        after = request.args.get("created_at_after")
        before = request.args.get("created_at_before")
        with state.lock:
            rows = sorted(state.transcripts.values(), key=lambda t: (t.created_at, t.id))
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
        page = rows[offset : offset + config.page_size]

        def link(to: int) -> str:
            args = {k: v for k, v in request.args.items() if k != "cursor"}
            args["cursor"] = base64.urlsafe_b64encode(str(to).encode()).decode()
            return f"{config.public_url}{request.path}?{urlencode(args)}"

        return jsonify(
            next=link(offset + config.page_size) if offset + config.page_size < len(rows) else None,
            previous=link(max(0, offset - config.page_size)) if offset > 0 else None,
            results=[view(t) for t in page],
        )

    @app.delete("/api/v1/transcript/<transcript_id>/")
    def delete_transcript(transcript_id: str) -> Response:
        check_auth()
        gateway("delete")
        with state.lock:
            transcript = state.transcripts.get(transcript_id)
            if transcript is None or transcript.status == "deleted":
                return error(404, "Not found.")
            transcript.status, transcript.data = "deleted", None
            transcript.updated_at = time.time()
        return Response(status=204)

    @app.get("/_emulator/download/<transcript_id>")
    def download(transcript_id: str) -> Response:
        gateway("download")
        expires = request.args.get("expires", "0")
        sig = request.args.get("sig", "")
        good = download_signature(
            url_secret, transcript_id, int(expires) if expires.isdigit() else 0
        )
        if not hmac.compare_digest(sig, good) or int(expires or 0) < time.time():
            return error(403, "Request has expired or the signature does not match.")
        transcript = state.transcripts.get(transcript_id)
        if transcript is None or transcript.data is None:
            return error(404, "Not found.")
        return Response(transcript.data, mimetype="application/json")

    # -- controls for tests, benchmarks and a newcomer's first run -------------------------------

    @app.post("/_emulator/recordings")
    def add_recording() -> Response:
        """One finished recording (`id` optional), or many (`ids`); each sends recording.done."""
        body = request.get_json(silent=True) or {}
        ids = body.get("ids") or [body.get("id")]
        recordings = [state.add_recording(recording_id) for recording_id in ids]
        if body.get("send_done", True):
            for recording in recordings:
                send_webhook(event("recording.done", recording["id"]), recording["id"])
        return jsonify(recordings if "ids" in body else recordings[0])

    @app.post("/_emulator/transcripts")
    def seed_transcripts() -> Response:
        """Put existing transcripts on a recording (e.g. to bring it to the limit)."""
        body = request.get_json(silent=True) or {}
        recording_id = state.add_recording(body.get("recording_id"))["id"]
        made = []
        for _ in range(int(body.get("count", 1))):
            transcript = state.create_transcript(
                recording_id, {"provider": {"recallai_async": {}}, "metadata": body.get("metadata")}
            )
            status = body.get("status", "done")
            if status != "processing":
                state.finish(
                    transcript.id, "provider_connection_failed" if status == "failed" else None
                )
            made.append(view(transcript))
        return jsonify(made)

    @app.get("/_emulator/recordings/<recording_id>/transcripts")
    def recording_transcripts(recording_id: str) -> Response:
        with state.lock:
            rows = [view(t) for t in state.transcripts.values() if t.recording_id == recording_id]
        return jsonify(rows)

    @app.get("/_emulator/transcripts/<transcript_id>/data")
    def transcript_bytes(transcript_id: str) -> Response:
        transcript = state.transcripts.get(transcript_id)
        if transcript is None or transcript.data is None:
            return error(404, "Not found.")
        return Response(transcript.data, mimetype="application/json")

    @app.post("/_emulator/faults")
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
                added.append(state.add_fault(spec).id)
            except TypeError as exc:
                return error(400, str(exc))
        return jsonify(added=added)

    @app.delete("/_emulator/faults")
    def clear_faults() -> Response:
        with state.lock:
            state.faults.clear()
        return Response(status=204)

    @app.patch("/_emulator/config")
    def patch_config() -> Response:
        body = request.get_json(silent=True) or {}
        for name in ("processing_s", "latency_s", "retry_scale", "url_ttl_s", "page_size"):
            if name in body:
                setattr(config, name, type(getattr(config, name))(body[name]))
        if "webhook_urls" in body:
            config.webhook_urls[:] = list(body["webhook_urls"])
        sender.retry_scale = config.retry_scale
        return jsonify(
            {
                k: getattr(config, k)
                for k in ("processing_s", "latency_s", "retry_scale", "url_ttl_s", "page_size")
            }
        )

    @app.get("/_emulator/stats")
    def stats() -> Response:
        return jsonify(state.stats())

    @app.get("/_emulator/webhooks")
    def webhook_log() -> Response:
        limit = request.args.get("limit", default=1000, type=int)
        return jsonify(list(sender.log)[-limit:])

    @app.post("/_emulator/reset")
    def reset() -> Response:
        scheduler.clear()
        state.reset()
        sender.log.clear()
        return Response(status=204)

    return app


class KeepAliveHandler(WSGIRequestHandler):
    """HTTP/1.1 with persistent connections, as Recall's API serves (werkzeug's default is 1.0)."""

    protocol_version = "HTTP/1.1"


def serve(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve the emulator with a threaded HTTP server until interrupted."""
    server = make_server(
        host, port, create_emulator(config), threaded=True, request_handler=KeepAliveHandler
    )
    log.info("Recall emulator on http://%s:%d", host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
