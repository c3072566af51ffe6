"""The jobs API against its own OpenAPI document: valid 3.1, and Schemathesis finds nothing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_spec_validator import validate

from harness import System

CALLBACK_SECRET = "whsec_dGVzdC1jYWxsYmFjay1zZWNyZXQ="
SCHEMATHESIS_EXAMPLES = 150  # per operation and phase: ~2,000 cases, about 15 s


def test_the_document_is_valid_openapi_3_1(start_system: Callable[..., System]) -> None:
    system = start_system(workers=0)
    document: dict[str, Any] = requests.get(f"{system.receiver_url}/openapi.json", timeout=5).json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    operations = {
        (method.upper(), path) for path, item in document["paths"].items() for method in item
    }
    assert operations >= {
        ("POST", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/jobs/{job_id}"),
        ("POST", "/api/v1/jobs/{job_id}/retry"),
        ("POST", "/webhooks/recall"),
        ("GET", "/api/v1/jobs/{job_id}/transcript"),
    }


@pytest.mark.parametrize("callbacks", [False, True], ids=["default-settings", "callbacks-on"])
def test_schemathesis_with_every_check_finds_no_failure(
    start_system: Callable[..., System], tmp_path: Path, callbacks: bool
) -> None:
    """Every phase (examples, coverage, fuzzing, stateful through the document's links) and
    every check, against the real receiver, authenticated as a client would be: with the
    default settings (no CALLBACK_SECRET, so no `callback_url`) and with callbacks on."""
    system = start_system(workers=0, **({"CALLBACK_SECRET": CALLBACK_SECRET} if callbacks else {}))
    document = requests.get(f"{system.receiver_url}/openapi.json", timeout=5).json()
    offered = document["components"]["schemas"]["JobRequest"]["properties"]
    assert ("callback_url" in offered) is callbacks
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{system.receiver_url}/openapi.json",
            "--checks",
            "all",
            "--header",
            "Authorization: Bearer test-token",
            "--include-path-regex",
            "^/api/v1/",
            "--max-examples",
            str(SCHEMATHESIS_EXAMPLES),
            "--seed",
            "20261126",
            "--workers",
            "1",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout and " failed" not in run.stdout
