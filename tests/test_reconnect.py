"""A worker that lost Redis tries again often, so it is back soon after a restart or a failover
(kombu by itself waits 2, 4, 6... s between tries, up to 30 s)."""

from __future__ import annotations

import pytest
from kombu.exceptions import OperationalError

from harness import free_port
from tasks.settings import load_settings
from worker.celery_app import create_celery


def test_the_workers_broker_connection_tries_again_at_most_two_seconds_apart() -> None:
    app = create_celery(load_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"))
    waits: list[float] = []
    connection = app.connection_for_read()  # what the worker's consumer connects with
    with connection, pytest.raises(OperationalError):
        connection.ensure_connection(lambda _exc, wait: waits.append(wait), 3)
    assert waits[0] > 0 and max(waits) < 2.0, waits  # kombu alone: 2, 4, 6
