"""Pre-signed download URLs: the transcript data, refused (403) once the URL has expired."""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Response, request

from emulator.core import emulator, error
from emulator.state import download_signature

bp = Blueprint("downloads", __name__)


@bp.get("/_emulator/download/<transcript_id>")
def download(transcript_id: str) -> Response:
    emu = emulator()
    emu.gateway("download")
    expires = request.args.get("expires", "0")
    expires_at = int(expires) if expires.isdigit() else 0
    good = download_signature(emu.url_secret, transcript_id, expires_at)
    if not hmac.compare_digest(request.args.get("sig", ""), good) or expires_at < time.time():
        return error(403, "Request has expired or the signature does not match.")
    transcript = emu.state.transcripts.get(transcript_id)
    if transcript is None or transcript.data is None:
        return error(404, "Not found.")
    return Response(transcript.data, mimetype="application/json")
