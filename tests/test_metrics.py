"""`/metrics`: the fleet's state and counters, read from Redis, in Prometheus text format."""

from __future__ import annotations

from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from harness import System, recording_done, signed, wait_for


def scrape(system: System) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = requests.get(f"{system.receiver_url}/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_count_webhooks_calls_and_steps_across_the_fleet(start_system: Any) -> None:
    system: System = start_system(workers=2)
    system.emulator.recording("m1")
    url = f"{system.receiver_url}/webhooks/recall"
    body, headers = signed(recording_done("m1"), msg_id="msg-m1")
    for _ in range(2):  # the second is a duplicate
        assert requests.post(url, data=body, headers=headers, timeout=5).status_code == 200
    assert (
        requests.post(url, data=body, headers={**headers, "webhook-signature": "v1,x"}).ok is False
    )
    bad_body, bad_headers = signed(b"{not json")
    assert requests.post(url, data=bad_body, headers=bad_headers, timeout=5).status_code == 400
    assert requests.post(url, data=b"x" * (1024 * 1024 + 1), timeout=5).status_code == 413

    def done() -> bool:
        return scrape(system).get(("recall_transcribe_jobs", (("state", "done"),))) == 1

    wait_for(done, 30, what="the job done, as /metrics says")
    metrics = scrape(system)
    webhooks = {
        dict(labels)["outcome"]: value
        for (name, labels), value in metrics.items()
        if name == "recall_transcribe_webhooks_total"
    }
    assert webhooks["enqueued"] >= 2  # recording.done, then transcript.done
    assert (webhooks["duplicate"], webhooks["unauthorized"]) == (1, 1)
    assert (webhooks["malformed"], webhooks["too_large"]) == (1, 1)
    calls = {
        (dict(labels)["endpoint"], dict(labels)["status"]): value
        for (name, labels), value in metrics.items()
        if name == "recall_transcribe_recall_requests_total"
    }
    assert calls[("create", "201")] == 1 and calls[("retrieve", "200")] >= 1
    steps = {
        dict(labels)["step"]: value
        for (name, labels), value in metrics.items()
        if name == "recall_transcribe_step_duration_seconds_count"
    }
    assert steps["create"] == 1 and steps["fetch"] == 1
    assert metrics[("recall_transcribe_due_jobs", ())] == 0
    inbox = ("recall_transcribe_inbox_events", ())
    wait_for(lambda: scrape(system)[inbox] == 0, 10, what="every event applied")
    assert ("recall_transcribe_jobs", (("state", "failed"),)) in metrics
