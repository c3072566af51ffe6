"""py-spy on a running process tree while a load runs: where the samples land."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

WATCHED = {
    "receiver",
    "tasks",
    "worker",
    "bench",
    "standardwebhooks",
    "pydantic",
    "pydantic_core",
    "redis",
    "kombu",
    "celery",
    "flask",
    "werkzeug",
    "json",
    "requests",
    "urllib3",
    "http",
}
_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^:]+)(?::\d+)?\)$")


def top_functions(
    pid: int, load: Callable[[], Any], prefix: Path, limit: int = 15
) -> list[tuple[str, float]]:
    """Share of on-CPU samples (holding the GIL) per function, inclusive, largest first."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        return [("py-spy is not installed: pip install py-spy", 0.0)]
    raw = prefix.with_suffix(".collapsed")
    argv = [spy, "record", "--pid", str(pid), "--subprocesses", "--gil", "--nonblocking"]
    argv += ["--format", "raw"]
    argv += ["--rate", "200", "--output", str(raw), "--duration", "5"]
    spying = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    load()
    spying.wait(60)
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        names = {_name(frame) for frame in stack.split(";")}
        for name in names - {None}:
            inclusive[name] += int(count)  # type: ignore[index]
    if not total:
        return []
    shares = [(name, round(100 * n / total, 1)) for name, n in inclusive.most_common()]
    return [(name, share) for name, share in shares if share < 90][:limit]


def _name(frame: str) -> str | None:
    """`package/module:function` for the code worth naming, None for the machinery around it."""
    match = _FRAME.match(frame.strip())
    if match is None or not WATCHED & set(Path(match["file"]).parts[:-1]):
        return None
    module = Path(match["file"]).with_suffix("").parts[-2:]
    return f"{'/'.join(module)}:{match['fn']}"
