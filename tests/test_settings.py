"""Settings: defaults from the contract, and one readable line for each bad value."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tasks.jobs.errors import ErrorCode
from tasks.settings import ConfigError, load_settings


def test_contract_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "RECALL_API_BASE_URL", "TRANSCRIPT_PROVIDER", "LIMIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.REDIS_URL == "redis://127.0.0.1:6379/0"
    assert settings.RECALL_API_BASE_URL == "https://us-west-2.recall.ai"
    assert settings.TRANSCRIPT_PROVIDER == {"recallai_async": {"language_code": "en"}}
    assert settings.LIMIT_POLICY == "archive-oldest"
    assert (settings.RECALL_POLL_INITIAL_S, settings.RECALL_POLL_MAX_S) == (60, 900)
    assert settings.RECALL_TRANSCRIPT_TIMEOUT_S == 21600
    assert not settings.development


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSCRIPT_PROVIDER", '{"deepgram_async": {"model": "nova"}}')
    monkeypatch.setenv("RECALL_WEBHOOK_SECRET", "whsec_YWJj, whsec_ZGVm")
    monkeypatch.setenv("API_TOKENS", "a,b")
    settings = load_settings()
    assert settings.TRANSCRIPT_PROVIDER == {"deepgram_async": {"model": "nova"}}
    assert settings.webhook_secrets == ["whsec_YWJj", "whsec_ZGVm"]
    assert settings.api_tokens == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("TRANSCRIPT_PROVIDER", "{nope", "TRANSCRIPT_PROVIDER"),
        ("TRANSCRIPT_PROVIDER", '{"a": {}, "b": {}}', "exactly one provider"),
        ("LIMIT_POLICY", "delete-everything", "LIMIT_POLICY"),
        ("RECALL_POLL_MAX_S", "soon", "RECALL_POLL_MAX_S"),
        ("RECALL_HTTP_TIMEOUT_S", "0", "RECALL_HTTP_TIMEOUT_S"),
        ("RECALL_WEBHOOK_SECRET", "whsec_!!!", "whsec_"),
        ("RECALL_API_BASE_URL", "us-west-2.recall.ai", "http"),
        ("FLOWER_BASIC_AUTH", "admin", "user:password"),
        ("CALLBACK_URLS", "https://ok.example/a, https://bad.example:99999/b", "valid port"),
        ("CALLBACK_URLS", "https://ok.example/a, https://bad.example:x/b", "valid port"),
        ("RECALL_WEBHOOK_SECRET", "whsec_", "base64 of a key"),  # an empty key
        ("RECALL_WEBHOOK_SECRET", "whsec_YWJj, whsec_", "base64 of a key"),
        ("CALLBACK_SECRET", "whsec_YWJj,whsec_", "base64 of a key"),
        ("CALLBACK_SECRET", "", "base64 of a key"),  # callbacks signed with nothing
        ("CALLBACK_URLS", "https://ħost.example/hook", "printable ASCII"),  # not Latin-1
        ("CALLBACK_URLS", "https://hooks.example/ä", "xn--"),
        ("CALLBACK_CLIENT_ALLOWED_NETWORKS", "10.0.0.0/8, intranet", "'intranet'"),
    ],
)
def test_bad_values_give_one_readable_line(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert says in message and "\n" not in message


def test_tls_through_sentinel_is_refused_not_silently_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "127.0.0.1:26379")
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@127.0.0.1/0")
    with pytest.raises(ConfigError, match=r"^invalid setting REDIS_URL: rediss://"):
        load_settings()


def test_secrets_are_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECALL_API_KEY", "super-secret-key")
    monkeypatch.setenv("RECALL_WEBHOOK_SECRET", "whsec_c2VjcmV0c2VjcmV0")
    text = repr(load_settings())
    assert "super-secret-key" not in text and "c2VjcmV0c2VjcmV0" not in text


def test_the_readme_lists_every_error_code() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("| code | meaning |", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE))
    assert listed == {code.value for code in ErrorCode}


def test_a_developers_env_file_is_not_read_by_the_tests(tmp_path: Path) -> None:
    assert not Path(".env").exists() and Path.cwd() != Path(__file__).resolve().parent.parent
    (tmp_path / ".env").write_text("RECALL_POLL_MAX_S=5\n")  # .env is read from the working dir
    here = Path.cwd()
    try:
        os.chdir(tmp_path)
        assert load_settings().RECALL_POLL_MAX_S == 5
    finally:
        os.chdir(here)
    assert load_settings().RECALL_POLL_MAX_S == 900


def test_a_callback_secret_is_required_only_where_http_callbacks_are_signed() -> None:
    task_alone = load_settings(CALLBACK_TASK="theirs.job_finished")
    assert task_alone.CALLBACK_SECRET is None
    with pytest.raises(ConfigError, match="CALLBACK_SECRET is required when CALLBACK_URLS"):
        load_settings(CALLBACK_URLS="https://example.com/hook", CALLBACK_TASK="theirs.x")


def test_callbacks_rotate_their_secret_and_allow_clients_networks_apart() -> None:
    """Several CALLBACK_SECRETs, the new first; clients' callback_urls reach the operator's
    networks unless CALLBACK_CLIENT_ALLOWED_NETWORKS says otherwise (empty or `none`: none)."""
    both = load_settings(CALLBACK_SECRET="whsec_bmV3, whsec_b2xk", CALLBACK_URLS="https://h.io/")
    assert both.callback_secrets == ["whsec_bmV3", "whsec_b2xk"]
    inherited = load_settings(CALLBACK_ALLOWED_NETWORKS="10.0.0.0/8")
    assert [str(n) for n in inherited.client_callback_networks] == ["10.0.0.0/8"]
    for none in ("", "none"):
        apart = load_settings(
            CALLBACK_ALLOWED_NETWORKS="10.0.0.0/8", CALLBACK_CLIENT_ALLOWED_NETWORKS=none
        )
        assert apart.client_callback_networks == [] and len(apart.callback_networks) == 1


def test_workspaces_are_read_once_each_settings_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """RECALL_WORKSPACES, and the variables it names, are read as the settings are built: a
    later change of the environment moves none of them, and each settings keeps its own."""
    eu_spec = {"api_key_env": "TEST_EU_KEY", "base_url": "https://eu.example"}
    spec = {"eu": {**eu_spec, "webhook_secret": "whsec_YWJj"}}
    monkeypatch.setenv("TEST_EU_KEY", "first")
    first = load_settings(RECALL_WORKSPACES=spec, RECALL_API_KEY="one")
    monkeypatch.setenv("TEST_EU_KEY", "second")
    second = load_settings(RECALL_WORKSPACES=spec, RECALL_API_BASE_URL="http://127.0.0.1:9")
    alone = load_settings(RECALL_API_KEY="alone")
    eu = first.workspaces["eu"].api_key
    assert eu is not None and eu.get_secret_value() == "first"
    eu = second.workspaces["eu"].api_key
    assert eu is not None and eu.get_secret_value() == "second"
    key = first.workspaces["default"].api_key
    assert key is not None and key.get_secret_value() == "one"
    assert second.workspaces["default"].base_url == "http://127.0.0.1:9"
    assert list(alone.workspaces) == ["default"]
    first.workspaces.pop("eu")  # a caller's copy: the settings keep theirs
    assert list(first.workspaces) == ["default", "eu"]
