"""The pipeline's reference: a raw chain of 4 no-op Celery tasks on our Celery settings.

Worker: `celery -A bench.noop worker` (REDIS_URL from the environment, like ours).
"""

from __future__ import annotations

import redis
from celery import chain

from tasks.settings import load_settings
from worker.celery_app import create_celery

settings = load_settings()
app = create_celery(settings)
counter = redis.Redis.from_url(settings.REDIS_URL)
DONE_KEY = "noop:done"


@app.task(name="noop.create")
def create() -> None:
    return None


@app.task(name="noop.await")
def await_() -> None:
    return None


@app.task(name="noop.fetch")
def fetch() -> None:
    return None


@app.task(name="noop.persist")
def persist() -> None:
    counter.incr(DONE_KEY)


def send_chain() -> None:
    chain(create.si(), await_.si(), fetch.si(), persist.si()).apply_async()
