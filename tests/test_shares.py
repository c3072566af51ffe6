"""Workspaces cannot starve each other: a workspace holds at most its share of a worker's threads
while another wants them, borrows idle ones when alone, and a step refused a thread is deferred:
not run, not lost, not run twice, no attempt counted, its quota ticket kept."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import requests

from harness import (
    API_KEY,
    OTHER_SECRET,
    EmulatorHandle,
    System,
    another_workspace,
    deliver_recordings_done,
    free_port,
    wait_for,
)
from tasks import keys
from tasks.jobs.states import Step
from tasks.metrics import Metrics
from tasks.outcomes import Outcome
from tasks.recall.client import INLINE_WAIT_S
from tasks.recall.limiter import DEFAULT_RATES, Family, Limiter, Rate
from tasks.recalls import recall_client
from tasks.settings import Settings
from tasks.shares import QUIET_S, Shares
from tests.helpers import QUICK_EMULATOR, Harness, by_workspace, run, start, state

HUNG_TARGETS = ("create", "retrieve", "list", "delete")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def taken(shares: Shares, workspace: str, count: int, stack: ExitStack) -> int:
    """Take up to `count` threads for `workspace`, kept until `stack` closes; how many."""
    return sum(stack.enter_context(shares.slot(workspace)) for _ in range(count))


# -- the cap ----------------------------------------------------------------------------------


def healthy(shares: Shares, *workspaces: str) -> Shares:
    """Shares whose `workspaces` have had steps succeed (each may hold every thread)."""
    for workspace in workspaces:
        for _ in range(shares.threads):
            shares.ended(workspace, failed=False)
    return shares


def test_a_workspace_alone_uses_every_thread_even_before_any_step_succeeded() -> None:
    shares = Shares(["us", "eu"], threads=8)
    with ExitStack() as stack:
        assert taken(shares, "eu", 10, stack) == 8
    assert taken(Shares(["us"], threads=4), "us", 10, ExitStack()) == 4


def test_a_workspace_gets_its_share_back_from_one_that_borrowed_every_thread() -> None:
    shares = healthy(Shares(["us", "eu"], threads=8), "us", "eu")
    with ExitStack() as stack:
        assert shares.share == 4
        assert taken(shares, "eu", 10, stack) == 8
        assert taken(shares, "us", 10, stack) == 4  # as eu's borrowed steps end
    with ExitStack() as stack:
        assert taken(shares, "eu", 10, stack) == 4  # us wants threads: its share is kept


def test_a_workspace_holds_at_most_its_share_while_another_wants_threads() -> None:
    clock = Clock()
    shares = healthy(Shares(["us", "eu"], threads=8, clock=clock), "us", "eu")
    with ExitStack() as stack:
        assert taken(shares, "us", 1, stack) == 1
        assert taken(shares, "eu", 10, stack) == 4
        assert taken(shares, "us", 10, stack) == 3
    with ExitStack() as stack:  # us has no step in flight, but asked lately: its share is kept
        assert taken(shares, "eu", 10, stack) == 4
        clock.now += QUIET_S + 1  # us quiet long enough: eu borrows
        assert taken(shares, "eu", 10, stack) == 4
        assert shares.running("eu") == 8


def test_a_workspace_whose_steps_fail_holds_one_thread_until_they_succeed_again() -> None:
    shares = healthy(Shares(["us", "eu"], threads=8), "us", "eu")
    for _ in range(3):
        shares.ended("eu", failed=True)  # 8, 4, 2, 1
    with ExitStack() as stack:
        assert taken(shares, "us", 1, stack) == 1
        assert taken(shares, "eu", 10, stack) == 1
        assert taken(shares, "us", 10, stack) == 6  # eu keeps no more than it may hold
    for _ in range(2):
        shares.ended("eu", failed=False)
    with ExitStack() as stack:
        assert taken(shares, "eu", 10, stack) == 3


def test_a_workspace_whose_steps_fail_alone_holds_one_thread_so_others_steps_reach_a_worker() -> (
    None
):
    """Its backlog ahead of another workspace's steps in the queue: hung alone, it would hold
    every thread and the other's steps would never come to ask for theirs."""
    shares = Shares(["us", "eu"], threads=8)
    with ExitStack() as stack:
        assert taken(shares, "eu", 10, stack) == 8  # alone: every thread
    for _ in range(4):
        shares.ended("eu", failed=True)  # 4, 2, 1, 1
    with ExitStack() as stack:
        assert taken(shares, "eu", 10, stack) == 1  # alone still, but failing: its steps defer
    healthy(shares, "eu")
    with ExitStack() as stack:
        assert taken(shares, "eu", 10, stack) == 8  # healthy again: every thread


def test_a_healthy_workspace_alone_is_never_held_back() -> None:
    shares = healthy(Shares(["us", "eu"], threads=8), "eu")
    shares.ended("eu", failed=False)
    with ExitStack() as stack:
        assert taken(shares, "eu", 10, stack) == 8


def test_a_workspace_new_to_a_busy_worker_starts_with_one_thread() -> None:
    shares = healthy(Shares(["us", "eu"], threads=8), "us")
    with ExitStack() as stack:
        assert taken(shares, "us", 1, stack) == 1
        assert taken(shares, "eu", 10, stack) == 1  # until its steps succeed
        assert taken(shares, "us", 10, stack) == 6  # eu keeps only the thread it may hold


def test_workspace_threads_sets_the_share() -> None:
    assert Shares(["us", "eu", "ap"], threads=8, configured=2).share == 2
    assert Shares(["us", "eu", "ap"], threads=2).share == 1


# -- deferral (real Redis, the steps run in-process) ---------------------------------------------


def test_a_deferred_step_is_not_run_not_lost_not_counted_and_keeps_its_quota_ticket(
    harness: Harness,
    emulator: EmulatorHandle,
    settings: Settings,
    rclient: redis.Redis,
) -> None:
    limiter = Limiter(rclient, {**DEFAULT_RATES, Family.CREATE: Rate(1, 1.0)}, INLINE_WAIT_S)
    harness.pipeline.recalls["default"] = recall_client(settings, limiter)
    harness.pipeline.metrics = Metrics(rclient)
    first, second = start(harness, emulator), harness.submit("r1", key="second")
    harness.clear()
    assert run(harness, Step.CREATE, first) == Outcome.CREATED
    assert run(harness, Step.CREATE, second) == Outcome.WAIT  # it now holds a quota ticket
    before = state(harness, second)
    assert before.quota_ticket is not None
    calls = emulator.stats()["calls"]

    shares = Shares(["default", "eu"], threads=2)  # a share of 1 thread each
    harness.pipeline.shares = shares
    with shares.slot("eu"), shares.slot("default"):  # eu wants threads; default has its share
        result = harness.run(Step.CREATE, second)
    assert result.outcome == Outcome.DEFERRED
    after = state(harness, second)
    assert (after.attempts, after.failures, after.quota_ticket, after.phase) == (
        before.attempts,
        before.failures,
        before.quota_ticket,
        before.phase,
    )
    assert emulator.stats()["calls"] == calls  # nothing called
    assert rclient.hget(keys.METRIC_STEPS, "deferred|default") == b"1"
    due_at = cast(float, rclient.zscore(keys.DUE, second))
    assert due_at <= harness.pipeline.jobs.now() + 1.0  # back within a second

    time.sleep(1.1)
    due, _ = harness.pipeline.jobs.claim_due()
    (again,) = [d for d in due if d.job_id == second]  # not lost
    assert again.step == Step.CREATE
    harness.pipeline.dispatch.redrive([again])
    ((_, job_id, task_id),) = harness.queued()
    assert job_id == second
    harness.clear()
    assert harness.pipeline.run_step(Step.CREATE, second, task_id).outcome == Outcome.CREATED
    assert harness.pipeline.run_step(Step.CREATE, second, task_id).outcome == Outcome.STALE
    assert emulator.stats()["created_by_recording"]["r1"] == 2  # once each, never twice


# -- the emulator's hang --------------------------------------------------------------------------


def test_a_hung_call_waits_until_its_client_gives_up_and_counts_in_flight_until_then(
    emulator: EmulatorHandle,
) -> None:
    emulator.fault(target="retrieve", action="hang", times=-1)
    url = f"{emulator.url}/api/v1/transcript/t1/"
    for _ in range(2):
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(url, headers={"Authorization": f"Token {API_KEY}"}, timeout=0.3)
        wait_for(lambda: emulator.stats()["in_flight"] == 0, 5, 0.02, "the hung call ended")
    assert emulator.stats()["peak_in_flight"] == 1


# -- the whole system -------------------------------------------------------------------------


def test_a_hung_workspace_never_holds_more_than_its_share_while_another_bursts(
    start_system: Any, tmp_path: Path
) -> None:
    """eu's Recall hangs every call (each waits out RECALL_HTTP_TIMEOUT_S) while default's burst
    of 100 recordings runs on two workers of 4 threads: the burst finishes, and eu never had
    more calls in flight than its share (2) per worker."""
    eu_port = free_port()
    system: System = start_system(  # no reconciliation: its own thread, not a worker's
        workers=0,
        RECALL_WORKSPACES=another_workspace("eu", eu_port, "eu-key", OTHER_SECRET),
        RECONCILE_INTERVAL_S="0",
    )
    for name in ("w1", "w2"):
        system.start_worker(name, concurrency=4)
    eu = system.start_emulator(
        *QUICK_EMULATOR, workspace="eu", api_key="eu-key", secret=OTHER_SECRET, port=eu_port
    )
    for target in HUNG_TARGETS:
        eu.fault(target=target, action="hang", times=-1)
    healthy = [f"us-{index}" for index in range(100)]
    hung = [f"eu-{index}" for index in range(20)]
    system.emulator.recordings(healthy)
    eu.recordings(hung)
    deliver_recordings_done(system.receiver_url, healthy, threads=8)
    deliver_recordings_done(
        system.receiver_url, hung, threads=8, path="/webhooks/recall/eu", secret=OTHER_SECRET
    )
    wait_for(lambda: eu.stats()["calls"].get("create", 0) >= 4, 30, what="eu's calls hanging")
    wait_for(lambda: system.done_in("default") == 100, 180, 0.5, "the healthy burst done")

    assert eu.stats()["peak_in_flight"] <= 2 * 2
    assert system.done_in("eu") == 0
    deferred = by_workspace(
        system.receiver_url, "recall_transcribe_steps_total", outcome="deferred"
    )
    assert deferred["eu"] > 0
