"""docker-compose.yml, checked without a Docker engine: every command is a real subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from recall_transcribe.cli import _parser
from tasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_every_app_service_runs_a_real_subcommand_with_valid_arguments(
    compose: dict[str, Any],
) -> None:
    parser = _parser()
    for name in ("receiver", "worker", "flower", "emulator"):
        command = compose["services"][name]["command"]
        assert command[0] == name
        if name != "worker":  # worker arguments pass through to celery
            parser.parse_args(command)


def test_settings_in_compose_are_settings_we_read(compose: dict[str, Any]) -> None:
    known = set(Settings.model_fields)
    for service in ("receiver", "worker", "flower", "emulator"):
        assert set(compose["services"][service]["environment"]) <= known, service


def test_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_workers_scale_and_the_emulator_sits_behind_a_profile(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N works
    assert compose["services"]["emulator"]["profiles"] == ["emulator"]


def test_flower_requires_basic_auth(compose: dict[str, Any]) -> None:
    assert "FLOWER_BASIC_AUTH" in compose["services"]["flower"]["environment"]
