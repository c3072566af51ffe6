"""Reconciliation at its edges (issue 21's review): another provider than the webhook path's, a
recording finishing mid-walk, hostile List Recordings answers, cursors that fail or loop, and
what counts as a transcript or a job here. Each test is a way a recording was paid twice or
lost."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from harness import EmulatorHandle
from tasks import keys
from tasks.dispatch import Dispatcher
from tasks.jobs import indexes
from tasks.jobs.views import Source
from tasks.recall.client import _same_origin
from tasks.recall.models import Recording
from tasks.reconcile import Outcome, Reconciliation, Walk
from tasks.reconcile import walk as walk_module
from tasks.reconcile.walk import PHASES
from tests.helpers import Harness
from tests.reconciling import (
    creates_of,
    ingest_done,
    jobs_of,
    periodic_of,
    persist_every_job,
    reconciliation_of,
    scrape_metrics,
    silent_recordings,
)

OTHER_PROVIDER = {"recallai_async": {"language_code": "de"}}


def _with_provider(harness: Harness, provider: dict[str, Any]) -> Reconciliation:
    """A reconciliation run where TRANSCRIPT_PROVIDER differs (an operator's shell, a change)."""
    base = reconciliation_of(harness)
    dispatch = Dispatcher(harness.pipeline.jobs, {"default": provider})
    return Reconciliation(dispatch, base.recall, "default", base.grace_s, base.skip_transcribed)


def _day() -> Walk:
    now = time.time()
    return Walk(after=now - 86400, before=now)


# -- one recording, one automatic job, whatever the provider -----------------------------------


def test_late_webhook_after_reconciliation_with_another_provider_creates_once(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    [rid] = silent_recordings(emulator, "silent-", 1)
    assert harness.pipeline.dispatch.provider(None) != OTHER_PROVIDER
    _with_provider(harness, OTHER_PROVIDER).walk(_day())
    [job_id] = jobs_of(harness, rid)
    ingest_done(harness, rid)  # recording.done finally delivered (Recall's retry, a replay)
    persist_every_job(harness)
    assert jobs_of(harness, rid) == [job_id]
    assert creates_of(emulator).get(rid) == 1


def test_reconciliation_with_another_provider_finds_the_webhook_job(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    [rid] = silent_recordings(emulator, "silent-", 1)
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
    [rid] = silent_recordings(emulator, "silent-", 1)
    dispatch = _with_provider(harness, OTHER_PROVIDER).dispatch
    job_id, _ = dispatch.submit(
        rid, None, {"source": "reconcile"}, workspace="default", source=Source.RECONCILE
    )
    harness.redis.hdel(keys.job(job_id), "source")
    assert harness.pipeline.jobs.record(job_id).started_by == Source.RECONCILE  # type: ignore[union-attr]
    assert jobs_of(harness, rid) == [job_id]
    ingest_done(harness, rid)
    assert jobs_of(harness, rid) == [job_id]


def test_an_api_job_with_another_provider_is_still_its_own(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    """A client may ask another provider for a recording on purpose: the API keeps that."""
    [rid] = silent_recordings(emulator, "silent-", 1)
    ingest_done(harness, rid)
    _, created = harness.pipeline.dispatch.submit(rid, OTHER_PROVIDER, workspace="default")
    assert created
    assert len(jobs_of(harness, rid)) == 2


def test_webhook_in_another_workspace_is_not_taken(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    [rid] = silent_recordings(emulator, "silent-", 1)
    provider = harness.pipeline.dispatch.provider(None)
    dispatch = Dispatcher(harness.pipeline.jobs, {"default": provider, "b": OTHER_PROVIDER})
    first, _ = dispatch.submit(rid, None, workspace="default", source=Source.WEBHOOK)
    second, created = dispatch.submit(rid, None, workspace="b", source=Source.WEBHOOK)
    assert created and first != second


# -- a recording finishing while the walk lists ------------------------------------------------


class FinishingAt:
    """Recall as it is: the recording goes processing -> done (its webhook lost) just before
    the walk's listing number `at` (0 is the first)."""

    def __init__(self, real: Any, emulator: EmulatorHandle, recording_id: str, at: int) -> None:
        self.real, self._emulator, self._id, self._at = real, emulator, recording_id, at
        self.listings: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def list_recordings(self, status_code: str, *args: Any) -> Any:
        if len(self.listings) == self._at:
            requests.post(
                f"{self._emulator.url}/_emulator/recordings/{self._id}/finish",
                json={"silent": True},
                timeout=10,
            ).raise_for_status()
        self.listings.append(status_code)
        return self.real.list_recordings(status_code, *args)


@pytest.mark.parametrize("at", range(1, len(PHASES)))
def test_a_recording_finishing_between_two_listings_is_reconciled_later(
    harness: Harness, emulator: EmulatorHandle, at: int
) -> None:
    """Whichever listing it finishes before, it holds the mark back, and a later run (once its
    webhook's grace is over) submits its job."""
    [meeting] = silent_recordings(emulator, "long-", 1, status="processing")
    periodic = periodic_of(harness, interval_s=0.0)
    reconciliation = periodic._reconciliations["default"]
    finishing = FinishingAt(reconciliation.recall, emulator, meeting, at)
    reconciliation.recall = finishing  # type: ignore[assignment]
    assert periodic.run("default")
    assert finishing.listings == list(PHASES) and not jobs_of(harness, meeting)
    reconciliation.recall = finishing.real
    reconciliation.grace_s = 0.0
    assert periodic.run("default")
    assert len(jobs_of(harness, meeting)) == 1


def test_a_walk_saved_with_the_old_order_starts_its_window_again() -> None:
    old = '{"after": 1.0, "before": 2.0, "phase": 1, "cursor": "https://x/?cursor=a", "pages": 3}'
    walk = Walk.load(old)
    assert walk is not None and (walk.phase, walk.cursor, walk.pages) == (0, None, 3)
    assert Walk.load(walk.dump()) == walk


# -- hostile List Recordings answers -----------------------------------------------------------

BAD_ITEMS: dict[str, Any] = {
    "no id": {"created_at": None},
    "status as a string": {"id": "x-1", "status": "done"},
    "bad created_at": {"id": "x-2", "created_at": "yesterday"},
    "not an object": "x-3",
    "empty id": {"id": "", "status": {"code": "done"}},
    "lone surrogate": {"id": "\ud800", "status": {"code": "done"}},
    "long id": {"id": "x" * 100_000, "status": {"code": "done"}},
    "a path": {"id": "../../transcript/abc", "status": {"code": "done"}},
}


def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(walk_module, "UNAVAILABLE_WAIT_S", 0.0)


def _hostile(
    monkeypatch: pytest.MonkeyPatch, recall: Any, change: Any, *, times: int = 10**9
) -> list[int]:
    """Every `done` page's JSON passed through `change`, the first `times` times."""
    real_json, seen = recall._json, [0]

    def hostile_json(response: Any, what: str) -> Any:
        page = real_json(response, what)
        if "status_code=done" in response.url and seen[0] < times:
            seen[0] += 1
            return change(page)
        return page

    monkeypatch.setattr(recall, "_json", hostile_json)
    return seen


@pytest.mark.parametrize("bad", sorted(BAD_ITEMS))
def test_an_item_that_is_not_a_recording_is_left_out_and_the_rest_reconciled(
    harness: Harness,
    emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    bad: str,
) -> None:
    silent = silent_recordings(emulator, "silent-", 2)
    periodic = periodic_of(harness, interval_s=0.0)
    recall = periodic._reconciliations["default"].recall
    item = BAD_ITEMS[bad]
    _hostile(monkeypatch, recall, lambda page: {**page, "results": [item, *page["results"]]})
    with caplog.at_level(logging.WARNING):
        assert periodic.run("default")
    assert all(len(jobs_of(harness, r)) == 1 for r in silent)
    assert b"mark" in harness.redis.hgetall(keys.reconcile("default"))
    assert "an item left out" in caplog.text
    assert indexes.count(harness.redis) == len(silent)  # no job for the item left out


@pytest.mark.parametrize(
    "change",
    [
        lambda page: {**page, "results": None},
        lambda page: [page],
        lambda page: {**page, "next": 7},
    ],
    ids=["results null", "a list", "next a number"],
)
def test_a_page_of_the_wrong_shape_is_retried_then_skipped_holding_the_mark(
    harness: Harness,
    emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    change: Any,
) -> None:
    _fast_retries(monkeypatch)
    silent = silent_recordings(emulator, "silent-", 2)
    periodic = periodic_of(harness, interval_s=0.0)
    recall = periodic._reconciliations["default"].recall
    seen = _hostile(monkeypatch, recall, change, times=walk_module.MALFORMED_TRIES)
    with caplog.at_level(logging.WARNING):
        assert periodic.run("default")  # the run ends: not stopped for ever
    assert seen[0] == walk_module.MALFORMED_TRIES
    assert "listing is skipped" in caplog.text
    assert not any(jobs_of(harness, r) for r in silent)
    assert periodic.run("default")  # the mark held: the next run reads the window again
    assert all(len(jobs_of(harness, r)) == 1 for r in silent)


# -- cursors Recall no longer takes ------------------------------------------------------------


@pytest.mark.parametrize(
    "cursor",
    [
        "{base}/api/v1/recording/?cursor=expired",  # Recall answers 400 "Invalid cursor."
        "https://us-east-1.recall.ai/api/v1/recording/?cursor=abc",  # RECALL_API_BASE_URL changed
    ],
    ids=["refused", "another origin"],
)
def test_a_saved_cursor_recall_refuses_starts_the_listing_again(
    harness: Harness,
    emulator: EmulatorHandle,
    caplog: pytest.LogCaptureFixture,
    cursor: str,
) -> None:
    silent = silent_recordings(emulator, "silent-", 2)
    periodic = periodic_of(harness, interval_s=0.0)
    now = time.time()
    stale = Walk(
        after=now - 86400,
        before=now,
        started_at=now,
        phase=PHASES.index("done"),
        cursor=cursor.format(base=emulator.url),
    )
    harness.redis.hset(keys.reconcile("default"), "walk", stale.dump())
    with caplog.at_level(logging.WARNING):
        assert periodic.run("default")
    assert "starts again from its first page" in caplog.text
    assert all(len(jobs_of(harness, r)) == 1 for r in silent)


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://us-west-2.recall.ai:443/api/v1/recording/?cursor=a", True),
        ("https://US-WEST-2.recall.ai/api/v1/recording/", True),
        ("http://us-west-2.recall.ai/api/v1/recording/", False),
        ("https://us-west-2.recall.ai:8443/api/v1/recording/", False),
        ("https://us-west-2.recall.ai.evil.example/api/v1/recording/", False),
        ("https://us-west-2.recall.ai:99999/", False),
        ("/api/v1/recording/", False),
    ],
)
def test_same_origin_reads_default_ports(url: str, same: bool) -> None:
    assert _same_origin(url, "https://us-west-2.recall.ai") is same


# -- next links that lead back -----------------------------------------------------------------


@pytest.mark.parametrize("back", ["itself", "the first page"])
def test_a_next_link_leading_back_ends_the_listing_and_holds_the_mark(
    harness: Harness,
    emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    back: str,
) -> None:
    silent_recordings(emulator, "silent-", 5)  # pages of 3: two pages of finished recordings
    periodic = periodic_of(harness, interval_s=0.0)
    recall = periodic._reconciliations["default"].recall
    real_json, first = recall._json, []

    def looping(response: Any, what: str) -> Any:
        page = real_json(response, what)
        if "status_code=done" not in response.url:
            return page
        first.append(response.url)
        return {**page, "next": response.url if back == "itself" else first[0]}

    monkeypatch.setattr(recall, "_json", looping)
    with caplog.at_level(logging.ERROR):
        assert periodic.run("default")
    assert len(first) <= 2, f"{len(first)} pages read"
    assert "a page already read" in caplog.text
    state = harness.redis.hgetall(keys.reconcile("default"))
    walk = Walk.load(harness.redis.hget(keys.reconcile("default"), "walk"))
    assert walk is None and float(state[b"mark"]) < time.time() - 86400  # held, not passed


def test_a_listing_given_up_run_after_run_never_moves_the_mark_back(
    harness: Harness, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark is held where the window started from, not at its start (an hour before it):
    a listing that keeps failing must not pull every later window back an hour per run."""
    silent_recordings(emulator, "silent-", 5)
    periodic = periodic_of(harness, interval_s=0.0)
    recall = periodic._reconciliations["default"].recall
    real_json = recall._json

    def looping(response: Any, what: str) -> Any:
        page = real_json(response, what)
        return {**page, "next": response.url} if "status_code=done" in response.url else page

    monkeypatch.setattr(recall, "_json", looping)
    mark = time.time() - 600
    harness.redis.hset(keys.reconcile("default"), "mark", mark)
    marks = []
    for _ in range(3):
        assert periodic.run("default")
        marks.append(float(harness.redis.hget(keys.reconcile("default"), "mark") or 0))
    assert marks == [pytest.approx(mark)] * 3


def test_a_recording_whose_transcript_is_still_being_made_holds_the_mark(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    """Someone else's transcript in progress: no job now, but looked at again next run, since
    it may yet fail."""
    [rid] = silent_recordings(emulator, "made-", 1, transcript="processing")
    walk = reconciliation_of(harness).walk(_day())
    assert walk.count(Outcome.TRANSCRIBED) == 1 and jobs_of(harness, rid) == []
    assert walk.oldest_pending is not None and walk.oldest_pending < walk.before - 3600


def test_a_walk_reads_at_most_max_pages(
    harness: Harness, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent_recordings(emulator, "silent-", 10)  # four pages of finished recordings
    monkeypatch.setattr(walk_module, "MAX_PAGES", 3)  # the pending listings' two, and one
    walk = periodic_of(harness)._reconciliations["default"].walk(_day(), pending=True)
    assert walk.pages == 3 and walk.phase == len(PHASES)
    assert walk.oldest_pending == walk.after


# -- what counts as a transcript at Recall -----------------------------------------------------


@pytest.mark.parametrize(
    ("transcript", "outcome"),
    [("done", "transcribed"), ("processing", "transcribed"), ("failed", "submitted")],
)
def test_only_a_transcript_done_or_being_made_counts_as_transcribed(
    harness: Harness, emulator: EmulatorHandle, transcript: str, outcome: str
) -> None:
    [rid] = silent_recordings(emulator, "tx-", 1, transcript=transcript)
    walk = reconciliation_of(harness).walk(_day())
    assert walk.count(Outcome(outcome)) == 1
    assert bool(jobs_of(harness, rid)) == (outcome == "submitted")


@pytest.mark.parametrize(
    "shortcut",
    [None, {}, {"status": None}, {"status": "done"}, {"status": {"code": "deleted"}}],
)
def test_a_transcript_shortcut_without_a_live_status_is_none(shortcut: Any) -> None:
    recording = Recording.model_validate({"id": "r", "media_shortcuts": {"transcript": shortcut}})
    assert not recording.transcribed


# -- what the listing did not ask for ----------------------------------------------------------


@pytest.mark.parametrize(
    ("created_at", "status"),
    [("inside", "processing"), ("2020-01-01T00:00:00Z", "done"), (None, "done"), ("inside", None)],
    ids=["still processing", "outside the window", "no created_at", "no status"],
)
def test_a_done_listing_item_not_done_in_the_window_gets_no_job(
    harness: Harness,
    emulator: EmulatorHandle,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    created_at: str | None,
    status: str | None,
) -> None:
    [pending] = silent_recordings(emulator, "processing-", 1, status="processing")
    [silent] = silent_recordings(emulator, "silent-", 1)
    reconciliation = reconciliation_of(harness)
    reconciliation.grace_s = 0.0
    inside = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    item: dict[str, Any] = {
        "id": pending,
        "created_at": inside if created_at == "inside" else created_at,
    }
    if status is not None:
        item["status"] = {"code": status, "updated_at": "2020-01-01T00:00:00Z"}
    _hostile(
        monkeypatch,
        reconciliation.recall,
        lambda page: {**page, "results": [item, *page["results"]]},
    )
    with caplog.at_level(logging.WARNING):
        walk = reconciliation.walk(_day())
    assert not jobs_of(harness, pending) and len(jobs_of(harness, silent)) == 1
    assert walk.counts[walk_module.SKIPPED] == 1 and f"recording {pending} left out" in caplog.text


def test_a_pending_item_of_another_window_does_not_hold_the_mark(
    harness: Harness, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconciliation = reconciliation_of(harness)
    real_json = reconciliation.recall._json
    stray = {"id": "old-1", "created_at": "2020-01-01T00:00:00Z", "status": {"code": "processing"}}

    def leaky(response: Any, what: str) -> Any:
        page = real_json(response, what)
        if "status_code=processing" in response.url:
            return {**page, "results": [stray, *page["results"]]}
        return page

    monkeypatch.setattr(reconciliation.recall, "_json", leaky)
    walk = reconciliation.walk(_day(), pending=True)
    assert walk.oldest_pending is None


# -- a job here is a job of this workspace -----------------------------------------------------


def test_a_job_in_another_workspace_does_not_make_the_recording_known(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    [rid] = silent_recordings(emulator, "shared-", 1)
    provider = harness.pipeline.dispatch.provider(None)
    dispatch = Dispatcher(harness.pipeline.jobs, {"default": provider, "b": provider})
    dispatch.submit(rid, None, {"source": "recording.done"}, source=Source.WEBHOOK)
    base = reconciliation_of(harness)
    other = Reconciliation(dispatch, base.recall, "b", 0.0, False)
    walk = other.walk(_day())
    assert walk.count(Outcome.KNOWN) == 0 and walk.count(Outcome.SUBMITTED) == 1
    assert len(jobs_of(harness, rid)) == 2
    assert other.walk(_day()).count(Outcome.KNOWN) == 1  # and then it is


def test_a_cli_run_during_a_periodic_walk_is_not_counted_by_the_walk(
    harness: Harness, emulator: EmulatorHandle
) -> None:
    silent = silent_recordings(emulator, "silent-", 3)
    periodic = periodic_of(harness)
    now = harness.pipeline.jobs.now()
    # a periodic walk begins (saved before its first page), then an operator's CLI run submits
    walk = Walk(after=now - 86400, before=now, started_at=now, id="periodic-1")
    harness.redis.hset(keys.reconcile("default"), "walk", walk.dump())
    cli = reconciliation_of(harness).walk(_day())
    assert cli.count(Outcome.SUBMITTED) == len(silent)
    assert periodic.run("default")
    text = scrape_metrics(harness.redis)
    assert 'recall_transcribe_reconciled_total{outcome="submitted",workspace="default"} 3.0' in text
    assert 'recall_transcribe_reconciled_total{outcome="known",workspace="default"} 3.0' in text
