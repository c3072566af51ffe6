"""The sweeper: a worker bootstep that re-drives due jobs and unapplied events from a thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps

log = logging.getLogger(__name__)


def sweeper_step(sweep: Callable[[], None], interval: float) -> type[bootsteps.StartStopStep]:
    """A bootstep calling `sweep()` every `interval` seconds while the worker runs."""

    class Sweeper(bootsteps.StartStopStep):
        requires = ("celery.worker.components:Pool",)

        def __init__(self, parent: Any, **kwargs: Any) -> None:
            super().__init__(parent, **kwargs)
            self._stop = threading.Event()

        def start(self, parent: Any) -> None:
            threading.Thread(target=self._loop, name="sweeper", daemon=True).start()

        def stop(self, parent: Any) -> None:
            self._stop.set()

        def _loop(self) -> None:
            while not self._stop.wait(interval):
                try:
                    sweep()
                except Exception as exc:  # Redis away: keep trying, the due-sets are durable
                    log.warning("sweeper: %s", exc)

    return Sweeper
