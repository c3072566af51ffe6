"""Pages of jobs read from indexes: each job sits in one listing index, its workspace's jobs in
its state (with its error code), a sorted set by creation time (tasks/keys.py), and in its
recording's. A page walks the union of the listing indexes its filters name (or the recording's,
keeping the jobs also in one of those), merged newest first from a cursor (pages.lua). A page
costs what it returns plus a bounded walk, however many jobs are retained; a cursor (a creation
time and a job id) stays put while jobs are added and removed, where an offset would shift."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import cast

import redis
from redis.commands.core import Script

from tasks import keys, scripts
from tasks.jobs import indexes
from tasks.jobs.base import JobStoreBase
from tasks.jobs.errors import ErrorCode
from tasks.jobs.record import JobRecord, decode
from tasks.jobs.states import State

CALL_READS = 1_000  # index entries one script call may read: Redis is blocked meanwhile
PAGE_READS = 10_000  # ... and one page: past it the page ends short, with a cursor to go on
CURSOR = r"^(-?[0-9]{1,20}(?:\.[0-9]{1,20})?(?:e[+-]?[0-9]{1,2})?)_([A-Za-z0-9-]{1,100})$"
_CURSOR = re.compile(CURSOR)


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last job's creation time (as Redis scores it) and id."""

    created_at: float
    job_id: str

    @classmethod
    def parse(cls, text: str) -> Cursor:
        match = _CURSOR.fullmatch(text)
        if match is None:
            raise ValueError("cursor: not a cursor this API gave (next_cursor)")
        return cls(float(match[1]), match[2])

    def __str__(self) -> str:
        return f"{self.created_at!r}_{self.job_id}"


@dataclass(frozen=True)
class Filters:
    """What a listing keeps; every filter is an index (created_after inclusive, before not)."""

    recording_id: str | None = None
    state: State | None = None
    workspace: str | None = None
    error_code: ErrorCode | None = None
    created_after: float | None = None
    created_before: float | None = None

    def sets(self, client: redis.Redis) -> tuple[list[str], list[str]]:
        """The indexes a page walks, and those a job walked must be in one of (none: any).
        ([], []) when no job can match."""
        narrowed = bool(self.state or self.workspace or self.error_code)
        union = (
            indexes.written(
                client,
                self.workspace,
                {self.state} if self.state else None,
                {str(self.error_code)} if self.error_code else None,
            )
            if narrowed or not self.recording_id
            else []
        )
        if self.recording_id and (union or not narrowed):
            return [keys.recording(self.recording_id)], union
        return union, []

    def keeps(self, record: JobRecord) -> bool:
        """The same filters on a record read after its index entry (it may have moved since)."""
        return (
            (self.recording_id is None or record.recording_id == self.recording_id)
            and (self.state is None or record.state == self.state)
            and (self.workspace is None or record.workspace == self.workspace)
            and (self.error_code is None or (record.error and record.error.code) == self.error_code)
            and (self.created_after is None or record.created_at >= self.created_after)
            and (self.created_before is None or record.created_at < self.created_before)
        )


@dataclass(frozen=True)
class Page:
    records: list[JobRecord]
    next_cursor: Cursor | None  # None: nothing after this page
    next_offset: int | None = None  # matches to skip for the next page, read by offset


class Listing(JobStoreBase):
    """Pages of jobs, newest first, any filters combined."""

    @cached_property
    def _pages(self) -> Script:
        return scripts.register(self.redis, __name__, "pages.lua")

    def page(
        self,
        filters: Filters = Filters(),
        *,
        cursor: Cursor | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """Up to `limit` jobs after `cursor` (skipping `offset` matches, as pages once were
        read). A page may end short of `limit` with a cursor when its walk reached PAGE_READS;
        a page by offset past the first counts every match before it, so it reads past
        PAGE_READS (an offset costs what it skips: the cursor is the way through many jobs)."""
        after, before = filters.created_after, filters.created_before
        if cursor and after is not None and cursor.created_at < after:
            return Page([], None)
        if cursor and before is not None and cursor.created_at >= before:
            cursor = None  # every job before `before` comes after the cursor
        walked, others = filters.sets(self.redis)
        if not walked:
            return Page([], None)
        low = "-inf" if after is None else repr(after)
        wanted = offset + limit + 1  # one more than the page: is there a next one?
        found: list[Cursor] = []
        read, exhausted, position = 0, False, cursor
        while len(found) < wanted and (read < PAGE_READS or offset) and not exhausted:
            if position:
                high, since = repr(position.created_at), position.job_id
            else:
                high, since = "+inf" if before is None else f"({before!r}", ""
            budget = CALL_READS if offset else min(CALL_READS, PAGE_READS - read)
            budget = max(1, budget // len(walked))  # a call reads CALL_READS, shared out
            if not others:  # every entry walked is a match: no index need give more than wanted
                budget = min(budget, wanted - len(found))
            answer = cast(
                list[bytes | int],
                self._pages(
                    keys=[*walked, *others],
                    args=[high, since, low, wanted - len(found), budget, len(walked)],
                ),
            )
            read += cast(int, answer[0])
            exhausted = answer[1] == 1
            if answer[0]:
                position = _cursor(answer[2], answer[3])
            pairs = answer[4:]
            found += [_cursor(pairs[i + 1], pairs[i]) for i in range(0, len(pairs), 2)]
        chosen, next_cursor = found[offset:], position
        if len(chosen) > limit:
            chosen, next_cursor = chosen[:limit], chosen[limit - 1]
        elif exhausted:
            next_cursor = None
        more = next_cursor is not None
        return Page(
            self._read(chosen, filters), next_cursor, offset + len(chosen) if more else None
        )

    def _read(self, chosen: list[Cursor], filters: Filters) -> list[JobRecord]:
        pipe = self.redis.pipeline(transaction=False)
        for each in chosen:
            pipe.hgetall(keys.job(each.job_id))
        answers = cast(list[dict[bytes, bytes]], pipe.execute())
        records = [decode(raw, each.job_id) for raw, each in zip(answers, chosen, strict=True)]
        return [r for r in records if r is not None and filters.keeps(r)]


def _cursor(score: bytes | int, job_id: bytes | int) -> Cursor:
    return Cursor(float(cast(bytes, score)), cast(bytes, job_id).decode())
