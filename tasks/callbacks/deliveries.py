"""Callback deliveries in Redis (tasks/callbacks/callbacks.lua): created once per event and
destination, their event's body stored once for all of them; claimed when due, at most a few at a
time per destination and per client; and rescheduled or finished after each attempt."""

from __future__ import annotations

import json
from typing import cast

import redis

from tasks import keys, scripts
from tasks.callbacks.model import Delivery, Event, Outcome
from tasks.settings import Settings

ATTEMPT_LEASE_S = (
    30.0  # an attempt takes 15 s at most; one outliving this, its worker dead, runs again
)
FAILING_S = 3600.0  # a failed attempt keeps its destination at one attempt at a time this long
DEFER_S = 5.0  # an attempt this process could not resolve in time is made again this soon
RETRY_PAGE = 500  # failed deliveries one retry command looks at


class Deliveries:
    """The deliveries of every callback, and the outbox they are made from."""

    def __init__(
        self,
        client: redis.Redis,
        schedule: list[float],
        per_destination: int,
        keep_s: float,
        lease_s: float = ATTEMPT_LEASE_S,
        per_client: int = 8,
    ) -> None:
        self.redis = client
        self.schedule = schedule
        self._caps = (per_destination, per_client)
        self._keep_s = keep_s
        self._lease_s = lease_s
        self._script = scripts.register(client, __name__, "tasks.jobs:parts.lua", "callbacks.lua")

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> Deliveries:
        return cls(
            client,
            settings.callback_schedule,
            settings.CALLBACK_PER_DESTINATION,
            settings.JOB_RETENTION_S,
            per_client=settings.CALLBACK_PER_CLIENT,
        )

    def _run(self, command: str, extra_keys: list[str], *args: str | float) -> object:
        return self._script(keys=[keys.CALLBACKS_DUE, *extra_keys], args=[command, *args])

    def _pacing(self) -> list[str | float]:
        return [
            keys.CALLBACK_PREFIX,
            keys.CALLBACKS_BUSY_PREFIX,
            keys.CALLBACKS_PARKED_PREFIX,
            keys.CALLBACKS_FAILING_PREFIX,
            keys.CALLBACKS_PARKED,
            *self._caps,
        ]

    def take_outbox(self, limit: int = 100) -> list[tuple[str, int]]:
        """Finished jobs whose news is not sent on yet: (job id, attempt), each pushed a lease
        ahead so one sweeper takes it (and takes it again if it dies before it is done)."""
        members = cast(list[bytes], self._run("outbox", [keys.OUTBOX], limit, ATTEMPT_LEASE_S))
        taken = []
        for member in members:
            job_id, _, attempt = member.decode().rpartition(":")
            taken.append((job_id, int(attempt)))
        return taken

    def sent_on(self, job_id: str, attempt: int) -> None:
        """Done with a job's news, unless a destination added since put it back."""
        self._run("sent", [keys.OUTBOX], f"{job_id}:{attempt}")

    def send(
        self, event: Event, deliveries: list[Delivery], task: tuple[str, str] | None = None
    ) -> int:
        """Store the event and schedule each delivery's first attempt, unless they exist; with
        `task` (queue, message), the event's Celery message goes out when the event is new. The
        job's view lists the deliveries. How many deliveries are new."""
        fields = {"job_id": event.job_id, "attempt": str(event.attempt), "state": event.state}
        pairs: list[str] = []
        for delivery in deliveries:
            stored = delivery.model_dump(
                mode="json", include={"id", "job_id", "event_id", "url", "destination", "client"}
            )
            pairs += [delivery.id, json.dumps(stored)]
        queue, message = task or ("", "")
        created = self._run(
            "send",
            [
                keys.callback_event(event.id),
                keys.job(event.job_id),
                queue,
                *(keys.callback(delivery.id) for delivery in deliveries),
            ],
            event.id,
            json.dumps(fields),
            event.body,
            message,
            self.schedule[0],
            self._keep_s,
            *pairs,
        )
        return int(cast(int, created))

    def create(self, delivery: Delivery) -> bool:
        """Schedule one delivery's first attempt, its body its own event's; True if new."""
        event = Event(delivery.event_id, delivery.job_id, 0, "", delivery.body)
        return bool(self.send(event, [delivery]))

    def claim(self, limit: int) -> list[str]:
        """Due deliveries to attempt now, at most `limit`, paced per destination (at most
        CALLBACK_PER_DESTINATION in flight to one, one while its last attempt failed) and per
        client (CALLBACK_PER_CLIENT for the URLs one API token set); the rest wait aside, out of
        the way of other destinations' and clients' deliveries."""
        if limit <= 0:
            return []
        ids = self._run("claim", [], *self._pacing(), limit, self._lease_s)
        return [each.decode() for each in cast(list[bytes], ids)]

    def get(self, delivery_id: str) -> Delivery | None:
        """A delivery with its event's body, and whether its destination is failing."""
        delivery = _decode(cast(dict[bytes, bytes], self.redis.hgetall(keys.callback(delivery_id))))
        if delivery is None:
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(keys.callback_event(delivery.event_id), "body")
        pipe.exists(keys.CALLBACKS_FAILING_PREFIX + delivery.destination)
        body, failing = pipe.execute()
        if body is not None:  # else written before events were, with a body of its own
            delivery.body = body.decode()
        delivery.failing = bool(failing)
        return delivery

    def attempted(self, delivery: Delivery, outcome: Outcome, status: int | str) -> str | None:
        """Record an attempt: 'delivered', 'retry' (rescheduled by the schedule), 'deferred'
        (not counted: again in DEFER_S) or 'failed' (the schedule is spent); None if the
        delivery had finished already."""
        answer = self._run(
            "attempted",
            [],
            *self._pacing(),
            delivery.id,
            outcome.value,
            str(status),
            json.dumps(self.schedule),
            self._keep_s,
            FAILING_S,
            DEFER_S,
            keys.CALLBACKS_FAILED,
            keys.CALLBACK_EVENT_PREFIX,
        )
        return cast(bytes, answer).decode() if answer else None

    def retry_failed(self, page: int = RETRY_PAGE) -> int:
        """Every failed delivery whose event is still its job's news starts again, due now, a
        page at a time (the set may be large); how many."""
        revived = 0
        for _ in range(1 + int(self.redis.zcard(keys.CALLBACKS_FAILED)) // page):
            answer = self._run(
                "retry",
                [keys.CALLBACKS_FAILED],
                keys.CALLBACK_PREFIX,
                keys.CALLBACK_EVENT_PREFIX,
                keys.JOB_PREFIX,
                page,
            )
            done, looked = cast(list[int], answer)
            revived += done
            if looked < page:
                break
        return revived


def views(client: redis.Redis, ids_by_job: list[list[str]]) -> list[list[Delivery]]:
    """The deliveries of several jobs, read in one round trip (gone ones left out)."""
    pipe = client.pipeline(transaction=False)
    for ids in ids_by_job:
        for delivery_id in ids:
            pipe.hgetall(keys.callback(delivery_id))
    answers = iter(cast(list[dict[bytes, bytes]], pipe.execute()))
    out = []
    for ids in ids_by_job:
        found = (_decode(next(answers)) for _ in ids)
        out.append([delivery for delivery in found if delivery is not None])
    return out


def _decode(raw: dict[bytes, bytes]) -> Delivery | None:
    if not raw:
        return None
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    status = fields.get("last_status")
    if status is not None and status.isdigit():
        fields["last_status"] = int(status)  # type: ignore[assignment]
    return Delivery.model_validate(fields)
