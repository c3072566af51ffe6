"""docker-compose.yml, checked without a Docker engine: every command is a real subcommand."""

from __future__ import annotations

import json
import re
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


_VARIABLE = re.compile(r"\$\{([A-Z_]+)(?::([-?])([^}]*))?\}")


def render(text: str, env: dict[str, str]) -> dict[str, Any]:
    """docker compose's interpolation of the forms the file uses: ${X}, ${X:-default} and
    ${X:?error}, which refuses to render (and compose to start) when X is unset or empty."""

    def value(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if env.get(name):
            return env[name]
        if kind == "?":
            raise LookupError(f"{name}: {rest}")
        return rest if kind == "-" else ""

    rendered: dict[str, Any] = yaml.safe_load(_VARIABLE.sub(value, text))
    return rendered


def env_file(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


SECRETS = {
    "RECALL_API_KEY": "k",
    "RECALL_WEBHOOK_SECRET": "whsec_c2VjcmV0",
    "FLOWER_BASIC_AUTH": "a:b",
    "METRICS_TOKEN": "m",
}


@pytest.mark.parametrize("missing", list(SECRETS))
def test_compose_refuses_to_start_without_a_secret_it_needs(missing: str) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    env = dict(SECRETS)
    render(text, env)
    with pytest.raises(LookupError, match=missing):
        render(text, {k: v for k, v in env.items() if k != missing})
    assert not re.search(r"whsec_[A-Za-z0-9+/=]{8,}", text)  # no default secret in the file


def test_the_emulator_profile_runs_without_recall_and_every_setting_comes_from_env() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    dev = env_file(ROOT / "emulator.env")
    assert dev["COMPOSE_PROFILES"] == "emulator"
    yours = {"FLOWER_BASIC_AUTH": "a:b", "METRICS_TOKEN": "m"}
    services = render(text, {**dev, **yours})["services"]
    assert services["worker"]["environment"]["RECALL_API_BASE_URL"] == "http://emulator:8500"
    mine = {"REDIS_URL": "redis://elsewhere:6379/1", "TRANSCRIPTS_STORE": "/mnt/t"}
    services = render(text, {**dev, **mine, **yours})["services"]
    for name in ("receiver", "worker", "flower"):
        environment = services[name]["environment"]
        assert {k: environment[k] for k in mine} == mine
        assert services[name]["healthcheck"]["test"][0] == "CMD", name


def test_the_image_gives_its_user_the_transcripts_volume() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "mkdir -p /data/transcripts" in dockerfile and "chown -R app /data" in dockerfile
    assert "USER app" in dockerfile


def test_the_monitoring_profile_scrapes_the_receiver_and_charts_only_metrics_it_serves(
    compose: dict[str, Any], rclient: Any
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from tasks.jobs.states import Step
    from tasks.metrics import Metrics, RedisCollector

    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["profiles"] == ["monitoring"]
        assert all(p.startswith("127.0.0.1:") for p in compose["services"][name]["ports"])
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["scrape_configs"]
    assert scrape[0]["metrics_path"] == "/metrics"
    token_file = scrape[0]["authorization"]["credentials_file"]
    (mounted,) = compose["services"]["prometheus"]["configs"]
    assert mounted["target"] == token_file and mounted["source"] in compose["configs"]
    assert "METRICS_TOKEN" in compose["configs"][mounted["source"]]["content"]
    assert scrape[0]["static_configs"][0]["targets"] == ["receiver:8000"]
    metrics = Metrics(rclient)  # one of each, so every family has samples to name
    metrics.recall_request("create", 201)
    metrics.rate_limited("list", 1.0)
    metrics.step(Step.CREATE, 0.02)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(rclient))
    served = {
        sample.name
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/recall-transcribe.json").read_text())
    charted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"recall_transcribe_[a-z_]+", target["expr"])
    }
    assert charted and charted <= served, charted - served


def test_the_failover_profile_runs_two_replicas_and_three_sentinels_the_apps_find() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    (suggested,) = re.findall(r"REDIS_SENTINELS=(\S+)", text)
    env = {**SECRETS, "REDIS_SENTINELS": suggested, "REDIS_MIN_REPLICAS": "1"}
    services = render(text, env)["services"]
    sentinels = [name for name in services if name.startswith("sentinel-")]
    assert len(sentinels) == 3
    assert sorted(f"{name}:26379" for name in sentinels) == sorted(suggested.split(","))
    replicas = [name for name in services if name.startswith("redis-replica")]
    assert len(replicas) == 2  # the promoted one still has a replica to confirm its writes
    for name in [*sentinels, *replicas]:
        assert services[name]["profiles"] == ["failover"]
        assert services[name]["restart"] == "unless-stopped"
    for name in replicas:
        command = services[name]["command"]
        assert command[command.index("--replicaof") + 1 :] == ["redis", "6379"]
        assert command[command.index("--replica-announce-ip") + 1] == name
    for name in ("redis", *replicas):  # whichever is the primary refuses writes alone
        command = services[name]["command"]
        assert command[command.index("--min-replicas-to-write") + 1] == "1"
        assert command[command.index("--appendonly") + 1] == "yes"
    assert services["redis"]["restart"] == "unless-stopped"
    config = render(text, env)["configs"]["sentinel"]["content"]
    master = Settings.model_fields["REDIS_SENTINEL_MASTER"].default
    assert f"sentinel monitor {master} redis 6379 2" in config  # a majority of the three
    settings = Settings(**{"REDIS_SENTINELS": suggested, "REDIS_URL": "redis://redis:6379/0"})
    assert settings.sentinels == [(name, 26379) for name in sorted(sentinels)]
    for name in ("receiver", "worker", "flower"):
        assert services[name]["environment"]["REDIS_SENTINELS"] == suggested
        assert services[name]["environment"]["REDIS_MIN_REPLICAS"] == "1"


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line.startswith("FROM "):
            stages.append([])
        if line and not line.startswith("#"):
            stages[-1].append(line)
    return stages


def test_the_image_installs_the_built_wheel_and_runs_it_unprivileged_with_a_healthcheck() -> None:
    build, runtime = dockerfile_stages()
    assert any(line.startswith("RUN pip wheel") for line in build)
    assert not any(line.startswith("COPY") and "--from=build" not in line for line in runtime)
    (install,) = [line for line in runtime if line.startswith("RUN pip install")]
    assert "/wheels/*.whl" in install and " -e " not in install
    (user,) = [line for line in runtime if line.startswith("USER ")]
    assert user.split()[1] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK ") for line in runtime)


def image_commands(compose: dict[str, Any]) -> list[list[str]]:
    """Every command the image's console script is given: each app service's command and
    healthcheck in compose, and the Dockerfile's HEALTHCHECK."""
    (entrypoint,) = [line for line in dockerfile_stages()[-1] if line.startswith("ENTRYPOINT ")]
    assert json.loads(entrypoint.split(" ", 1)[1]) == ["recall-transcribe"]
    commands = []
    for service in compose["services"].values():
        if service.get("image") != "recall-transcribe:latest":
            continue
        commands.append(["recall-transcribe", *service["command"]])
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD", check
        commands.append(check[1:])
    (healthcheck,) = [line for line in dockerfile_stages()[-1] if line.startswith("HEALTHCHECK ")]
    commands.append(json.loads(healthcheck.split(" CMD ", 1)[1]))
    return commands


def test_every_command_compose_and_the_image_run_is_one_the_wheels_console_script_takes(
    compose: dict[str, Any],
) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'recall-transcribe = "recall_transcribe.cli:main"' in pyproject
    parser = _parser()
    commands = image_commands(compose)
    assert len(commands) == 9  # four services, their four health checks, the image's own
    for argv in commands:
        assert argv[0] == "recall-transcribe", argv
        if argv[1] != "worker":  # a worker's arguments pass through to celery
            parser.parse_args(argv[1:])


def test_each_service_is_checked_for_health_as_the_service_it_runs(
    compose: dict[str, Any],
) -> None:
    for name in ("receiver", "worker", "flower", "emulator"):
        service = compose["services"][name]
        check = service["healthcheck"]["test"][1:]
        assert check[1:3] == ["health", name], name
        if "--port" in service["command"]:
            port = service["command"][service["command"].index("--port") + 1]
            assert check[check.index("--port") + 1] == port, name


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (
            b"/usr/local/bin/python\0/usr/local/bin/recall-transcribe\0receiver\0--port\x009000\0",
            ("receiver", 9000),
        ),
        (b"/usr/local/bin/recall-transcribe\0worker\0--concurrency\00016\0", ("worker", None)),
        (b"/usr/local/bin/recall-transcribe\0flower\0--port=5566\0", ("flower", 5566)),
    ],
)
def test_the_images_healthcheck_checks_the_service_pid_1_runs(
    cmdline: bytes, expected: tuple[str, int | None], tmp_path: Path
) -> None:
    from recall_transcribe.health import running

    (tmp_path / "cmdline").write_bytes(cmdline)
    assert running(tmp_path / "cmdline") == expected


def test_every_service_that_reads_the_local_store_mounts_the_workers_volume(
    compose: dict[str, Any],
) -> None:
    """The receiver serves transcripts the workers wrote: without the volume, every done job's
    transcript would answer 404 in compose."""
    services = render((ROOT / "docker-compose.yml").read_text(), SECRETS)["services"]
    for name in ("receiver", "worker"):
        store = services[name]["environment"]["TRANSCRIPTS_STORE"]
        mounted = {volume.split(":")[1] for volume in compose["services"][name]["volumes"]}
        assert store in mounted, name
