"""Bearer tokens, compared in constant time: the jobs API's and `/metrics`'."""

from __future__ import annotations

import hmac

from flask import request


def bearer_is_one_of(tokens: list[str]) -> bool:
    """True when the request's `Authorization: Bearer <token>` names one of `tokens`."""
    header = request.headers.get("Authorization", "")
    given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    return bool(given) and any(
        hmac.compare_digest(given.encode(), token.encode()) for token in tokens
    )
