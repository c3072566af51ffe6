"""One settings object per process, read from the environment (and `.env`)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tasks.recall.limiter import Family, Rate, parse_rates

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
    RECALL_DOWNLOAD_TIMEOUT_S: float = Field(300.0, gt=0)
    INBOX_MAX_DELIVERIES: int = Field(10, ge=1)
    METRICS_TOKEN: SecretStr | None = None

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
        for secret in _split(value):
            try:
                base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except binascii.Error:
                raise ValueError("each secret must be whsec_ followed by base64") from None
        return value

    @field_validator("RECALL_API_BASE_URL")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

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
    def development(self) -> bool:
        """Talking to a local emulator over plain http: plain-http download URLs are accepted."""
        return self.RECALL_API_BASE_URL.startswith("http://")


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable `ConfigError` line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or "settings"
        raise ConfigError(f"invalid setting {name}: {first['msg']}") from None
