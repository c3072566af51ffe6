"""`recall-transcribe enqueue` and `recall-transcribe jobs`: a job submitted, listed, shown,
retried, or its transcript printed, from the shell; and the listing indexes repaired."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from recall_transcribe.listing import list_jobs, moment
from tasks.jobs.states import State
from tasks.jobs.views import Source
from tasks.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from tasks.dispatch import Dispatcher
    from tasks.jobs.store import JobStore


def dispatcher(settings: Settings) -> Dispatcher:
    from tasks.connection import redis_client
    from tasks.dispatch import Dispatcher
    from tasks.jobs.store import JobStore

    jobs = JobStore.from_settings(redis_client(settings), settings)
    return Dispatcher.from_settings(jobs, settings)


def enqueue(args: argparse.Namespace, _: list[str]) -> int:
    dispatch = dispatcher(load_settings())
    jobs = dispatch.jobs
    if not dispatch.knows(args.workspace):
        raise ConfigError(f"--workspace: no workspace {args.workspace!r} is set up")
    job_id, created = dispatch.submit(
        args.recording_id,
        args.provider,
        None,
        args.idempotency_key,
        workspace=args.workspace,
        source=Source.API,
    )
    print(f"job {job_id} ({'queued' if created else 'already exists'})")
    if not args.wait:
        return 0
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    last = ""
    while True:
        job = jobs.record(job_id)
        if job is None:
            print("job vanished", file=sys.stderr)
            return 1
        if job.state != last:
            print(f"  {time.strftime('%H:%M:%S')} {job.state}", flush=True)
            last = job.state
        if job.state == State.DONE:
            print(f"transcript {job.transcript_id} persisted")
            return 0
        if job.state == State.FAILED:
            error = job.error
            print(f"failed: {error.code}: {error.message}" if error else "failed")
            return 1
        if deadline is not None and time.monotonic() > deadline:
            print("still running; stopped waiting", file=sys.stderr)
            return 3
        time.sleep(0.5)


def jobs(args: argparse.Namespace, _: list[str]) -> int:
    from tasks.callbacks.views import job_view

    dispatch = dispatcher(load_settings())
    jobs = dispatch.jobs
    if args.action == "list":
        return list_jobs(jobs, args)
    if args.action == "reindex":
        print(f"{jobs.reindex()} job(s) repaired in the listing indexes")
        return 0
    if args.action == "retry" and args.failed:
        return _retry_failed(dispatch, args)
    if not args.job_id:
        print(f"recall-transcribe: jobs {args.action} needs a JOB_ID", file=sys.stderr)
        return 2
    if args.action == "transcript":
        return _transcript(jobs, args.job_id, args.format)
    if args.action == "retry" and not dispatch.retry(args.job_id):
        print(f"job {args.job_id} is not a failed job", file=sys.stderr)
        return 1
    shown, history = job_view(jobs, args.job_id), jobs.history(args.job_id)
    if shown is None or history is None:
        print(f"no job {args.job_id}", file=sys.stderr)
        return 1
    if args.action == "show":
        from recall_transcribe.show import show

        show(shown, history, args.json, sys.stdout)
        return 0
    print(json.dumps(shown.model_dump(mode="json"), indent=2))
    return 0


def _retry_failed(dispatch: Dispatcher, args: argparse.Namespace) -> int:
    after = moment("--created-after", args.created_after)
    retried = dispatch.retry_failed(
        error_code=args.code, recording_id=args.recording_id, created_after=after
    )
    print(f"{retried} failed job(s) queued again")
    return 0


def _transcript(jobs: JobStore, job_id: str, fmt: str) -> int:
    """Print the job's persisted transcript in `fmt`: streamed, with nothing a terminal runs."""
    from tasks.formats import CannotRender, Format, for_terminal, open_transcript
    from tasks.jobs.states import State
    from tasks.store import open_store

    job = jobs.record(job_id)
    if job is None:
        print(f"no job {job_id}", file=sys.stderr)
        return 1
    if job.state != State.DONE or job.transcript_id is None:
        print(f"job {job_id} is {job.state}: no transcript persisted", file=sys.stderr)
        return 1
    settings = load_settings()
    store = open_store(settings.TRANSCRIPTS_STORE, settings.S3_ENDPOINT_URL)
    try:
        stored = open_transcript(store, job.recording_id, job.transcript_id, Format(fmt))
    except FileNotFoundError:
        print(f"transcript {job.transcript_id} is not in the store", file=sys.stderr)
        return 1
    except CannotRender as exc:
        print(f"transcript {job.transcript_id}: {exc}", file=sys.stderr)
        return 1
    with stored:
        sys.stdout.buffer.writelines(for_terminal(stored))
    sys.stdout.flush()
    return 0
