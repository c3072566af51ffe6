"""`recall-transcribe jobs show ID`: the job and its history as a timeline readable in a terminal
(time since submission, event, state, step, error), or both as one JSON object with `--json`.
Errors are Recall's words (an answer's body, a sub_code): shown as plain text, so no control
character in them reaches the terminal."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TextIO

from tasks.formats import plain
from tasks.jobs.history import History
from tasks.jobs.views import Job


def show(job: Job, history: History, as_json: bool, out: TextIO) -> None:
    if as_json:
        events = [event.model_dump(mode="json") for event in history.events]
        print(json.dumps({**job.model_dump(mode="json"), "history": events}, indent=2), file=out)
        return
    print(f"job         {job.id}  ({job.workspace})", file=out)
    print(f"recording   {job.recording_id}  (started by {job.source})", file=out)
    print(f"state       {job.state}  (attempt {job.attempts})", file=out)
    print(f"transcript  {job.transcript_id or '-'}", file=out)
    print(f"submitted   {job.created_at}", file=out)
    if job.error:
        print(f"error       {job.error.code}: {plain(job.error.message)}", file=out)
    print(f"\n{'SINCE':>12}  {'EVENT':<18} {'STATE':<9} {'STEP':<10} ERROR", file=out)
    start = _moment(job.created_at)
    for event in history.events:
        at = _moment(event.at)
        since = _since((at - start).total_seconds()) if start and at else "?"
        error = f"{event.error.code}: {plain(event.error.message)}" if event.error else ""
        line = f"{since:>12}  {event.event:<18} {event.state:<9} {event.step or '-':<10} {error}"
        print(line.rstrip(), file=out)
    if not history.events:
        print(f"{'':>12}  (no history: the job was submitted before histories were kept)", file=out)


def _moment(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")) if iso else None


def _since(seconds: float) -> str:
    """`+0.012s`, `+4m05.2s`, `+3h02m05s`, `+2d03h04m`: short, and exact where it matters."""
    if round(seconds, 3) < 60:
        return f"+{seconds:.3f}s"
    tenths = round(seconds * 10)
    if tenths < 36000:
        minutes, rest = divmod(tenths, 600)
        return f"+{minutes}m{rest / 10:04.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"+{hours}h{minutes:02d}m{secs:02d}s"
    days, hours = divmod(hours, 24)
    return f"+{days}d{hours:02d}h{minutes:02d}m"
