"""Reconciliation with Recall's List Recordings: the recordings whose `recording.done` never
reached us get the job it would have started (walk.py), once an interval by one worker of the
fleet (periodic.py) or from the command line (`recall-transcribe reconcile`)."""

from __future__ import annotations

from collections.abc import Mapping

from tasks.dispatch import Dispatcher
from tasks.metrics import Metrics
from tasks.recall.client import RecallClient
from tasks.reconcile.periodic import OVERLAP_S, Periodic
from tasks.reconcile.walk import SOURCE, Outcome, Reconciliation, Stopped, Walk
from tasks.settings import Settings

__all__ = [
    "OVERLAP_S",
    "SOURCE",
    "Outcome",
    "Periodic",
    "Reconciliation",
    "Stopped",
    "Walk",
    "reconciliations",
]


def reconciliations(
    settings: Settings,
    dispatch: Dispatcher,
    recalls: Mapping[str, RecallClient],
    metrics: Metrics | None = None,
    *,
    dry_run: bool = False,
) -> dict[str, Reconciliation]:
    """One reconciliation per workspace, with the RECONCILE_* settings."""
    return {
        name: Reconciliation(
            dispatch,
            recall,
            name,
            settings.RECONCILE_GRACE_S,
            settings.RECONCILE_SKIP_TRANSCRIBED,
            metrics.for_workspace(name) if metrics is not None else None,
            dry_run,
        )
        for name, recall in recalls.items()
    }
