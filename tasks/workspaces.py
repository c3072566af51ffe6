"""Recall workspaces: one deployment serving several (one per region, say), each with its own API
key, base URL, webhook secrets, quotas and default provider.

The single-workspace settings (RECALL_API_KEY, RECALL_API_BASE_URL, RECALL_WEBHOOK_SECRET,
RECALL_RATE_LIMITS, TRANSCRIPT_PROVIDER) are the workspace `default`, whose webhooks arrive at
`/webhooks/recall`; RECALL_WORKSPACES adds others, each at `/webhooks/recall/{name}`:

    {"eu": {"api_key_env": "RECALL_EU_KEY", "base_url": "https://eu-central-1.recall.ai",
            "webhook_secret_env": "RECALL_EU_SECRET", "rate_limits": "list=60/60"}}

A secret may be given by the name of the environment variable that holds it (`api_key_env`,
`webhook_secret_env`), so none has to sit inside one JSON string. Each is read into the
`Workspace` a Recall client is built from (tasks/recall/workspace.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from tasks.names import DEFAULT
from tasks.recall.limiter import parse_rates
from tasks.recall.workspace import Workspace

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
FIELDS = {"api_key", "api_key_env", "base_url", "webhook_secret", "webhook_secret_env"}
FIELDS |= {"rate_limits", "provider"}


def parse_workspaces(
    raw: Mapping[str, Any], environ: Mapping[str, str], default_provider: dict[str, Any]
) -> dict[str, Workspace]:
    """RECALL_WORKSPACES, read; ValueError with a readable reason when it is not right."""
    found = {}
    for name, spec in raw.items():
        if not isinstance(name, str) or not NAME.fullmatch(name) or name == DEFAULT:
            raise ValueError(
                f"workspace name {name!r}: lowercase letters, digits, - and _ (not {DEFAULT!r},"
                " the single-workspace settings' name)"
            )
        if not isinstance(spec, dict) or set(spec) - FIELDS:
            raise ValueError(f"workspace {name}: an object with some of {sorted(FIELDS)}")
        base_url = spec.get("base_url")
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"workspace {name}: base_url must start with http:// or https://")
        key = _secret(name, spec, "api_key", environ)
        secrets = _secret(name, spec, "webhook_secret", environ)
        if key is None or secrets is None:
            raise ValueError(
                f"workspace {name}: api_key and webhook_secret (or their _env) are needed"
            )
        webhook_secrets = [s.strip() for s in secrets.split(",") if s.strip()]
        if not webhook_secrets:
            raise ValueError(f"workspace {name}: webhook_secret holds no secret")
        rates = spec.get("rate_limits", "")
        if not isinstance(rates, str):
            raise ValueError(f"workspace {name}: rate_limits must be a string like list=60/60")
        provider = spec.get("provider", default_provider)
        if not isinstance(provider, dict) or len(provider) != 1:
            raise ValueError(f"workspace {name}: provider must hold exactly one provider key")
        found[name] = Workspace(
            name=name,
            api_key=SecretStr(key),
            base_url=base_url.rstrip("/"),
            webhook_secrets=webhook_secrets,
            rate_limits=parse_rates(rates),
            provider=provider,
        )
    return found


def _secret(name: str, spec: dict[str, Any], field: str, environ: Mapping[str, str]) -> str | None:
    if field in spec and f"{field}_env" in spec:
        raise ValueError(f"workspace {name}: {field} or {field}_env, not both")
    if f"{field}_env" in spec:
        variable = spec[f"{field}_env"]
        if not isinstance(variable, str) or not environ.get(variable):
            raise ValueError(f"workspace {name}: {field}_env names {variable!r}, which is not set")
        return environ[variable]
    value = spec.get(field)
    return value if isinstance(value, str) and value else None
