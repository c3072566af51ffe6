"""Sending steps and driving jobs: each step message sent is recorded on its job (`send`), so it is
sent again only once taken by a worker or provably lost, and a stale copy is recognised
(`consume`); the due-set is the safety net, claimed by the sweeper (`claim_due`), which re-drives a
message lost with a crashed worker or a restarted Redis when its time comes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import cast

from tasks import keys
from tasks.jobs.base import JobStoreBase
from tasks.jobs.errors import ErrorCode
from tasks.jobs.states import ACTIVE, FAILED, Phase, Step, Transition, sources, target
from tasks.names import PIPELINE_QUEUE


@dataclass(frozen=True)
class Due:
    """A job the sweeper must send its step for."""

    job_id: str
    step: Step
    recording_id: str


@dataclass(frozen=True)
class Message:
    """A step message to send: its task id (also its delivery tag) and its body."""

    job_id: str
    step: Step
    task_id: str
    body: str


def _runs_in(step: Step) -> str:
    """The phases in which `step` is the job's step, as the Lua script reads sources."""
    return ",".join(sorted(str(phase) for phase in ACTIVE if phase.step == step))


class Sending(JobStoreBase):
    """Step messages sent and taken, and the due-set the sweeper claims from."""

    def send(self, messages: list[Message], *, redrive: bool = False) -> list[str]:
        """Queue step messages, each recorded on its job; a job no longer at that step gets
        none, nor (unless `redrive`: the sweeper checked) a job whose message for the step is
        still queued or held by a worker. Returns the task ids sent."""
        args: list[str] = []
        for message in messages:
            args += [
                message.job_id,
                message.step,
                _runs_in(message.step),
                message.task_id,
                message.body,
            ]
        sent = self._run(
            "send",
            "",
            [PIPELINE_QUEUE, keys.SENT_SEQ, keys.KOMBU_UNACKED, keys.SENT_CONSUMED],
            "redrive" if redrive else "new",
            *args,
        )
        return [task_id.decode() for task_id in cast(list[bytes], sent)]

    def consume(self, job_id: str, task_id: str) -> bool:
        """A worker took the step message `task_id`: True if it is the job's current message
        (now taken), False for a stale copy (which must do nothing)."""
        return bool(self._run("consume", job_id, [keys.SENT_CONSUMED], task_id))

    def claim_due(self, limit: int = 200) -> tuple[list[Due], float | None]:
        """Jobs whose time has come and whose step must be sent, each pushed one lease ahead so
        one sweeper takes it, and the seconds until the next due job (None: none). A job past
        its deadline fails here; one whose step still runs, or whose message is still queued,
        is looked at again later."""
        deadline = {
            "code": ErrorCode.DEADLINE_EXCEEDED,
            "message": f"not finished {self.deadline_s:g}s after it started (JOB_DEADLINE_S)",
        }
        flat = cast(
            list[bytes | int],
            self._run(
                "claim",
                "",
                [PIPELINE_QUEUE, keys.KOMBU_UNACKED, keys.SENT_CONSUMED],
                limit,
                self.lease_s,
                keys.LOCK_PREFIX,
                sources(Transition.FAIL),
                *target(Transition.FAIL, FAILED),
                json.dumps(deadline),
                self._event(Transition.FAIL, deadline["code"], deadline["message"]),
            ),
        )
        head, rest = flat[0], cast(list[bytes], flat[1:])
        next_due = None if head == -1 else float(cast(bytes, head))
        due = [
            Due(rest[i].decode(), _step_of(rest[i + 1].decode()), rest[i + 2].decode())
            for i in range(0, len(rest), 3)
        ]
        return due, next_due

    def nudge(self, job_id: str, delay_s: float) -> None:
        """Make the job due within `delay_s` (never later than it already is)."""
        self._run("nudge", job_id, [], delay_s)


def _step_of(phase: str) -> Step:
    step = Phase.parse(phase).step
    if step is None:
        raise ValueError(f"a due job in phase {phase} has no step")
    return step
