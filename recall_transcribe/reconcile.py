"""`recall-transcribe reconcile`: find the recordings Recall finished in a window whose
`recording.done` never reached us, and submit the job it would have started (tasks/reconcile/).
A progress line while it walks (on stderr), the submitted recordings and a summary line (stdout).
"""

from __future__ import annotations

import re
import sys
import time
from datetime import UTC, datetime
from typing import TextIO

from tasks.recall.models import Recording
from tasks.reconcile import Outcome, Reconciliation, Walk
from tasks.settings import ConfigError, Settings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_moment(text: str, now: float, option: str) -> float:
    """`3d`, `12h`, `90m`, `30s`, `2w` (that long before now) or an ISO 8601 date-time (UTC
    when it names no offset), as Unix time; `ConfigError` naming the option otherwise."""
    match = _DURATION.match(text)
    if match:
        return now - float(match[1]) * _UNIT_S[match[2]]
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option}: {text!r} is neither a duration (3d, 12h, 90m) nor an ISO 8601 date-time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


class Progress:
    """One line on stderr that a terminal rewrites in place (a line per page otherwise), and
    the recordings submitted (or that would be)."""

    def __init__(self, workspace: str, out: TextIO) -> None:
        self._workspace = workspace
        self._out = out
        self._tty = out.isatty()
        self.submitted: list[str] = []

    def __call__(self, walk: Walk, page: list[tuple[Recording, Outcome]]) -> None:
        self.submitted += [r.id for r, outcome in page if outcome == Outcome.SUBMITTED]
        seen = sum(walk.counts.values())
        line = f"  {self._workspace}: page {walk.pages}, {seen} recording(s): {walk.summary()}"
        self._out.write(f"\r{line}\033[K" if self._tty else f"{line}\n")
        self._out.flush()

    def end(self) -> None:
        if self._tty:
            self._out.write("\n")
            self._out.flush()


def run(
    settings: Settings,
    reconciliations: dict[str, Reconciliation],
    since: str | None,
    until: str | None,
    dry_run: bool,
) -> int:
    """Walk each workspace's window; exit 0 (the summary says what was found)."""
    now = time.time()
    after = (
        now - settings.RECONCILE_LOOKBACK_S
        if since is None
        else parse_moment(since, now, "--since")
    )
    before = now if until is None else parse_moment(until, now, "--until")
    if after >= before:
        raise ConfigError(f"--since {_when(after)} is not before --until {_when(before)}")
    doing = "would submit" if dry_run else "submitted"
    print(f"reconciling recordings created {_when(after)} .. {_when(before)}", file=sys.stderr)
    for workspace, reconciliation in reconciliations.items():
        progress = Progress(workspace, sys.stderr)
        started = time.monotonic()
        walk = reconciliation.walk(Walk(after=after, before=before), progress=progress)
        progress.end()
        for recording_id in progress.submitted:
            print(f"{doing} {recording_id}")
        took = time.monotonic() - started
        dry = " (dry run: nothing submitted)" if dry_run else ""
        print(f"{workspace}: {walk.summary()} ({walk.pages} page(s), {took:.1f} s){dry}")
    return 0
