"""The emulator's memory: recordings, transcripts, idempotency records, faults and call counts."""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import threading
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

TRANSCRIPT_LIMIT = 10
IDEMPOTENCY_WINDOW_S = 3600

_WORDS = [
    "so",
    "the",
    "plan",
    "for",
    "this",
    "quarter",
    "is",
    "to",
    "ship",
    "the",
    "pipeline",
    "and",
    "measure",
    "how",
    "long",
    "each",
    "step",
    "takes",
    "then",
    "we",
    "review",
    "the",
    "numbers",
    "together",
    "and",
    "decide",
    "what",
    "to",
    "fix",
    "first",
    "before",
    "the",
    "release",
]
_PEOPLE = ("Ada", "Grace", "Linus", "Barbara", "Ken", "Margaret")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def transcript_data(transcript_id: str) -> bytes:
    """Deterministic transcript data in Recall's download format (participants and words)."""
    rng = random.Random(transcript_id)
    segments: list[dict[str, Any]] = []
    clock = rng.uniform(0.5, 5.0)
    start = datetime(2025, 7, 17, tzinfo=UTC)
    for index in range(rng.randint(2, 6)):
        person = rng.randrange(len(_PEOPLE))
        participant = (
            None
            if index == 0 and rng.random() < 0.2
            else {
                "id": 100 + person,
                "name": _PEOPLE[person],
                "is_host": person == 0,
                "platform": "desktop",
                "extra_data": None,
                "email": None,
            }
        )
        words = []
        for _ in range(rng.randint(3, 25)):
            length = rng.uniform(0.15, 0.6)
            words.append(
                {
                    "text": rng.choice(_WORDS),
                    "start_timestamp": {
                        "relative": round(clock, 3),
                        "absolute": (start + timedelta(seconds=clock))
                        .isoformat()
                        .replace("+00:00", "Z"),
                    },
                    "end_timestamp": {
                        "relative": round(clock + length, 3),
                        "absolute": None,
                    },
                }
            )
            clock += length + rng.uniform(0.0, 0.3)
        segments.append({"participant": participant, "words": words})
    return json.dumps(segments).encode()


@dataclass
class Transcript:
    id: str
    recording_id: str
    provider: dict[str, Any]
    metadata: dict[str, Any]
    diarization: dict[str, Any]
    created_at: float
    status: str = "processing"
    sub_code: str | None = None
    updated_at: float = field(default_factory=time.time)
    data: bytes | None = None


RECORDING_STATUSES = ("processing", "paused", "done", "failed")
FINISHED = ("done", "failed")
RECORDING_TTL_S = 7 * 86400  # how long after it finished a recording's media is kept


class AlreadyFinished(Exception):
    """A recording that had ended already cannot end again."""


@dataclass
class Recording:
    """A recording as List Recordings shows it (`bot` None: a Desktop SDK upload)."""

    id: str
    created_at: float
    status: str = "done"
    sub_code: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    updated_at: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)
    bot: dict[str, Any] | None = None
    desktop_sdk_upload_id: str | None = None


@dataclass
class Fault:
    """One injected fault: what it targets, what it does, how often."""

    target: str
    action: str
    times: int = 1
    probability: float = 1.0
    status: int = 503
    retry_after: float | None = None
    seconds: float = 0.0
    sub_code: str = "provider_connection_failed"
    recording_id: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])


class EmulatorState:
    """Everything the emulator knows, behind one lock."""

    def __init__(self, seed: int | None = None) -> None:
        self.lock = threading.RLock()
        self.rng = random.Random(seed)
        self.started = time.monotonic()
        self.in_flight = 0  # API calls being answered now (a hung one until its client left)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.recordings: dict[str, Recording] = {}
            self.recording_order: list[str] = []  # ids, sorted: List Recordings' order
            self.transcripts: dict[str, Transcript] = {}
            self.transcripts_by_recording: dict[str, list[str]] = {}
            self.idempotency: dict[tuple[str, str], tuple[float, int | None, Any]] = {}
            self.faults: list[Fault] = []
            self.calls: Counter[str] = Counter()
            self.throttled: Counter[str] = Counter()
            # When the newest 429s of each family were answered (s since the emulator started):
            # a test tells an opening burst from refusals that go on.
            self.throttled_at: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=1000))
            self.created_by_recording: Counter[str] = Counter()
            self.peak_in_flight = self.in_flight  # calls still being answered stay counted

    # -- recordings and transcripts -------------------------------------------------------------

    def add_recording(self, recording_id: str | None = None, **fields: Any) -> Recording:
        """A new recording (finished now unless `fields` say otherwise); an existing id is left
        as it is."""
        with self.lock:
            return self.add_recordings([recording_id], [fields])[0]

    def add_recordings(
        self, ids: list[str | None], fields: list[dict[str, Any]]
    ) -> list[Recording]:
        """Many recordings at once (one sort of the order however many)."""
        now = time.time()
        made: list[Recording] = []
        with self.lock:
            fresh = []
            for recording_id, given in zip(ids, fields, strict=True):
                rid = recording_id or str(uuid.uuid4())
                if rid not in self.recordings:
                    self.recordings[rid] = _recording(rid, now, **given)
                    fresh.append(rid)
                made.append(self.recordings[rid])
            if len(fresh) == 1:
                bisect.insort(self.recording_order, fresh[0])
            elif fresh:
                self.recording_order.extend(fresh)
                self.recording_order.sort()
        return made

    def finish_recording(
        self, recording_id: str, status: str, sub_code: str | None, at: float | None
    ) -> Recording:
        """A processing (or paused) recording ends done or failed; KeyError if unknown,
        AlreadyFinished if it had ended."""
        with self.lock:
            recording = self.recordings[recording_id]
            if recording.status in FINISHED:
                raise AlreadyFinished(f"recording {recording_id} is already {recording.status}")
            when = time.time() if at is None else at
            recording.status, recording.sub_code = status, sub_code
            recording.completed_at = recording.updated_at = when
            return recording

    def newest_transcript(self, recording_id: str) -> Transcript | None:
        """What `media_shortcuts.transcript` shows: the newest transcript not deleted."""
        with self.lock:
            live = [
                self.transcripts[t]
                for t in self.transcripts_by_recording.get(recording_id, ())
                if self.transcripts[t].status != "deleted"
            ]
            return live[-1] if live else None

    def live_count(self, recording_id: str) -> int:
        with self.lock:
            return sum(
                1
                for t in self.transcripts.values()
                if t.recording_id == recording_id and t.status != "deleted"
            )

    def create_transcript(self, recording_id: str, body: dict[str, Any]) -> Transcript:
        with self.lock:
            transcript = Transcript(
                id=str(uuid.uuid4()),
                recording_id=recording_id,
                provider=body["provider"],
                metadata=dict(body.get("metadata") or {}),
                diarization=body.get("diarization")
                or {"use_separate_streams_when_available": False},
                created_at=time.time(),
            )
            self.transcripts[transcript.id] = transcript
            self.transcripts_by_recording.setdefault(recording_id, []).append(transcript.id)
            self.created_by_recording[recording_id] += 1
            return transcript

    def finish(self, transcript_id: str, failed_sub_code: str | None) -> Transcript | None:
        """Complete processing: done with data, or failed with a sub_code."""
        with self.lock:
            transcript = self.transcripts.get(transcript_id)
            if transcript is None or transcript.status != "processing":
                return None
            transcript.updated_at = time.time()
            if failed_sub_code:
                transcript.status, transcript.sub_code = "failed", failed_sub_code
            else:
                transcript.status, transcript.data = "done", transcript_data(transcript.id)
            return transcript

    # -- idempotency (scoped to key, method and path; the body is not compared) -----------------

    def idempotency_begin(self, scope: tuple[str, str]) -> tuple[str, Any]:
        """('new', None), ('running', None) or ('replay', (status, body))."""
        with self.lock:
            now = time.time()
            record = self.idempotency.get(scope)
            if record is not None and now - record[0] < IDEMPOTENCY_WINDOW_S:
                if record[1] is None:
                    return "running", None
                return "replay", (record[1], record[2])
            self.idempotency[scope] = (now, None, None)
            return "new", None

    def idempotency_end(self, scope: tuple[str, str], status: int, body: Any) -> None:
        with self.lock:
            started = self.idempotency.get(scope, (time.time(), None, None))[0]
            self.idempotency[scope] = (started, status, body)

    def call_began(self) -> None:
        with self.lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def call_ended(self) -> None:
        with self.lock:
            self.in_flight -= 1

    # -- faults ---------------------------------------------------------------------------------

    def add_fault(self, spec: dict[str, Any]) -> Fault:
        fault = Fault(**spec)
        with self.lock:
            self.faults.append(fault)
        return fault

    def throttle(self, target: str) -> None:
        """Count a call answered 429, and when."""
        with self.lock:
            self.throttled[target] += 1
            self.throttled_at[target].append(time.monotonic() - self.started)

    def take_fault(self, target: str, recording_id: str | None = None) -> Fault | None:
        """The first matching fault that fires now (consuming one of its `times`; -1 is forever)."""
        with self.lock:
            for fault in self.faults:
                if fault.target != target or fault.times == 0:
                    continue
                if fault.recording_id and fault.recording_id != recording_id:
                    continue
                if fault.probability < 1.0 and self.rng.random() >= fault.probability:
                    continue
                if fault.times > 0:
                    fault.times -= 1
                return fault
            return None

    # -- views ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self.lock:
            statuses = Counter(t.status for t in self.transcripts.values())
            recordings = Counter(r.status for r in self.recordings.values())
            return {
                "calls": dict(self.calls),
                "throttled": dict(self.throttled),
                "throttled_at": {
                    f: [round(t, 3) for t in at] for f, at in self.throttled_at.items()
                },
                "created_by_recording": dict(self.created_by_recording),
                "transcripts_by_status": dict(statuses),
                "recordings": len(self.recordings),
                "recordings_by_status": dict(recordings),
                "in_flight": self.in_flight,
                "peak_in_flight": self.peak_in_flight,
            }


def _recording(
    rid: str,
    now: float,
    created_at: float | None = None,
    status: str = "done",
    sub_code: str | None = None,
    completed_at: float | None = None,
    duration_s: float = 1800.0,
    metadata: dict[str, str] | None = None,
    bot_id: str | None = "",
    bot_metadata: dict[str, str] | None = None,
    desktop_sdk_upload_id: str | None = None,
) -> Recording:
    """A recording created at `created_at` (default now), started then; a finished one completed
    `duration_s` later (never after now) unless `completed_at` says when. `bot_id` "" is a new
    bot, None none (a Desktop SDK upload)."""
    # to the millisecond, as shown: a filter given a shown time finds the recording
    created = math.floor((now if created_at is None else created_at) * 1000) / 1000
    if status in FINISHED:
        completed = min(now, created + duration_s) if completed_at is None else completed_at
        completed = max(completed, created)
    else:
        completed = None
    bot = None
    if bot_id is not None:
        bot = {"id": bot_id or str(uuid.uuid4()), "metadata": dict(bot_metadata or {})}
    return Recording(
        id=rid,
        created_at=created,
        status=status,
        sub_code=sub_code,
        started_at=created,
        completed_at=completed,
        updated_at=completed if completed is not None else created,
        metadata=dict(metadata or {}),
        bot=bot,
        desktop_sdk_upload_id=desktop_sdk_upload_id,
    )


def download_signature(secret: bytes, transcript_id: str, expires: int) -> str:
    return hashlib.sha256(secret + f"{transcript_id}:{expires}".encode()).hexdigest()[:32]
