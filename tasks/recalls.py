"""The Recall clients a process calls, one per workspace, built from the settings: the one place
that reads Recall's timeouts and quotas there, so that tasks/recall/ never sees the settings."""

from __future__ import annotations

import redis

from tasks.metrics import Metrics
from tasks.names import DEFAULT
from tasks.recall.client import INLINE_WAIT_S, RecallClient
from tasks.recall.limiter import Limiter
from tasks.recall.workspace import Timeouts
from tasks.settings import Settings


def timeouts(settings: Settings) -> Timeouts:
    return Timeouts(
        http_s=settings.RECALL_HTTP_TIMEOUT_S,
        download_s=settings.RECALL_DOWNLOAD_TIMEOUT_S,
        download_max_bytes=settings.DOWNLOAD_MAX_BYTES,
    )


def recall_client(
    settings: Settings,
    limiter: Limiter | None = None,
    metrics: Metrics | None = None,
    workspace: str = DEFAULT,
) -> RecallClient:
    """The client of one workspace the settings configure (the default one unless named)."""
    return RecallClient(settings.workspaces[workspace], timeouts(settings), limiter, metrics)


def recall_clients(
    settings: Settings, client: redis.Redis, metrics: Metrics
) -> tuple[dict[str, Limiter], dict[str, RecallClient]]:
    """Every workspace's client, each paced by its own quotas (a limiter where it has any) and
    counted under its own name; the limiters too, by workspace."""
    limiters: dict[str, Limiter] = {}
    recalls: dict[str, RecallClient] = {}
    bounds = timeouts(settings)
    for name, workspace in settings.workspaces.items():
        rates = workspace.rate_limits
        if rates:
            limiters[name] = Limiter(client, rates, INLINE_WAIT_S, name)
        counted = metrics.for_workspace(name)
        recalls[name] = RecallClient(workspace, bounds, limiters.get(name), counted)
    return limiters, recalls
