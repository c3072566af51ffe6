"""The job state machine, in one screen: states, steps, and the one table of allowed transitions.

A job's *phase* is its state plus, while it is active, the step that must run next (`creating` means
create or remediate). `JobStore` (tasks/jobs/store.py) has one method per transition below; each is
one Lua command (tasks/jobs/jobs.lua) that refuses unless the job is in one of the transition's
`source` phases, and that moves it only to a phase of its `target` set, both passed from this table,
so a late, duplicated or out-of-order call changes nothing.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple


class State(StrEnum):
    QUEUED = "queued"
    CREATING = "creating"
    AWAITING = "awaiting"
    FETCHING = "fetching"
    DONE = "done"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        return self not in (State.DONE, State.FAILED)


class Step(StrEnum):
    CREATE = "create"
    REMEDIATE = "remediate"
    AWAIT = "await"
    FETCH = "fetch"


class Phase(NamedTuple):
    state: State
    step: Step | None = None

    def __str__(self) -> str:
        """How a phase is written in the job's hash, the only place it is spelled out."""
        return f"{self.state}:{self.step}" if self.step else str(self.state)

    @classmethod
    def parse(cls, text: str) -> Phase:
        state, _, step = text.partition(":")
        return cls(State(state), Step(step) if step else None)


QUEUED = Phase(State.QUEUED, Step.CREATE)
CREATING = Phase(State.CREATING, Step.CREATE)
REMEDIATING = Phase(State.CREATING, Step.REMEDIATE)
AWAITING = Phase(State.AWAITING, Step.AWAIT)
FETCHING = Phase(State.FETCHING, Step.FETCH)
DONE = Phase(State.DONE)
FAILED = Phase(State.FAILED)
PHASES = (QUEUED, CREATING, REMEDIATING, AWAITING, FETCHING, DONE, FAILED)
ACTIVE = frozenset(phase for phase in PHASES if phase.state.active)


class Transition(StrEnum):
    START_CREATE = "start_create"  # the create step begins (marks that a create may happen)
    CREATE_REFUSED = "create_refused"  # a definite error answer: the next create uses a new key
    START_REMEDIATION = "start_remediation"  # maybe at the 10-transcripts limit: a round begins
    END_REMEDIATION = "end_remediation"  # a slot is free: create again
    RECORD_CREATED = "record_created"  # created, or found by a listing; honours an early event
    KEEP_EARLY_EVENT = "keep_early_event"  # a transcript event before the create answer
    TRANSCRIPT_DONE = "transcript_done"  # by webhook or by poll
    TRANSCRIPT_FAILED = "transcript_failed"  # by webhook or by poll
    POLL_LATER = "poll_later"
    FINISH = "finish"  # the transcript is persisted
    RETRY_LATER = "retry_later"  # a retryable error or a quota wait: the same step later
    FAIL = "fail"  # a final error, a spent budget, or the job's deadline
    RECORD_ARCHIVE = "record_archive"  # another job's remediation archived this job's transcript
    RETRY = "retry"  # an operator re-runs a failed job from the furthest point known


class Rule(NamedTuple):
    source: frozenset[Phase]
    target: frozenset[Phase]  # empty: the phase does not change


def _rule(source: set[Phase] | frozenset[Phase], *target: Phase) -> Rule:
    return Rule(frozenset(source), frozenset(target))


TRANSITIONS: dict[Transition, Rule] = {
    Transition.START_CREATE: _rule({QUEUED, CREATING}, CREATING),
    Transition.CREATE_REFUSED: _rule({CREATING}, CREATING),
    Transition.START_REMEDIATION: _rule({CREATING}, REMEDIATING),
    Transition.END_REMEDIATION: _rule({REMEDIATING}, CREATING),
    Transition.RECORD_CREATED: _rule({CREATING, REMEDIATING}, AWAITING, FETCHING, FAILED),
    Transition.KEEP_EARLY_EVENT: _rule({QUEUED, CREATING, REMEDIATING}),
    Transition.TRANSCRIPT_DONE: _rule({AWAITING}, FETCHING),
    Transition.TRANSCRIPT_FAILED: _rule({AWAITING}, FAILED),
    Transition.POLL_LATER: _rule({AWAITING}, AWAITING),
    Transition.FINISH: _rule({FETCHING}, DONE),
    Transition.RETRY_LATER: _rule(ACTIVE),
    Transition.FAIL: _rule(ACTIVE, FAILED),
    Transition.RECORD_ARCHIVE: _rule({DONE, FAILED}),
    Transition.RETRY: _rule({FAILED}, QUEUED, AWAITING, DONE),
}


def sources(transition: Transition) -> str:
    """The phases a transition may start from, as the Lua script reads them."""
    return ",".join(sorted(str(phase) for phase in TRANSITIONS[transition].source))


def target(transition: Transition, phase: Phase) -> list[str]:
    """`phase` as the Lua script takes a target (its state, then its phase), once the table has
    confirmed that `transition` may lead there."""
    if phase not in TRANSITIONS[transition].target:
        raise ValueError(f"{transition} never leads to {phase}")
    return [str(phase.state), str(phase)]
