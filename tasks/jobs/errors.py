"""Why a job failed: its `error.code`, one value per cause, each a line of the README."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """`error.code` of a failed job (the README lists every value)."""

    TRANSCRIPT_FAILED = "transcript_failed"  # Recall reported the transcript failed (`sub_code`)
    LIMIT_REACHED = "limit_reached"  # 10 transcripts and LIMIT_POLICY allows deleting none
    TIMEOUT = "timeout"  # still processing after RECALL_TRANSCRIPT_TIMEOUT_S
    RECALL_REJECTED = "recall_rejected"  # 400, 402, 403 or another 4xx
    RECALL_UNAUTHORIZED = "recall_unauthorized"  # 401: the API key
    NOT_FOUND = "not_found"  # 404: no such recording or transcript
    DOWNLOAD_REFUSED = "download_refused"  # a download_url not https, or too large
    RATE_LIMITED = "rate_limited"  # 429 past the retry budget
    RECALL_UNAVAILABLE = "recall_unavailable"  # 409, 5xx, no connection, past the budget
    RECALL_UNREACHABLE = "recall_unreachable"  # timeouts or resets after sending, past the budget
    DOWNLOAD_EXPIRED = "download_expired"  # the pre-signed URL kept being refused
    NOT_READY = "not_ready"  # a done transcript kept coming without its data
    DEADLINE_EXCEEDED = "deadline_exceeded"  # still unfinished JOB_DEADLINE_S after it (re)started
    DOWNLOAD_TIMEOUT = "download_timeout"  # downloads kept taking over RECALL_DOWNLOAD_TIMEOUT_S
    INTERNAL = "internal"  # the pipeline met something it cannot handle (the message says what)
