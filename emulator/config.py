"""How the emulator behaves; most fields can change at run time (PATCH /_emulator/config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from emulator.quotas import RECALL_QUOTAS

TUNABLE = ("processing_s", "latency_s", "retry_scale", "url_ttl_s", "page_size")


@dataclass
class EmulatorConfig:
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
    quotas: str = RECALL_QUOTAS  # Recall's rate limits; "none" turns them off
    quota_scale: float = 1.0  # x every quota window (1/6: a minute becomes 10 s)
