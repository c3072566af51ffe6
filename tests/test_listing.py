"""Listings read from indexes: every filter, alone and combined, equals a brute-force filter of
the same jobs; cursors neither repeat nor skip while jobs come and go; a page's walk is bounded;
jobs written before the indexes are upgraded into them."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
import redis
from flask.testing import FlaskClient

from receiver.app import create_app
from tasks import keys
from tasks.jobs import listing
from tasks.jobs.errors import ErrorCode
from tasks.jobs.listing import Filters, Page
from tasks.jobs.record import JobRecord, decode
from tasks.jobs.states import State
from tasks.jobs.store import JobStore
from tasks.settings import Settings
from tests.helpers import reconfigure

PROVIDER = {"recallai_async": {}}
CODES = (ErrorCode.LIMIT_REACHED, ErrorCode.TIMEOUT)
AUTH = {"Authorization": "Bearer token-1"}


@pytest.fixture
def jobs(rclient: redis.Redis) -> JobStore:
    return JobStore(rclient, lease_s=30)


def populate(jobs: JobStore, count: int = 60) -> None:
    """Jobs over three recordings and two workspaces, in every kind of state: queued,
    creating, awaiting, done, failed with one of two codes, and failed then retried."""
    for i in range(count):
        job_id, _ = jobs.submit(
            f"rec-{i % 3}", PROVIDER, workspace=f"ws-{i % 2}", idempotency_key=f"k-{i}"
        )
        kind = i % 6
        if kind in (1, 2, 3):
            jobs.start_create(cast(JobRecord, jobs.record(job_id)), time.time())
        if kind in (2, 3):
            jobs.record_created(job_id, f"t-{i}", 60)
        if kind == 3:
            jobs.transcript_finished(job_id, f"t-{i}", "done", None)
            jobs.finish(job_id)
        if kind in (4, 5):
            jobs.fail(job_id, CODES[i % 2], "no")
        if kind == 5 and i % 4 == 1:
            jobs.retry(job_id)


def everything(jobs: JobStore) -> list[JobRecord]:
    ids = {
        m.decode() for key in jobs.redis.keys(keys.job("*")) for m in [key[len(keys.JOB_PREFIX) :]]
    }
    found = [decode(cast(dict[bytes, bytes], jobs.redis.hgetall(keys.job(i))), i) for i in ids]
    return sorted((r for r in found if r), key=lambda r: (r.created_at, r.id), reverse=True)


def walk(jobs: JobStore, filters: Filters, limit: int = 7) -> Iterator[Page]:
    page = jobs.page(filters, limit=limit)
    yield page
    for _ in range(1000):
        if page.next_cursor is None:
            return
        page = jobs.page(filters, cursor=page.next_cursor, limit=limit)
        yield page


def combinations(records: list[JobRecord]) -> Iterator[Filters]:
    window = (records[len(records) * 2 // 3].created_at, records[len(records) // 3].created_at)
    for recording, state, workspace, code, created in itertools.product(
        (None, "rec-1"),
        (None, State.FAILED, State.QUEUED, State.DONE),
        (None, "ws-1"),
        (None, CODES[0]),
        (None, window),
    ):
        yield Filters(
            recording_id=recording,
            state=state,
            workspace=workspace,
            error_code=code,
            created_after=created[0] if created else None,
            created_before=created[1] if created else None,
        )


def test_every_filter_alone_and_combined_equals_a_brute_force_filter(jobs: JobStore) -> None:
    populate(jobs)
    records = everything(jobs)
    assert {r.state for r in records} >= {State.QUEUED, State.AWAITING, State.DONE, State.FAILED}
    for filters in combinations(records):
        listed = [r.id for page in walk(jobs, filters) for r in page.records]
        assert listed == [r.id for r in records if filters.keeps(r)], filters


@pytest.mark.parametrize("reads", [1, 2, 5])
def test_the_union_of_indexes_merges_in_order_through_ties_and_tiny_reads(
    jobs: JobStore, monkeypatch: pytest.MonkeyPatch, reads: int
) -> None:
    """Jobs created at one of three instants, so that equal creation times sit in several
    indexes, each read a few entries a call: the merge still equals a brute-force filter."""
    monkeypatch.setattr(listing, "CALL_READS", reads)
    populate(jobs, 36)
    instants = [1_700_000_000.25, 1_700_000_001.5, 1_700_000_002.75]
    for i, record in enumerate(everything(jobs)):
        at = instants[i % 3]
        jobs.redis.hset(keys.job(record.id), "created_at", repr(at))
        for key in [*jobs.redis.keys(f"{keys.INDEX_PREFIX}*"), keys.recording(record.recording_id)]:
            jobs.redis.zadd(key, {record.id: at}, xx=True)
    records = everything(jobs)
    for filters in itertools.islice(combinations(records), 0, None, 2):
        listed = [r.id for page in walk(jobs, filters, limit=3) for r in page.records]
        assert listed == [r.id for r in records if filters.keeps(r)], filters


def test_one_call_shares_its_reads_among_the_indexes_it_walks(
    jobs: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page by offset over many indexes (every workspace's, every state's): no script call
    reads more than CALL_READS entries in all, however many indexes the union holds."""
    monkeypatch.setattr(listing, "CALL_READS", 12)
    populate(jobs, 60)
    script, asked = jobs._pages, []

    def counted(**kwargs: Any) -> Any:
        budget, walked = kwargs["args"][4:6]  # per index, and how many indexes
        asked.append(int(budget) * int(walked))
        return script(**kwargs)

    jobs.__dict__["_pages"] = counted
    records = everything(jobs)
    page = jobs.page(Filters(), offset=20, limit=10)
    assert [r.id for r in page.records] == [r.id for r in records][20:30]
    assert asked and max(asked) <= 12


def test_offset_pages_as_before(jobs: JobStore) -> None:
    populate(jobs, 20)
    records = everything(jobs)
    page = jobs.page(Filters(workspace="ws-0"), offset=3, limit=4)
    assert [r.id for r in page.records] == [r.id for r in records if r.workspace == "ws-0"][3:7]


def test_cursor_pages_neither_repeat_nor_skip_while_jobs_come_and_go(jobs: JobStore) -> None:
    populate(jobs, 40)
    present = {r.id for r in everything(jobs)}
    listed: list[str] = []
    added: list[str] = []
    for page in walk(jobs, Filters(), limit=5):
        listed += [r.id for r in page.records]
        for _ in range(3):  # newer jobs, before and after the cursor's place in time
            added.append(jobs.submit(f"new-{len(added)}", PROVIDER)[0])
        for gone in sorted(present - set(listed))[:2]:  # ... and some leave (finished, pruned)
            jobs.fail(gone, ErrorCode.TIMEOUT, "gone")
        jobs.prune_finished(0)
    assert len(listed) == len(set(listed))
    throughout = {job_id for job_id in present if jobs.record(job_id) is not None}
    assert len(throughout) > 10 and throughout <= set(listed)
    assert not set(listed) & set(added)  # newer than the first page: a fresh listing shows them


def test_a_page_reads_a_bounded_number_of_index_entries(
    jobs: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listing, "CALL_READS", 30)
    monkeypatch.setattr(listing, "PAGE_READS", 100)
    rare, _ = jobs.submit("rec-shared", PROVIDER, workspace="ws-a", idempotency_key="rare")
    jobs.fail(rare, ErrorCode.TIMEOUT, "the one")
    for i in range(250):  # the recording's other jobs: queued, or failed in another workspace
        workspace = "ws-a" if i % 2 else "ws-b"
        job_id, _ = jobs.submit("rec-shared", PROVIDER, workspace=workspace, idempotency_key=f"{i}")
        if i % 2 == 0:
            jobs.fail(job_id, ErrorCode.TIMEOUT, "no")
    script, reads = jobs._pages, []

    def counted(**kwargs: Any) -> Any:
        answer = script(**kwargs)
        reads.append(int(answer[0]))
        return answer

    jobs.__dict__["_pages"] = counted
    filters = Filters(recording_id="rec-shared", state=State.FAILED, workspace="ws-a")
    found, pages = [], 0
    for page in walk(jobs, filters, limit=10):
        found += [r.id for r in page.records]
        pages += 1
    assert found == [rare] and pages >= 2  # the first page ended short, with a cursor
    assert max(reads) <= 30 and sum(reads) <= 100 * pages


def test_jobs_written_before_the_indexes_are_upgraded_into_them(jobs: JobStore) -> None:
    populate(jobs, 30)
    client = jobs.redis
    indexes = cast(list[bytes], client.keys(f"{keys.INDEX_PREFIX}*"))
    indexes += cast(list[bytes], client.keys(f"{keys.RECORDING_JOBS_PREFIX}*"))
    client.delete(*indexes, keys.INDEXES)
    for record in everything(jobs):  # as schema 3 kept every job, and a recording's
        client.zadd("rt:jobs", {record.id: record.created_at})
        client.sadd(keys.old_recording_set(record.recording_id), record.id)
    client.set(keys.SCHEMA, "3")
    assert jobs.upgrade() == 30 and jobs.upgrade() == 0
    assert not client.exists(*(keys.old_recording_set(f"rec-{i}") for i in range(3)))
    records = everything(jobs)
    for filters in itertools.islice(combinations(records), 0, None, 5):
        listed = [r.id for page in walk(jobs, filters) for r in page.records]
        assert listed == [r.id for r in records if filters.keeps(r)], filters


def test_the_api_pages_by_cursor_and_refuses_bad_parameters_in_one_line(
    settings: Settings, jobs: JobStore
) -> None:
    client: FlaskClient = create_app(reconfigure(settings, API_TOKENS="token-1")).test_client()
    populate(jobs, 12)
    expected = [r.id for r in everything(jobs) if r.error and r.error.code == CODES[0]]
    first = client.get(f"/api/v1/jobs?error_code={CODES[0]}&limit=1", headers=AUTH).json
    assert [j["id"] for j in first["jobs"]] == expected[:1] and first["next_cursor"]
    rest = client.get(
        f"/api/v1/jobs?error_code={CODES[0]}&cursor={first['next_cursor']}", headers=AUTH
    ).json
    assert [j["id"] for j in rest["jobs"]] == expected[1:] and rest["next_cursor"] is None
    dated = client.get("/api/v1/jobs?created_after=2000-01-01T00:00:00Z", headers=AUTH).json
    assert len(dated["jobs"]) == 12
    for bad in ("cursor=yesterday", "created_after=2024-13-01", "created_before=today"):
        answer = client.get(f"/api/v1/jobs?{bad}", headers=AUTH)
        assert answer.status_code == 400 and "\n" not in answer.json["error"], bad


def test_paging_by_offset_through_sparse_matches_skips_none_and_ends(
    settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first page cut short by the read bound says how many matches it consumed; a page by
    offset counts every match before it, past the bound (the bounds here: 100x smaller)."""
    monkeypatch.setattr(listing, "PAGE_READS", 100)
    monkeypatch.setattr(listing, "CALL_READS", 40)
    client: FlaskClient = create_app(reconfigure(settings, API_TOKENS="token-1")).test_client()
    jobs = JobStore(rclient, 30)
    failed = []
    for index in range(400):  # every eu job fails; one default job in 40
        workspace = "default" if index % 2 == 0 else "eu"
        job_id, _ = jobs.submit(f"r{index}", {"recallai_async": {}}, workspace=workspace)
        if workspace == "eu" or index % 40 == 0:
            jobs.fail(job_id, ErrorCode.TIMEOUT, "t")
            if workspace == "default":
                failed.append(job_id)
    seen: list[str] = []
    offset: int | None = 0
    for _ in range(50):
        query = f"state=failed&workspace=default&limit=3&offset={offset}"
        page = client.get(f"/api/v1/jobs?{query}", headers=AUTH).json
        assert page is not None
        seen += [job["id"] for job in page["jobs"]]
        offset = page["next_offset"]
        if offset is None:
            break
    assert seen == list(reversed(failed)) and offset is None


def holding(jobs: JobStore, job_id: str) -> set[str]:
    """The listing indexes holding `job_id`."""
    names = [name.decode() for name in jobs.redis.keys(f"{keys.INDEX_PREFIX}*")]
    return {name for name in names if jobs.redis.zscore(name, job_id) is not None}


def stale_entry(jobs: JobStore, job_id: str, state: str, code: str | None = None) -> None:
    """An entry of the job in the default workspace's listing index of `state` (`code`)."""
    name = keys.index("default", state, code)
    jobs.redis.zadd(name, {job_id: time.time()})
    jobs.redis.sadd(keys.INDEXES, name)


def as_an_old_worker_moved(jobs: JobStore, job_id: str, stale: str) -> None:
    """What a worker of the release before schema 5 leaves: the job moved, its entries in
    these indexes not (it is still listed under `stale`, and under no index of its state); it
    kept its own indexes instead."""
    for name in holding(jobs, job_id):
        jobs.redis.zrem(name, job_id)
    stale_entry(jobs, job_id, stale)
    record = cast(JobRecord, jobs.record(job_id))
    jobs.redis.zadd("rt:jobs", {job_id: record.created_at})
    jobs.redis.zadd(f"rt:jobs:state:{record.state}", {job_id: record.created_at})


def test_prune_takes_a_job_out_of_every_state_index_not_only_its_own(jobs: JobStore) -> None:
    done, _ = jobs.submit("rec-0", PROVIDER)
    failed, _ = jobs.submit("rec-1", PROVIDER)
    jobs.start_create(cast(JobRecord, jobs.record(done)), time.time())
    jobs.record_created(done, "t-0", 60)
    jobs.transcript_finished(done, "t-0", "done", None)
    jobs.finish(done)
    jobs.fail(failed, ErrorCode.TIMEOUT, "no")
    stale_entry(jobs, done, "queued")  # what an old worker left beside its own entry
    stale_entry(jobs, failed, "creating")
    stale_entry(jobs, failed, "queued", ErrorCode.TIMEOUT)
    assert jobs.prune_finished(0) == 2
    assert not holding(jobs, done) and not holding(jobs, failed)


def test_reindex_repairs_what_old_workers_left_and_is_idempotent(
    jobs: JobStore, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from recall_transcribe.cli import main

    populate(jobs, 30)
    records = everything(jobs)
    wrong = [r for r in records if r.state != State.QUEUED][:8]
    for record in wrong:  # moved by an old worker: still listed as queued
        as_an_old_worker_moved(jobs, record.id, "queued")
    unlisted = next(r for r in records if r.state == State.QUEUED and r not in wrong)
    for name in holding(jobs, unlisted.id):  # submitted by an old worker: in no index
        jobs.redis.zrem(name, unlisted.id)
    coded = next(r for r in records if r.error and r not in wrong)
    stale_entry(jobs, coded.id, coded.state, ErrorCode.NOT_FOUND)
    stale_entry(jobs, "gone-long-ago", "awaiting")  # pruned by them
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REDIS_URL", settings.REDIS_URL)
        patch.setenv("RECALL_API_BASE_URL", settings.RECALL_API_BASE_URL)
        patch.setenv("RECALL_API_KEY", "test-key")
        assert main(["jobs", "reindex"]) == 0
    assert capsys.readouterr().out.split()[0] == str(len(wrong) + 3)
    assert jobs.reindex() == 0
    assert not holding(jobs, "gone-long-ago")
    for filters in itertools.islice(combinations(records), 0, None, 3):
        listed = [r.id for page in walk(jobs, filters) for r in page.records]
        assert listed == [r.id for r in records if filters.keeps(r)], filters


def test_reindex_beside_traffic_leaves_every_job_where_it_is(jobs: JobStore) -> None:
    populate(jobs, 30)
    for record in everything(jobs)[:10]:
        as_an_old_worker_moved(jobs, record.id, "done")
    queued = [r.id for r in everything(jobs) if r.state == State.QUEUED]
    with ThreadPoolExecutor(1) as pool:
        repair = pool.submit(lambda: [jobs.reindex() for _ in range(5)])
        for job_id in queued:  # moved by this release while the repair runs
            jobs.fail(job_id, ErrorCode.TIMEOUT, "no")
            jobs.retry(job_id)
            jobs.fail(job_id, ErrorCode.LIMIT_REACHED, "no")
        repair.result()
    records = everything(jobs)
    for filters in itertools.islice(combinations(records), 0, None, 3):
        listed = [r.id for page in walk(jobs, filters) for r in page.records]
        assert listed == [r.id for r in records if filters.keeps(r)], filters


def test_the_indexes_are_repaired_once_after_the_rollout(jobs: JobStore) -> None:
    populate(jobs, 12)
    jobs.redis.set(keys.SCHEMA, "3")
    jobs.upgrade()  # the first worker of this release
    moved = next(r for r in everything(jobs) if r.state == State.DONE)
    as_an_old_worker_moved(jobs, moved.id, "queued")  # a worker of the earlier one, after it
    assert jobs.repair_after_rollout(grace_s=3600) is None  # the rollout may still be going on
    assert holding(jobs, moved.id) == {keys.index("default", "queued")}
    jobs.redis.set(keys.SCHEMA_AT, jobs.now() - 3601)
    assert jobs.repair_after_rollout(grace_s=3600) == 1
    assert holding(jobs, moved.id) == {keys.index(moved.workspace, "done")}
    as_an_old_worker_moved(jobs, moved.id, "queued")
    assert jobs.repair_after_rollout(grace_s=3600) is None  # once per Redis
