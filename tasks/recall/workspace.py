"""What a Recall client is built from: the workspace it calls (base URL, key, quotas), and the
bounds on its calls and downloads. tasks/workspaces.py reads the settings into them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from tasks.recall.limiter import Family, Rate


@dataclass(frozen=True)
class Workspace:
    name: str
    api_key: SecretStr | None
    base_url: str
    webhook_secrets: list[str]
    rate_limits: dict[Family, Rate] | None
    provider: dict[str, Any]

    @property
    def development(self) -> bool:
        """A local emulator over plain http: plain-http download URLs are accepted."""
        return self.base_url.startswith("http://")


@dataclass(frozen=True)
class Timeouts:
    """How long one API call (`http_s`) and one download (`download_s`) may take as a whole, and
    how many bytes a download may bring."""

    http_s: float
    download_s: float
    download_max_bytes: int
