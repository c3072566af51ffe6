"""Reconciliation at its edges (issue 21's review): another provider than the webhook path's, a
recording finishing mid-walk, hostile List Recordings answers, cursors that fail or loop, and
what counts as a transcript or a job here. Each test is a way a recording was paid twice or
lost."""

from __future__ import annotations

import time
from typing import Any

from harness import EmulatorHandle
from tasks import keys
from tasks.dispatch import Dispatcher
from tasks.jobs.views import Source
from tasks.reconcile import Reconciliation, Walk
from tests.helpers import Harness
from tests.test_reconcile import (
    _creates,
    _ingest_done,
    _jobs_of,
    _persist_all,
    _reconciliation,
    _recordings,
)

OTHER_PROVIDER = {"recallai_async": {"language_code": "de"}}


def _with_provider(harness: Harness, provider: dict[str, Any]) -> Reconciliation:
    """A reconciliation run where TRANSCRIPT_PROVIDER differs (an operator's shell, a change)."""
    base = _reconciliation(harness)
    dispatch = Dispatcher(harness.pipeline.jobs, {"default": provider})
    return Reconciliation(dispatch, base.recall, "default", base.grace_s, base.skip_transcribed)


def _day() -> Walk:
    now = time.time()
    return Walk(after=now - 86400, before=now)


# -- one recording, one automatic job, whatever the provider -----------------------------------


def test_late_webhook_after_reconciliation_with_another_provider_creates_once(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    [rid] = _recordings(emulator, "silent-", 1)
    assert harness.pipeline.dispatch.provider(None) != OTHER_PROVIDER
    _with_provider(harness, OTHER_PROVIDER).walk(_day())
    [job_id] = _jobs_of(harness, rid)
    _ingest_done(harness, rid)  # recording.done finally delivered (Recall's retry, a replay)
    _persist_all(harness)
    assert _jobs_of(harness, rid) == [job_id]
    assert _creates(emulator).get(rid) == 1


def test_reconciliation_with_another_provider_finds_the_webhook_job(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    [rid] = _recordings(emulator, "silent-", 1)
    job_id, created = harness.pipeline.dispatch.submit(
        rid, None, {"source": "recording.done"}, workspace="default", source=Source.WEBHOOK
    )
    assert created
    job_again, created = _with_provider(harness, OTHER_PROVIDER).dispatch.submit(
        rid, None, {"source": "reconcile"}, workspace="default", source=Source.RECONCILE
    )
    assert (job_again, created) == (job_id, False)


def test_webhook_takes_an_old_reconcile_record_without_source(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    """A record from before `source` was kept counts by its metadata, as its view does."""
    [rid] = _recordings(emulator, "silent-", 1)
    dispatch = _with_provider(harness, OTHER_PROVIDER).dispatch
    job_id, _ = dispatch.submit(
        rid, None, {"source": "reconcile"}, workspace="default", source=Source.RECONCILE
    )
    harness.redis.hdel(keys.job(job_id), "source")
    assert harness.pipeline.jobs.record(job_id).started_by == Source.RECONCILE  # type: ignore[union-attr]
    assert _jobs_of(harness, rid) == [job_id]
    _ingest_done(harness, rid)
    assert _jobs_of(harness, rid) == [job_id]


def test_an_api_job_with_another_provider_is_still_its_own(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    """A client may ask another provider for a recording on purpose: the API keeps that."""
    [rid] = _recordings(emulator, "silent-", 1)
    _ingest_done(harness, rid)
    _, created = harness.pipeline.dispatch.submit(rid, OTHER_PROVIDER, workspace="default")
    assert created
    assert len(_jobs_of(harness, rid)) == 2


def test_webhook_in_another_workspace_is_not_taken(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    [rid] = _recordings(emulator, "silent-", 1)
    provider = harness.pipeline.dispatch.provider(None)
    dispatch = Dispatcher(harness.pipeline.jobs, {"default": provider, "b": OTHER_PROVIDER})
    first, _ = dispatch.submit(rid, None, workspace="default", source=Source.WEBHOOK)
    second, created = dispatch.submit(rid, None, workspace="b", source=Source.WEBHOOK)
    assert created and first != second
