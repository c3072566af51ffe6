"""`recall-transcribe jobs list`: a page of jobs read from the listing indexes, every filter of
the jobs API, and the cursor that goes on from it."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING

from tasks.jobs.errors import ErrorCode
from tasks.jobs.listing import Cursor, Filters
from tasks.jobs.states import State
from tasks.settings import ConfigError

if TYPE_CHECKING:
    from tasks.jobs.store import JobStore


def moment(flag: str, text: str | None) -> float | None:
    """An ISO 8601 time given on the command line, local time unless it says its offset."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
        return (when if when.tzinfo else when.astimezone()).timestamp()
    except (ValueError, OverflowError):
        raise ConfigError(f"{flag}: not an ISO 8601 time: {text}") from None


def list_jobs(jobs: JobStore, args: argparse.Namespace) -> int:
    """A page of jobs under a header, and how to see the next page when there is one."""
    try:
        code = ErrorCode(args.code) if args.code else None
        cursor = Cursor.parse(args.cursor) if args.cursor else None
    except ValueError as exc:
        raise ConfigError(f"--code or --cursor: {exc}") from None
    filters = Filters(
        recording_id=args.recording_id,
        state=State(args.state) if args.state else None,
        workspace=args.workspace,
        error_code=code,
        created_after=moment("--created-after", args.created_after),
        created_before=moment("--created-before", args.created_before),
    )
    page = jobs.page(filters, cursor=cursor, limit=max(1, args.limit), offset=max(0, args.offset))
    print(f"{'JOB':<36}  {'STATE':<9} {'RECORDING':<36}  {'TRANSCRIPT':<36}  ERROR")
    for job in page.records:
        error = job.error.code if job.error else ""
        print(
            f"{job.id:<36}  {job.state:<9} {job.recording_id:<36}  "
            f"{job.transcript_id or '-':<36}  {error}".rstrip()
        )
    if page.next_cursor is not None:
        print(f"(more: --cursor {page.next_cursor})")
    elif not page.records:
        print("(no jobs)")
    return 0
