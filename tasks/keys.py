"""Every Redis key the system uses, built in one place (all under `rt:`).

rt:job:{id}              hash: one job's record (tasks/jobs.py)
rt:jobs                  zset: every job id, by creation time
rt:state:{state}         zset: the job ids in that state, by last change
rt:recording:{rid}       set: the recording's job ids
rt:transcript:{tid}      string: the id of the job that owns a transcript
rt:due                   zset: unfinished job ids, by when a worker must next look at them
rt:lock:{id}             lock held while one step of a job runs
rt:lock:recording:{rid}  lock held while a recording's limit is remediated
rt:webhook:{event id}    a webhook already accepted (kept for the dedupe TTL)
rt:inbox                 hash: accepted events not yet applied, by event id (tasks/inbox.py)
rt:inbox:due             zset: when to re-send each of those events
rt:stats:events_ignored  hash: count of ignored event types
"""

from __future__ import annotations

PREFIX = "rt:"
JOB_PREFIX = f"{PREFIX}job:"
STATE_PREFIX = f"{PREFIX}state:"
JOBS = f"{PREFIX}jobs"
DUE = f"{PREFIX}due"
INBOX = f"{PREFIX}inbox"
INBOX_DUE = f"{PREFIX}inbox:due"
EVENTS_IGNORED = f"{PREFIX}stats:events_ignored"
METRIC_WEBHOOKS = f"{PREFIX}stats:webhooks"
METRIC_RECALL = f"{PREFIX}stats:recall_requests"
METRIC_RATE_LIMITED = f"{PREFIX}stats:rate_limited_seconds"


def job(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def state(name: str) -> str:
    return f"{STATE_PREFIX}{name}"


def recording(recording_id: str) -> str:
    return f"{PREFIX}recording:{recording_id}"


def transcript_owner(transcript_id: str) -> str:
    return f"{PREFIX}transcript:{transcript_id}"


def job_lock(job_id: str) -> str:
    return f"{PREFIX}lock:{job_id}"


def recording_lock(recording_id: str) -> str:
    return f"{PREFIX}lock:recording:{recording_id}"


def webhook_seen(event_id: str) -> str:
    return f"{PREFIX}webhook:{event_id}"


def rate(family: str, scope: str = "") -> str:
    return f"{PREFIX}rate:{family}:{scope}"


def rate_pause(family: str, scope: str = "") -> str:
    return f"{PREFIX}rate:{family}:{scope}:pause"


def recording_version(recording_id: str) -> str:
    return f"{PREFIX}recording:{recording_id}:version"


def metric_step(step: str) -> str:
    return f"{PREFIX}stats:step:{step}"
