"""A reconciliation backfill at Recall's quotas: the fleet's first periodic run walks three days
of recordings through List Recordings (its own quota family) while bursts of recordings go
through the pipeline; the walk's time against the quota's bound, the calls Recall refused, and
the bursts' makespan against the same bursts on the same fleet with reconciliation off."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.pipeline import start_system
from emulator.quotas import RECALL_QUOTAS, parse_quotas
from harness import System, wait_for
from tasks import keys
from tasks.reconcile import Walk

PAGE_SIZE = 10  # the emulator's List Recordings page (Recall documents none)


def _backfill(recordings: int) -> Any:
    """What Recall holds: `recordings` finished over the three days the first run looks back,
    each already transcribed at Recall (RECONCILE_SKIP_TRANSCRIBED: the walk submits nothing,
    so the bursts meet the walk alone, not the jobs it would add)."""

    def seed(system: System) -> None:
        now = datetime.now(UTC)
        requests.post(
            f"{system.emulator_url}/_emulator/recordings",
            json={
                "count": recordings,
                "id_prefix": "bf-",
                # inside RECONCILE_LOOKBACK_S, all finished long before RECONCILE_GRACE_S
                "created_from": (now - timedelta(days=3) + timedelta(minutes=10)).isoformat(),
                "created_to": (now - timedelta(hours=1)).isoformat(),
                "duration_s": 600,
                "send_done": False,
                "transcript": True,
            },
            timeout=600,
        ).raise_for_status()

    return seed


def _fleet(workdir: Path, recordings: int, scale: float, reconcile: bool) -> System:
    return start_system(
        workdir,
        workers=2,
        quotas=RECALL_QUOTAS,
        quota_scale=scale,
        before_workers=_backfill(recordings),
        RECALL_POLL_INITIAL_S="600",
        RECONCILE_INTERVAL_S="86400" if reconcile else "0",  # one run: the first, at start
    )


def _walk(system: System) -> Walk | None:
    return Walk.load(system.redis.hget(keys.reconcile("default"), "walk"))


def _ran(system: System) -> float | None:
    """How long the last run took, on Redis's clock; None while none has ended."""
    started, ended = system.redis.hmget(keys.reconcile("default"), ["started_at", "ended_at"])
    return float(ended) - float(started) if started and ended else None


def _bursts(system: System, burst: int, rounds: int, prefix: str) -> list[float]:
    """Each burst's makespan, one after the other."""
    ids = [[f"{prefix}{r}-{i}" for i in range(burst)] for r in range(rounds)]
    return [round(system.persist_all(each), 2) for each in ids]


def backfill(
    workdir: Path, recordings: int, burst: int, rounds: int, scale: float
) -> dict[str, Any]:
    """`rounds` bursts of `burst` recordings on two workers with reconciliation off, then as
    many during the backfill's walk on a fleet started the same way."""
    alone = _fleet(workdir / "alone", recordings, scale, reconcile=False)
    try:
        without = _bursts(alone, burst, rounds, "alone-")
    finally:
        alone.stop()
    system = _fleet(workdir / "backfill", recordings, scale, reconcile=True)
    try:
        state = keys.reconcile("default")
        wait_for(lambda: system.redis.hkeys(state), 60, 0.01, what="the walk started")
        during = _bursts(system, burst, rounds, "during-")
        inside = _walk(system) is not None  # every burst ended before the walk did
        walk_s = wait_for(lambda: _ran(system), 600 + recordings / 2, 0.2, what="the walk ended")
        stats = system.emulator.stats()
    finally:
        system.stop()
    assert walk_s is not None
    count, window = parse_quotas(RECALL_QUOTAS)["recordings"]
    window *= scale
    calls = stats["calls"].get("recordings", 0)
    bound = calls * window / count
    return {
        "recordings": recordings,
        "quota windows": f"x {scale:.3f} (List Recordings {count} per {window:g} s)",
        "List Recordings calls": calls,
        "pages of": PAGE_SIZE,
        "walk (s)": round(walk_s, 1),
        "bound calls / rate (s)": round(bound, 1),
        "x bound": round(walk_s / bound, 2) if bound else None,
        "throttled (429)": sum(stats["throttled"].values()),
        "burst": burst,
        "burst makespans without (s)": without,
        "burst makespans during the walk (s)": during,
        "bursts inside the walk": inside,
        "x without": round(statistics.median(during) / statistics.median(without), 2),
    }
