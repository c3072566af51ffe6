"""Secrets stay secret: a full run with errors and refusals, then every log and error is read."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import requests

from harness import System, free_port, http_ready, recording_done, wait_for
from tests.helpers import FAST_RECOVERY


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_reaches_a_log_or_an_error_message(
    start_system: Any, tmp_path: Path, log_format: str
) -> None:
    api_key = f"rk-{secrets.token_hex(16)}"
    webhook_key = base64.b64encode(secrets.token_bytes(24)).decode()
    api_token = secrets.token_hex(16)
    flower_password = secrets.token_hex(12)
    callback_key = base64.b64encode(secrets.token_bytes(24)).decode()
    callback_token = secrets.token_hex(16)  # in CALLBACK_URLS' query: shown to no job viewer
    callback_url = f"http://127.0.0.1:{free_port()}/hook?token={callback_token}"  # none listens
    system: System = start_system(
        api_key=api_key,
        RECALL_WEBHOOK_SECRET=f"whsec_{webhook_key}",
        API_TOKENS=api_token,
        FLOWER_BASIC_AUTH=f"admin:{flower_password}",
        CALLBACK_URLS=callback_url,
        CALLBACK_SECRET=f"whsec_{callback_key}",
        CALLBACK_ALLOWED_NETWORKS="127.0.0.1/32",
        LOG_FORMAT=log_format,
        **FAST_RECOVERY,
    )
    flower_port = free_port()
    system.start("flower", ["flower", "--port", str(flower_port)])
    flower_url = f"http://127.0.0.1:{flower_port}/"
    wait_for(http_ready(flower_url), 30, what="flower up")
    assert requests.get(flower_url, timeout=5).status_code == 401
    assert requests.get(flower_url, auth=("admin", flower_password), timeout=5).status_code == 200

    api = f"{system.receiver_url}/api/v1/jobs"
    auth = {"Authorization": f"Bearer {api_token}"}
    emulator = system.emulator
    for recording_id in ("ok", "retried", "refused", "expired", "by-api"):
        emulator.recording(recording_id)
    emulator.fault(target="create", action="status", status=503, times=2, recording_id="retried")
    emulator.fault(target="create", action="status", status=400, times=2, recording_id="refused")
    emulator.fault(target="download", action="status", status=403)
    emulator.fault(target="download", action="status", status=503)
    emulator.fault(target="download", action="reset")  # urllib3 logs its retry, with the URL
    for recording_id in ("ok", "retried", "refused", "expired"):
        hook = system.post(recording_done(recording_id), secret=f"whsec_{webhook_key}")
        assert hook.status_code == 200
    assert system.post(recording_done("forged")).status_code == 401  # another secret
    bad_token = {"Authorization": f"Bearer {api_token[:-1]}x"}
    assert requests.get(api, headers=bad_token, timeout=5).status_code == 401
    created = requests.post(api, json={"recording_id": "by-api"}, headers=auth, timeout=5)
    assert created.status_code in (200, 201, 202)

    def finished() -> list[dict[str, Any]]:
        page = requests.get(api, params={"limit": 50}, headers=auth, timeout=5).json()["jobs"]
        return [job for job in page if job["state"] in ("done", "failed")]

    def attempted() -> bool:  # every job's callback tried (and failed: no one listens)
        return all(c["attempts"] for job in finished() for c in job["callbacks"] or [{}])

    wait_for(lambda: len(finished()) == 5, 60, what="all five jobs finished")
    wait_for(attempted, 30, what="every job's callback attempted")
    jobs = finished()
    assert sorted(job["state"] for job in jobs) == ["done"] * 4 + ["failed"]

    # Pre-signed download URLs carry their signature in `sig=`; none may be logged.
    hidden = [api_key, webhook_key, api_token, flower_password, "sig=", callback_key]
    hidden += [callback_token, "token="]
    system.stop()
    texts = {path.name: path.read_text(errors="replace") for path in tmp_path.glob("*.log")}
    texts.update({f"job {job['id']}": repr(job) for job in jobs})
    texts = {name: text for name, text in texts.items() if name != "emulator.log"}  # Recall's
    assert {"receiver.log", "worker-w1.log", "flower.log"} <= set(texts)
    assert "injected 400" in "".join(texts.values())  # the errors were logged, and read here
    for name, text in texts.items():
        for secret in hidden:
            assert secret not in text, f"a secret appears in {name}"
    if log_format == "json":  # one object per line, the pipeline's with the job they are about
        lines = [
            json.loads(line) for line in texts["worker-w1.log"].splitlines() if line[:1] == "{"
        ]
        steps = [line for line in lines if line.get("logger") == "tasks.pipeline"]
        assert steps and all({"job_id", "recording_id", "step", "outcome"} <= set(s) for s in steps)
        persisted = [s for s in steps if s["outcome"] == "persisted"]
        assert persisted and all(s.get("transcript_id") for s in persisted)
