"""Logging for every process: text by default, or one JSON object per line (LOG_FORMAT=json).

The pipeline's own lines carry the job they are about (`job_id`, `recording_id`, `step`,
`transcript_id`, `outcome`, where they apply), passed as `extra` fields. Secrets never reach a log:
pre-signed URLs' queries are redacted by the Recall client before any formatter sees them.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

JOB_FIELDS = ("job_id", "recording_id", "step", "transcript_id", "outcome")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the job's fields, any error."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value:
                line[name] = str(value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(log_format: str) -> None:
    """Send every logger's records to stderr, as text or JSON lines."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
