"""Every Redis key name the system uses, all under `rt:` (kombu's own keys aside).

Python builds keys from the functions here; the Lua scripts take whole keys as KEYS, and, where
one command walks many jobs (claim, prune), the prefixes below as arguments.

rt:job:{id}                 hash: one job's record (tasks/jobs/record.py) and its history
                            (the field `history`, tasks/jobs/history.py)
rt:index:{ws}:{state}       zset: a workspace's job ids in that state, by creation time: the
                            listing index a job sits in, its only entry among all jobs
rt:index:{ws}:{state}:{code}  ... of the jobs in that state with that error (failed ones)
rt:indexes                  set: every listing index key written (a listing walks those it needs)
rt:jobs:recording:{rid}     zset: the recording's job ids, by creation time
rt:schema                   how the job hashes are written (JobStore.upgrade)
rt:schema:at                when this release's upgrade wrote it (schema 5)
rt:schema:repaired          flag: the listing indexes were repaired once after that rollout
rt:schema:rollout           flag: workers of an earlier release may still run (set by the upgrade
                            of a Redis that held jobs, deleted by the repair): until then finished
                            jobs are not compacted, so that those workers can read them
rt:state:{state}            zset: the job ids in that unfinished state, by last change
rt:prune:skipped            hash: by finished listing index, how many jobs at its head (created
                            long ago, finished lately) the pruning passes over
rt:recording:{rid}:version  counter: our creates and deletes on the recording that reached Recall
rt:transcript:{tid}         string: the id of the unfinished job that owns a transcript
rt:due                      zset: unfinished job ids, by when a worker must next look at them
rt:outbox                   zset: `job id:attempt` of finished jobs whose news is not sent on yet
rt:callback:{id}            hash: one callback delivery (tasks/callbacks/)
rt:callbacks:event:{id}     hash: one event (a job's finish): its body, stored once for every
                            destination, and how many of its deliveries are pending
rt:callbacks:due            zset: pending callback deliveries, by their next attempt
rt:callbacks:busy:{group}   zset: deliveries being attempted to one destination, or for one
                            client (`client:{owner}`), by lease end
rt:callbacks:failed         zset: deliveries whose every attempt failed
rt:callbacks:parked:{group} zset: due deliveries waiting for room in their group, by due time
rt:callbacks:parked         zset: groups with parked deliveries, by when to look again
rt:callbacks:failing:{dest} flag (expiring): the destination's last attempt failed
rt:sent:seq                 counter: numbers every step message sent, in the order it was queued
rt:sent:consumed            the highest such number a worker has taken from the queue
rt:lock:{id}                lease held while one step of a job runs
rt:lock:recording:{rid}     lease held while a job creates on, or remediates, a recording
rt:webhook:{event id}       a webhook already accepted (kept for the dedupe TTL)
rt:inbox                    hash: accepted events not yet applied, by event id (tasks/inbox.py)
rt:inbox:due                zset: when to re-send each of those events
rt:inbox:deliveries         hash: how many times each of those events was sent
rt:inbox:dead               hash: events that could not be applied, by event id (dead letters)
rt:inbox:sent               hash: an event's message on its way ('seq task-id'), until taken
rt:inbox:seq                counter: numbers every ingest message sent, in the order queued
rt:inbox:taken              the highest such number a worker has taken
rt:tickets:unused           list: quota tickets of steps that will not run, to give back
rt:rate:{ws}:{family}:{scope}  zset: a workspace's Recall calls made and reserved
                            (tasks/recall/limiter.py), with `:pause`, `:seq` and `:pace` (the
                            pace learned from Recall's 429s) beside it
rt:reconcile:{ws}           hash: a workspace's reconciliation (tasks/reconcile/): its high-water
                            mark, when the last periodic run ended, the walk in progress
rt:reconcile:{ws}:lease     lease held by the one worker reconciling the workspace
rt:stats:...                the fleet's metrics counters (tasks/metrics.py)
unacked                     kombu's hash of delivered, unacknowledged messages, by delivery tag
"""

from __future__ import annotations

PREFIX = "rt:"
JOB_PREFIX = f"{PREFIX}job:"
STATE_PREFIX = f"{PREFIX}state:"
LOCK_PREFIX = f"{PREFIX}lock:"
RECORDING_PREFIX = f"{PREFIX}recording:"
RECORDING_JOBS_PREFIX = f"{PREFIX}jobs:recording:"
INDEX_PREFIX = f"{PREFIX}index:"
INDEXES = f"{PREFIX}indexes"
OWNER_PREFIX = f"{PREFIX}transcript:"
SCHEMA = f"{PREFIX}schema"
SCHEMA_AT = f"{PREFIX}schema:at"
SCHEMA_REPAIRED = f"{PREFIX}schema:repaired"
SCHEMA_ROLLOUT = f"{PREFIX}schema:rollout"
PRUNE_SKIPPED = f"{PREFIX}prune:skipped"
DUE = f"{PREFIX}due"
OUTBOX = f"{PREFIX}outbox"
UNUSED_TICKETS = f"{PREFIX}tickets:unused"
CALLBACK_PREFIX = f"{PREFIX}callback:"
CALLBACK_EVENT_PREFIX = f"{PREFIX}callbacks:event:"
CALLBACKS_DUE = f"{PREFIX}callbacks:due"
CALLBACKS_BUSY_PREFIX = f"{PREFIX}callbacks:busy:"
CALLBACKS_FAILED = f"{PREFIX}callbacks:failed"
CALLBACKS_PARKED_PREFIX = f"{PREFIX}callbacks:parked:"
CALLBACKS_PARKED = f"{PREFIX}callbacks:parked"
CALLBACKS_FAILING_PREFIX = f"{PREFIX}callbacks:failing:"
METRIC_CALLBACKS = f"{PREFIX}stats:callbacks"
SENT_SEQ = f"{PREFIX}sent:seq"
SENT_CONSUMED = f"{PREFIX}sent:consumed"
INBOX = f"{PREFIX}inbox"
INBOX_DUE = f"{PREFIX}inbox:due"
INBOX_DELIVERIES = f"{PREFIX}inbox:deliveries"
INBOX_DEAD = f"{PREFIX}inbox:dead"
INBOX_SENT = f"{PREFIX}inbox:sent"
INBOX_SEQ = f"{PREFIX}inbox:seq"
INBOX_TAKEN = f"{PREFIX}inbox:taken"
EVENTS_IGNORED = f"{PREFIX}stats:events_ignored"
METRIC_WEBHOOKS = f"{PREFIX}stats:webhooks"
METRIC_RECALL = f"{PREFIX}stats:recall_requests"
METRIC_RATE_LIMITED = f"{PREFIX}stats:rate_limited_seconds"
METRIC_RECONCILED = f"{PREFIX}stats:reconciled"
METRIC_LAST_WEBHOOK = f"{PREFIX}stats:last_webhook"
METRIC_JOB_DURATION = f"{PREFIX}stats:job_duration"
METRIC_JOB_FAILURES = f"{PREFIX}stats:job_failures"
METRIC_STEPS = f"{PREFIX}stats:steps"
KOMBU_UNACKED = "unacked"  # kombu's Redis transport default (`unacked_key`); we set no prefix


def job(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def state(name: str) -> str:
    return f"{STATE_PREFIX}{name}"


def index(workspace: str, state_name: str, code: str | None = None) -> str:
    """The listing index of a workspace's jobs in a state (with an error code). Built in
    jobs.lua too, from INDEX_PREFIX (it moves a job between indexes); parsed by `indexed`."""
    return f"{INDEX_PREFIX}{workspace}:{state_name}" + (f":{code}" if code else "")


def indexed(key: str) -> tuple[str, str, str | None] | None:
    """The workspace, state and error code a listing index key holds (None: not one)."""
    if not key.startswith(INDEX_PREFIX):
        return None
    workspace, _, rest = key[len(INDEX_PREFIX) :].partition(":")
    state_name, _, code = rest.partition(":")
    return (workspace, state_name, code or None) if workspace and state_name else None


LEGACY_INDEXES = (f"{PREFIX}jobs", f"{PREFIX}jobs:state:*", f"{PREFIX}workspace:*")
"""Listing indexes schema 4 kept (every job; each state's and error's; each workspace's): the
upgrade to schema 5 moves their jobs into the indexes above and deletes them."""


def recording(recording_id: str) -> str:
    return f"{RECORDING_JOBS_PREFIX}{recording_id}"


def old_recording_set(recording_id: str) -> str:
    """A recording's job ids as a set, as releases before schema 4 kept them (upgrade deletes)."""
    return f"{RECORDING_PREFIX}{recording_id}"


def recording_version(recording_id: str) -> str:
    return f"{RECORDING_PREFIX}{recording_id}:version"


def transcript_owner(transcript_id: str) -> str:
    return f"{OWNER_PREFIX}{transcript_id}"


def job_lock(job_id: str) -> str:
    return f"{LOCK_PREFIX}{job_id}"


def recording_lock(recording_id: str) -> str:
    return f"{LOCK_PREFIX}recording:{recording_id}"


def webhook_seen(event_id: str) -> str:
    return f"{PREFIX}webhook:{event_id}"


def rate(workspace: str, family: str, scope: str = "") -> str:
    return f"{PREFIX}rate:{workspace}:{family}:{scope}"


def rate_pause(workspace: str, family: str, scope: str = "") -> str:
    return f"{rate(workspace, family, scope)}:pause"


def rate_seq(workspace: str, family: str, scope: str = "") -> str:
    return f"{rate(workspace, family, scope)}:seq"


def rate_pace(workspace: str, family: str, scope: str = "") -> str:
    return f"{rate(workspace, family, scope)}:pace"


def metric_step(step: str) -> str:
    return f"{PREFIX}stats:step:{step}"


def callback(delivery_id: str) -> str:
    return f"{CALLBACK_PREFIX}{delivery_id}"


def callback_event(event_id: str) -> str:
    return f"{CALLBACK_EVENT_PREFIX}{event_id}"


def reconcile(workspace: str) -> str:
    return f"{PREFIX}reconcile:{workspace}"


def reconcile_lease(workspace: str) -> str:
    return f"{PREFIX}reconcile:{workspace}:lease"
