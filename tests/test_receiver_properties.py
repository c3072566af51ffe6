"""Property tests: whatever reaches the webhook endpoint, no 500 and no unsigned enqueue."""

from __future__ import annotations

import json
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import WEBHOOK_PATH, signed
from receiver.app import create_app
from tasks.settings import Settings
from tests.helpers import queued_events

# Examples per property: the profile's (conftest.py: 150, or 25 under `make test-fast`).
PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
header_names = st.sampled_from(
    [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-id",
        "svix-timestamp",
        "svix-signature",
        "Content-Type",
        "X-Other",
    ]
)
# Header values as HTTP can carry them: latin-1 text without line breaks.
header_values = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=120
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
event_names = st.sampled_from(
    ["recording.done", "transcript.done", "transcript.failed", "bot.done", "", "x" * 200]
)


ref = st.fixed_dictionaries(
    {"id": st.text(max_size=20)},
    optional={"metadata": st.dictionaries(st.text(max_size=8), json_values, max_size=3)},
)
refs = ref | json_values
event_data = st.fixed_dictionaries(
    {},
    optional={
        "data": st.one_of(
            st.fixed_dictionaries(
                {"code": st.sampled_from(["done", "failed"]), "sub_code": st.none() | st.text()}
            ),
            json_values,
        ),
        "recording": refs,
        "transcript": refs,
        "bot": refs,
        "extra": json_values,
    },
)
# Payloads near the documented shapes (real event names; fields present, missing or wrong), or not.
event_like = st.one_of(
    st.fixed_dictionaries(
        {
            "event": st.sampled_from(["recording.done", "transcript.done", "transcript.failed"]),
            "data": st.fixed_dictionaries({"recording": ref, "transcript": ref}),
        },
        optional={"extra": json_values},
    ),
    st.fixed_dictionaries({"event": event_names, "data": event_data}),
    st.fixed_dictionaries({"event": json_values, "data": json_values}),
    json_values,
)


def _fresh(rclient: redis.Redis) -> None:
    rclient.flushdb()


@PROPERTY
@given(body=st.binary(max_size=2048), headers=st.dictionaries(header_names, header_values))
def test_arbitrary_unsigned_requests_get_401_and_enqueue_nothing(
    settings: Settings, rclient: redis.Redis, body: bytes, headers: dict[str, str]
) -> None:
    _fresh(rclient)
    response = create_app(settings).test_client().post(WEBHOOK_PATH, data=body, headers=headers)
    assert response.status_code == 401
    assert queued_events(rclient) == []


@PROPERTY
@given(payload=event_like)
def test_signed_arbitrary_payloads_never_fail_the_server(
    settings: Settings, rclient: redis.Redis, payload: Any
) -> None:
    _fresh(rclient)
    body, headers = signed(json.dumps(payload).encode())
    response = create_app(settings).test_client().post(WEBHOOK_PATH, data=body, headers=headers)
    assert response.status_code in (200, 400), response.get_data(as_text=True)
    queued = queued_events(rclient)
    if response.status_code == 400 or response.json == {"status": "ignored"}:
        assert queued == []
    else:
        assert queued == [payload]


@PROPERTY
@given(payload=event_like, flip=st.integers(min_value=0))
def test_any_byte_changed_after_signing_is_refused(
    settings: Settings, rclient: redis.Redis, payload: Any, flip: int
) -> None:
    _fresh(rclient)
    body, headers = signed(json.dumps(payload).encode())
    index = flip % len(body)
    tampered = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]
    response = create_app(settings).test_client().post(WEBHOOK_PATH, data=tampered, headers=headers)
    assert response.status_code == 401
    assert queued_events(rclient) == []
