"""What a client may hand a job, enforced at every door (the jobs API, the submit task, the CLI):
`provider` and `metadata` each at most MAX_DEPTH levels of arrays and objects and MAX_FIELD_BYTES
as compact JSON. A job is shown, stored and copied into its callbacks, so one oversized or deeply
nested value must be refused where it comes in, not met later by every reader of the job. So is
text that is not Unicode (a lone surrogate, which JSON's `\\ud800` escapes can carry): it can be
neither stored nor shown."""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 8
RECORDING_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # what a recording id may be, at every door
MAX_FIELD_BYTES = 16 * 1024
WITHHELD = {"withheld": "over the limits (stored before they applied)"}


def recording_id(value: object) -> bool:
    """`value` is a recording id we may submit (and use in a URL path or a Redis key)."""
    return isinstance(value, str) and re.fullmatch(RECORDING_ID, value) is not None


class OverLimit(ValueError):
    """A value over the limits, or not text; the message names the field and why, in one line."""


def depth(value: Any) -> int:
    """Levels of arrays and objects, counted without recursion (so any depth can be measured)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level)
            stack.extend((item, level + 1) for item in node)
    return deepest


def check(name: str, value: Any) -> None:
    """Raise `OverLimit` when `value` (a job's `provider` or `metadata`) is over the limits."""
    if value is None:
        return
    if depth(value) > MAX_DEPTH:
        raise OverLimit(f"{name}: nested deeper than {MAX_DEPTH} levels")
    try:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
    except UnicodeEncodeError as exc:
        raise OverLimit(_not_text(name, exc)) from None
    except (TypeError, ValueError) as exc:  # no JSON value: from Python callers alone
        raise OverLimit(f"{name}: not a JSON value ({exc})") from None
    if size > MAX_FIELD_BYTES:
        raise OverLimit(f"{name}: {size} bytes as JSON, over the limit of {MAX_FIELD_BYTES}")


def text(name: str, value: str | None) -> None:
    """Raise `OverLimit` when `value` (a recording id, a key) holds a lone surrogate."""
    try:
        if value is not None:
            value.encode()
    except UnicodeEncodeError as exc:
        raise OverLimit(_not_text(name, exc)) from None


def _not_text(name: str, exc: UnicodeEncodeError) -> str:
    return f"{name}: holds a lone surrogate, {exc.object[exc.start]!a}, which is not text"


def within(value: Any) -> bool:
    """Whether a stored value may be shown: what breaks a view (and the page and sweep that hold
    it) is depth, so depth alone is checked, on every view, without serialising anything."""
    return depth(value) <= MAX_DEPTH
