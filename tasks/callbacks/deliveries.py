"""Callback deliveries in Redis (tasks/lua/callbacks.lua): created once per event and
destination, claimed when due (at most a few at a time per destination), and rescheduled or
finished after each attempt."""

from __future__ import annotations

import json
from importlib import resources
from typing import cast

import redis

from tasks import keys
from tasks.callbacks.model import Delivery
from tasks.settings import Settings

ATTEMPT_LEASE_S = (
    30.0  # an attempt takes 15 s at most; one outliving this, its worker dead, runs again
)
FAILING_S = 3600.0  # a failed attempt keeps its destination at one attempt at a time this long


class Deliveries:
    """The deliveries of every callback, and the outbox they are made from."""

    def __init__(
        self,
        client: redis.Redis,
        schedule: list[float],
        per_destination: int,
        keep_s: float,
        lease_s: float = ATTEMPT_LEASE_S,
    ) -> None:
        self.redis = client
        self.schedule = schedule
        self._per_destination = per_destination
        self._keep_s = keep_s
        self._lease_s = lease_s
        script = resources.files("tasks").joinpath("lua/callbacks.lua").read_text()
        self._script = client.register_script(script)

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> Deliveries:
        return cls(
            client,
            settings.callback_schedule,
            settings.CALLBACK_PER_DESTINATION,
            settings.JOB_RETENTION_S,
        )

    def _run(self, command: str, extra_keys: list[str], *args: str | float) -> object:
        return self._script(keys=[keys.CALLBACKS_DUE, *extra_keys], args=[command, *args])

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
        self.redis.zrem(keys.OUTBOX, f"{job_id}:{attempt}")

    def create(self, delivery: Delivery) -> bool:
        """Schedule a delivery's first attempt, unless it exists; True if new."""
        fields = delivery.model_dump(
            mode="json", include={"id", "job_id", "event_id", "url", "destination", "body"}
        )
        created = self._run(
            "create",
            [keys.callback(delivery.id)],
            json.dumps(fields),
            self.schedule[0],
            delivery.id,
        )
        return bool(created)

    def claim(self, limit: int) -> list[str]:
        """Due deliveries to attempt now, at most `limit`, paced per destination: at most
        CALLBACK_PER_DESTINATION in flight to one (one while its last attempt failed); the rest
        of its due deliveries wait aside, out of the way of other destinations'."""
        if limit <= 0:
            return []
        ids = self._run(
            "claim",
            [],
            limit,
            self._lease_s,
            self._per_destination,
            keys.CALLBACK_PREFIX,
            keys.CALLBACKS_BUSY_PREFIX,
            keys.CALLBACKS_PARKED_PREFIX,
            keys.CALLBACKS_FAILING_PREFIX,
            keys.CALLBACKS_PARKED,
        )
        return [each.decode() for each in cast(list[bytes], ids)]

    def get(self, delivery_id: str) -> Delivery | None:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(keys.callback(delivery_id)))
        return _decode(raw)

    def attempted(self, delivery: Delivery, delivered: bool, status: int | str) -> str | None:
        """Record an attempt: 'delivered', 'retry' (rescheduled by the schedule) or 'failed'
        (the schedule is spent); None if the delivery had finished already."""
        outcome = self._run(
            "attempted",
            [
                keys.callback(delivery.id),
                keys.CALLBACKS_BUSY_PREFIX + delivery.destination,
                keys.CALLBACKS_FAILED,
                keys.CALLBACKS_PARKED_PREFIX + delivery.destination,
                keys.CALLBACKS_FAILING_PREFIX + delivery.destination,
                keys.CALLBACKS_PARKED,
            ],
            delivery.id,
            "delivered" if delivered else "failed",
            str(status),
            json.dumps(self.schedule),
            self._keep_s,
            delivery.destination,
            self._per_destination,
            FAILING_S,
        )
        return cast(bytes, outcome).decode() if outcome else None

    def retry_failed(self) -> int:
        """Every delivery whose schedule was spent starts again, due now; how many."""
        retried = self._run("retry", [keys.CALLBACKS_FAILED], keys.CALLBACK_PREFIX)
        return int(cast(int, retried))


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
