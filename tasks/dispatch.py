"""Starting jobs and sending their steps: the one way in for the pipeline, the receiver, the CLI
and other services' Celery messages.

A step is sent as a hand-built Celery message (tasks/messages.py) by one Lua command that records it
on its job (tasks/jobs/sending.py `send`): a job gets one message per step on its way, never a
second copy while the first waits in the queue, however long the backlog.
"""

from __future__ import annotations

from typing import Any

from tasks import limits
from tasks.jobs.sending import Due, Message
from tasks.jobs.states import State, Step
from tasks.jobs.store import JobStore
from tasks.jobs.views import Source
from tasks.messages import step_message
from tasks.names import DEFAULT
from tasks.settings import Settings


class Dispatcher:
    """Submits jobs (filling in their workspace's provider) and sends the steps they are due
    for."""

    def __init__(self, jobs: JobStore, providers: dict[str, dict[str, Any]]) -> None:
        self.jobs = jobs
        self.providers = providers  # each workspace's default provider

    @classmethod
    def from_settings(cls, jobs: JobStore, settings: Settings) -> Dispatcher:
        return cls(jobs, {name: w.provider for name, w in settings.workspaces.items()})

    def __call__(self, step: Step, job_id: str, recording_id: str) -> None:
        """Send `step` for the job, unless its message for that step is already on its way."""
        self.jobs.send([_message(step, job_id, recording_id)])

    def redrive(self, due: list[Due]) -> int:
        """Send the steps the sweeper found due (it checked that none is on its way)."""
        messages = [_message(d.step, d.job_id, d.recording_id) for d in due]
        return len(self.jobs.send(messages, redrive=True)) if messages else 0

    def provider(self, given: dict[str, Any] | None, workspace: str = DEFAULT) -> dict[str, Any]:
        """The provider configuration a job uses: the one given, else its workspace's
        (TRANSCRIPT_PROVIDER for the default)."""
        return given or self.providers[workspace]

    def knows(self, workspace: str) -> bool:
        return workspace in self.providers

    def submit(
        self,
        recording_id: str,
        provider: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        workspace: str = DEFAULT,
        source: Source = Source.API,
    ) -> tuple[str, bool]:
        """Start a job in `workspace` unless one exists for the key, and send its create; (job
        id, created). Without a key the job is the recording's, the one its `recording.done`
        starts; `source` says what started it (a job that exists keeps its own). `OverLimit`
        when the provider or the metadata is over the limits, or any of them is not text."""
        limits.text("recording_id", recording_id)
        limits.text("idempotency_key", idempotency_key)
        limits.check("provider", provider)
        limits.check("metadata", metadata)
        job_id, created = self.jobs.submit(
            recording_id,
            self.provider(provider, workspace),
            metadata,
            idempotency_key,
            callback_url,
            workspace,
            source,
        )
        if created:
            self(Step.CREATE, job_id, recording_id)
        return job_id, created

    def retry(self, job_id: str) -> bool:
        """Re-run a failed job from the furthest point known and send that step; False when
        the job is not failed."""
        phase = self.jobs.retry(job_id)
        job = self.jobs.record(job_id)
        if phase is None or job is None:
            return False
        if phase.step is not None:
            self(phase.step, job_id, job.recording_id)
        return True

    def retry_failed(
        self,
        *,
        error_code: str | None = None,
        recording_id: str | None = None,
        created_after: float | None = None,
    ) -> int:
        """Re-run every failed job that matches, each from the furthest point known; returns how
        many. They become due at once and the sweepers send them on: a large replay is paced by
        Recall's quotas like any burst, and creates no transcript twice."""
        retried = 0
        for job in self.jobs.records(State.FAILED, recording_id):
            if error_code is not None and (job.error is None or job.error.code != error_code):
                continue
            if created_after is not None and job.created_at < created_after:
                continue
            retried += self.jobs.retry(job.id) is not None
        return retried


def _message(step: Step, job_id: str, recording_id: str) -> Message:
    body, task_id = step_message(step, job_id, recording_id)
    return Message(job_id, step, task_id, body)
