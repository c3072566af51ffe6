"""Redis failing over under a burst: the figures of `tests/test_failover.py`, from `runs` runs of
it. A crash: a primary with AOF, one replica, three Sentinels; the primary SIGKILLed a third of the
way into 120 webhooks. A partition: the primary, with a receiver and a worker that still reach it,
cut off from two replicas, the Sentinels and the rest of the fleet. The test itself checks every
recording was transcribed once."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_failover.py"
SCENARIOS = ("crash", "partition")


def measure(workdir: Path, runs: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    figures = [_once(workdir, run) for run in range(runs)]
    return {scenario: _summary([f[scenario] for f in figures]) for scenario in SCENARIOS}


def _summary(figures: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [key for key in figures[0] if key != "recordings"]
    return {
        "runs": len(figures),
        "recordings per run": figures[0]["recordings"],
        **{f"{key} (median)": statistics.median(f[key] for f in figures) for key in keys},
        **{f"{key} (worst)": max(f[key] for f in figures) for key in keys},
    }


def _once(workdir: Path, run: int) -> dict[str, Any]:
    log = workdir / f"run-{run}.log"
    with log.open("w") as out:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", TEST, "-s", "-q"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=900,
            check=False,
        )
    text = log.read_text()
    if done.returncode != 0:
        raise RuntimeError(f"{TEST} failed:\n{text[-3000:]}")
    found: dict[str, Any] = {}
    for line in text.splitlines():
        if "{" in line:
            figures = json.loads(line[line.index("{") :])
            found.update(figures if "partition" in figures else {"crash": figures})
    return found
