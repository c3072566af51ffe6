"""The harness the tests and the benchmarks share: processes (Redis, `recall-transcribe`'s
subcommands), Recall's signed webhooks, and the whole system started and read as a user would."""

from harness.processes import (
    Process,
    command,
    free_port,
    http_ready,
    recall_transcribe,
    redis_answers,
    start_redis,
    wait_for,
)
from harness.system import (
    API_KEY,
    API_TOKEN,
    EmulatorHandle,
    System,
    another_workspace,
    start_system,
    system_env,
)
from harness.webhooks import (
    OTHER_SECRET,
    SECRET,
    WEBHOOK_PATH,
    deliver_recordings_done,
    post_webhook,
    recording_done,
    signed,
    transcript_event,
)

__all__ = [
    "API_KEY",
    "API_TOKEN",
    "OTHER_SECRET",
    "SECRET",
    "WEBHOOK_PATH",
    "EmulatorHandle",
    "Process",
    "System",
    "another_workspace",
    "command",
    "deliver_recordings_done",
    "free_port",
    "http_ready",
    "post_webhook",
    "recall_transcribe",
    "recording_done",
    "redis_answers",
    "signed",
    "start_redis",
    "start_system",
    "system_env",
    "transcript_event",
    "wait_for",
]
