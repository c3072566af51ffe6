"""One settings object per process, read from the environment (and `.env`)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tasks.names import DEFAULT
from tasks.recall.limiter import Family, Rate, parse_rates
from tasks.recall.workspace import Workspace
from tasks.workspaces import parse_workspaces

LimitPolicy = Literal["fail", "delete-failed", "archive-oldest"]


class ConfigError(Exception):
    """A missing or invalid setting, phrased as one readable line."""


def _split(value: SecretStr | None) -> list[str]:
    if value is None:
        return []
    return [part.strip() for part in value.get_secret_value().split(",") if part.strip()]


class Settings(BaseSettings):
    """Every knob of the pipeline; names are the environment variables of the contract."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=True)

    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    REDIS_SENTINELS: str = ""
    REDIS_SENTINEL_MASTER: str = "mymaster"
    REDIS_MIN_REPLICAS: int = Field(0, ge=0)
    RECALL_API_KEY: SecretStr | None = None
    RECALL_API_BASE_URL: str = "https://us-west-2.recall.ai"
    RECALL_WEBHOOK_SECRET: SecretStr | None = None
    RECALL_WEBHOOK_INSECURE: bool = False
    TRANSCRIPT_PROVIDER: Annotated[dict[str, Any], NoDecode] = Field(
        default_factory=lambda: {"recallai_async": {"language_code": "en"}}
    )
    TRANSCRIPTS_STORE: str = "./data/transcripts"
    S3_ENDPOINT_URL: str | None = None  # alias of boto3's AWS_ENDPOINT_URL
    API_TOKENS: SecretStr | None = None
    RECALL_HTTP_TIMEOUT_S: float = Field(30.0, gt=0)
    RECALL_POLL_INITIAL_S: float = Field(60.0, gt=0)
    RECALL_POLL_MAX_S: float = Field(900.0, gt=0)
    RECALL_TRANSCRIPT_TIMEOUT_S: float = Field(21600.0, gt=0)
    FLOWER_BASIC_AUTH: SecretStr | None = None
    LIMIT_POLICY: LimitPolicy = "archive-oldest"
    RECALL_RATE_LIMITS: str = ""
    JOB_RETENTION_S: float = Field(30 * 24 * 3600.0, gt=0)
    LOG_FORMAT: Literal["text", "json"] = "text"
    JOB_DEADLINE_S: float = Field(24 * 3600.0, gt=0)
    JOB_HISTORY_MAX: int = Field(100, ge=1)  # the newest events kept in a job's history
    RECALL_DOWNLOAD_TIMEOUT_S: float = Field(300.0, gt=0)
    INBOX_MAX_DELIVERIES: int = Field(10, ge=1)
    METRICS_TOKEN: SecretStr | None = None
    CALLBACK_URLS: SecretStr | None = None  # URLs may carry a token
    CALLBACK_SECRET: SecretStr | None = None  # several, comma-separated, during a rotation
    CALLBACK_ALLOWED_NETWORKS: str = ""
    CALLBACK_CLIENT_ALLOWED_NETWORKS: str | None = None  # None: CALLBACK_ALLOWED_NETWORKS
    CALLBACK_TASK: str | None = None
    CALLBACK_QUEUE: str = "recall.callbacks"
    TRANSCRIPT_FORMATS: str = "json"
    RECALL_WORKSPACES: Annotated[dict[str, Any], NoDecode] = Field(default_factory=dict)
    _workspaces: dict[str, Workspace] = PrivateAttr(default_factory=dict)  # read once, validating
    RECONCILE_INTERVAL_S: float = Field(3600.0, ge=0)  # 0: no periodic reconciliation
    RECONCILE_LOOKBACK_S: float = Field(3 * 24 * 3600.0, gt=0)
    RECONCILE_GRACE_S: float = Field(600.0, ge=0)
    RECONCILE_SKIP_TRANSCRIBED: bool = True
    RECONCILE_LEASE_S: float = Field(60.0, gt=0)  # a dead worker's walk waits this long for another

    # Operational knobs beyond the contract (documented in the README).
    JOB_STEP_LEASE_S: float = Field(15.0, gt=0)
    INBOX_RESEND_S: float = Field(120.0, gt=0)
    SWEEP_INTERVAL_S: float = Field(1.0, gt=0)
    MAX_STEP_RETRIES: int = Field(12, ge=0)
    RETRY_BACKOFF_BASE_S: float = Field(1.0, gt=0)
    RETRY_BACKOFF_MAX_S: float = Field(300.0, gt=0)
    DOWNLOAD_MAX_BYTES: int = Field(200 * 1024 * 1024, gt=0)
    WEBHOOK_DEDUPE_TTL_S: int = Field(7 * 24 * 3600, gt=0)
    CELERY_VISIBILITY_TIMEOUT_S: int = Field(300, gt=0)
    CALLBACK_RETRY_SCHEDULE_S: str = "0,5,300,1800,7200,18000,36000,36000"  # Svix's
    CALLBACK_TIMEOUT_S: float = Field(10.0, gt=0)
    CALLBACK_THREADS: int = Field(32, ge=1)
    WORKSPACE_THREADS: int = Field(0, ge=0)  # a workspace's share of a worker's threads; 0: fair
    CALLBACK_PER_DESTINATION: int = Field(4, ge=1)
    CALLBACK_PER_CLIENT: int = Field(8, ge=1)

    @field_validator("TRANSCRIPT_PROVIDER", mode="before")
    @classmethod
    def _provider(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from None
        if not isinstance(value, dict) or len(value) != 1:
            raise ValueError(
                'must be a JSON object with exactly one provider key, e.g. {"recallai_async": {}}'
            )
        return value

    @field_validator("TRANSCRIPTS_STORE")
    @classmethod
    def _store(cls, value: str) -> str:
        if value.startswith("s3://") and not value.removeprefix("s3://").split("/")[0]:
            raise ValueError("must be a directory or s3://bucket/prefix")
        return value

    @field_validator("RECALL_RATE_LIMITS")
    @classmethod
    def _rates(cls, value: str) -> str:
        parse_rates(value)  # raises ValueError with the reason
        return value

    @field_validator("RECALL_WEBHOOK_SECRET")
    @classmethod
    def _secrets(cls, value: SecretStr | None) -> SecretStr | None:
        _check_secrets("", _split(value))
        return value

    @field_validator("RECALL_API_BASE_URL")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("RECALL_WORKSPACES", mode="before")
    @classmethod
    def _workspaces_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON ({exc.msg})") from None
            except RecursionError:
                raise ValueError("not valid JSON (nested too deep)") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object: name -> workspace")
        return value

    @model_validator(mode="after")
    def _sentinels_without_tls(self) -> Settings:
        if self.REDIS_SENTINELS.strip() and self.REDIS_URL.startswith("rediss://"):
            raise ValueError(
                "invalid setting REDIS_URL: rediss:// (TLS) is not supported with REDIS_SENTINELS"
            )
        return self

    @model_validator(mode="after")
    def _workspaces_read(self) -> Settings:
        """RECALL_WORKSPACES (and the `.env` its `*_env` names may be in) read once, here."""
        try:
            found = parse_workspaces(self.RECALL_WORKSPACES, _environ(), self.TRANSCRIPT_PROVIDER)
            for workspace in found.values():
                _check_secrets(workspace.name, workspace.webhook_secrets)
        except ValueError as exc:
            raise ValueError(f"invalid setting RECALL_WORKSPACES: {exc}") from None
        default = Workspace(
            name=DEFAULT,
            api_key=self.RECALL_API_KEY,
            base_url=self.RECALL_API_BASE_URL,
            webhook_secrets=self.webhook_secrets,
            rate_limits=self.rate_limits,
            provider=self.TRANSCRIPT_PROVIDER,
        )
        self._workspaces = {DEFAULT: default, **found}
        return self

    @field_validator("REDIS_SENTINELS")
    @classmethod
    def _sentinels(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            host, _, port = part.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{part!r} is not host:port")
        return value

    @field_validator("CALLBACK_SECRET")
    @classmethod
    def _callback_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_secrets("", _split(value) or [""])
        return value

    @field_validator("CALLBACK_URLS")
    @classmethod
    def _callback_urls(cls, value: SecretStr | None) -> SecretStr | None:
        for url in _split(value):
            if not (url.isascii() and url.isprintable()) or " " in url:
                raise ValueError(
                    "each must be printable ASCII: an international host name in its xn-- form"
                )
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018  (raises on a port that is not one)
            except ValueError:
                raise ValueError(
                    "each must be an http(s):// URL with a host and a valid port"
                ) from None
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("each must be an http(s):// URL with a host")
        return value

    @field_validator("CALLBACK_ALLOWED_NETWORKS", "CALLBACK_CLIENT_ALLOWED_NETWORKS")
    @classmethod
    def _networks(cls, value: str | None) -> str | None:
        _cidrs(value or "")
        return value

    @field_validator("TRANSCRIPT_FORMATS")
    @classmethod
    def _formats(cls, value: str) -> str:
        known = {"json", "text", "srt", "vtt"}
        chosen = {part.strip() for part in value.split(",") if part.strip()}
        if not chosen <= known:
            raise ValueError(f"unknown format(s) {sorted(chosen - known)}; any of {sorted(known)}")
        return value

    @field_validator("CALLBACK_RETRY_SCHEDULE_S")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",")]
        except ValueError:
            raise ValueError("must be seconds, comma-separated") from None
        if not delays or any(delay < 0 for delay in delays):
            raise ValueError("must be at least one delay, none negative")
        return value

    @model_validator(mode="after")
    def _callbacks_are_signed(self) -> Settings:
        """HTTP callbacks are signed; a CALLBACK_TASK message goes through our own broker."""
        if self.callback_urls and not self.callback_secrets:
            raise ValueError("CALLBACK_SECRET is required when CALLBACK_URLS is set")
        return self

    @field_validator("FLOWER_BASIC_AUTH")
    @classmethod
    def _basic_auth(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and ":" not in value.get_secret_value():
            raise ValueError("must be user:password")
        return value

    @property
    def webhook_secrets(self) -> list[str]:
        """All verification secrets accepted during a rotation."""
        return _split(self.RECALL_WEBHOOK_SECRET)

    @property
    def api_tokens(self) -> list[str]:
        """Bearer tokens accepted by the jobs API."""
        return _split(self.API_TOKENS)

    @property
    def rate_limits(self) -> dict[Family, Rate] | None:
        """Fleet-wide pacing per endpoint family (None: none at all)."""
        return parse_rates(self.RECALL_RATE_LIMITS)

    @property
    def workspaces(self) -> dict[str, Workspace]:
        """Every Recall workspace served: `default` (the single-workspace settings) first."""
        return dict(self._workspaces)

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The Sentinels to find the Redis primary through (none: REDIS_URL is the primary)."""
        found = []
        for part in filter(None, (p.strip() for p in self.REDIS_SENTINELS.split(","))):
            host, _, port = part.rpartition(":")
            found.append((host.strip("[]"), int(port)))
        return found

    @property
    def callback_urls(self) -> list[str]:
        """Where every finished job's callback goes."""
        return _split(self.CALLBACK_URLS)

    @property
    def callback_secrets(self) -> list[str]:
        """The secrets callbacks are signed with, each of them (a rotation's new one first)."""
        return _split(self.CALLBACK_SECRET)

    @property
    def callback_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Networks CALLBACK_URLS may reach besides public addresses (plain http only there)."""
        return _cidrs(self.CALLBACK_ALLOWED_NETWORKS)

    @property
    def client_callback_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Networks a client's `callback_url` may reach besides public addresses: the
        operator's unless CALLBACK_CLIENT_ALLOWED_NETWORKS says otherwise (empty or `none`:
        public addresses only), so that the operator's own internal hook need not open its
        network to every token holder."""
        if self.CALLBACK_CLIENT_ALLOWED_NETWORKS is None:
            return self.callback_networks
        return _cidrs(self.CALLBACK_CLIENT_ALLOWED_NETWORKS)

    @property
    def callback_schedule(self) -> list[float]:
        """The delay before each attempt of a callback, the first included."""
        return [float(part) for part in self.CALLBACK_RETRY_SCHEDULE_S.split(",")]

    @property
    def transcript_formats(self) -> list[str]:
        return [part.strip() for part in self.TRANSCRIPT_FORMATS.split(",") if part.strip()]

    @property
    def development(self) -> bool:
        """Talking to a local emulator over plain http: plain-http download URLs are accepted."""
        return self.RECALL_API_BASE_URL.startswith("http://")


def _environ() -> dict[str, str]:
    """The environment, and `.env` beneath it, where workspaces' `*_env` names are looked up."""
    from_file = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    return {**from_file, **os.environ}


def _check_secrets(workspace: str, secrets: list[str]) -> None:
    """Each a Standard Webhooks secret: `whsec_` and the base64 of a key of one byte or more
    (an empty key passes base64, then breaks the verifier or signer that uses it)."""
    for secret in secrets:
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            key = b""
        if not key:
            where = f"workspace {workspace}: " if workspace else ""
            raise ValueError(f"{where}each secret must be whsec_ followed by the base64 of a key")


def _cidrs(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated CIDRs (`none`: no network)."""
    found = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part.lower() == "none":
            continue
        try:
            found.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not a CIDR such as 10.0.0.0/8") from None
    return found


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable `ConfigError` line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        name = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"invalid setting {name}: {message}" if name else message) from None
