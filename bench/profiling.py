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

OURS = {"receiver", "tasks", "worker", "emulator", "bench", "recall_transcribe"}
_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^:]+)(?::\d+)?\)$")


def top_functions(
    pid: int, load: Callable[[], Any], prefix: Path, limit: int = 15
) -> list[tuple[str, float]]:
    """Where the on-CPU samples (holding the GIL) go: by package (leaf frames), then our own
    functions (inclusive), largest first."""
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
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        packages[_package(frames[-1])] += int(count)
        for name in {_name(frame) for frame in frames} - {None}:
            own[name] += int(count)  # type: ignore[index]
    if not total:
        return []
    by_package = [
        (f"{name} (self)", round(100 * n / total, 1)) for name, n in packages.most_common()
    ]
    ours = [(name, round(100 * n / total, 1)) for name, n in own.most_common()]
    return by_package[:8] + ours[:limit]


def _package(frame: str) -> str:
    """Which package a leaf frame's time belongs to: a library's name, ours, or the stdlib."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return "other"
    top = Path(match["file"]).parts[0].removesuffix(".py")  # py-spy shortens the paths
    if top in sys.stdlib_module_names or top.startswith("<"):
        return "stdlib"
    return top


def _name(frame: str) -> str | None:
    """`package/module:function` for the code worth naming, None for the machinery around it."""
    match = _FRAME.match(frame.strip())
    if match is None or Path(match["file"]).parts[0] not in OURS:
        return None
    module = Path(match["file"]).with_suffix("").parts[-2:]
    return f"{'/'.join(module)}:{match['fn']}"
