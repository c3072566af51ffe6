"""Several Recall workspaces at once, each under its own quotas: four quota-bound bursts together
finish about when one alone does, because each workspace is paced by its own windows."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.pipeline import start_system
from emulator.quotas import RECALL_QUOTAS, parse_quotas, scaled
from harness import EmulatorHandle, System, deliver_recordings_done, free_port

FAMILIES = ("create", "retrieve", "list", "delete")


def burst(workdir: Path, recordings: int, scale: float, workspaces: int) -> dict[str, Any]:
    """`recordings` per workspace finished at once, in 1 workspace, then in `workspaces` at
    once (each its own emulator, key, secret and quotas x `scale`), two worker processes."""
    alone = _run(workdir / "one", recordings, scale, 1)
    together = _run(workdir / "many", recordings, scale, workspaces)
    count, window = parse_quotas(RECALL_QUOTAS)["retrieve"]
    bound = ((recordings - 1) // count) * window * scale
    return {
        "recordings per workspace": recordings,
        "quota windows": f"x {scale:g} (retrieve {count} per {window * scale:g} s, each)",
        "bound one workspace's quota sets (s)": round(bound, 1),
        "1 workspace (s)": alone["seconds"],
        f"{workspaces} workspaces at once (s)": together["seconds"],
        f"{workspaces} at once / 1 alone": round(together["seconds"] / alone["seconds"], 2),
        f"{workspaces} at once / bound": round(together["seconds"] / bound, 2) if bound else None,
        "per workspace": together["per workspace"],
    }


def _run(workdir: Path, recordings: int, scale: float, count: int) -> dict[str, Any]:
    names = ["default", *(f"ws{index}" for index in range(1, count))]
    ports = {name: free_port() for name in names[1:]}
    secrets = {name: _secret(name) for name in names[1:]}
    others = {
        name: {
            "api_key": f"key-{name}",
            "base_url": f"http://127.0.0.1:{ports[name]}",
            "webhook_secret": secrets[name],
            "rate_limits": scaled(RECALL_QUOTAS, scale),
        }
        for name in names[1:]
    }
    system = start_system(
        workdir,
        workers=2,
        quotas=RECALL_QUOTAS,
        quota_scale=scale,
        RECALL_POLL_INITIAL_S="600",
        RECALL_WORKSPACES=json.dumps(others),
    )
    try:
        emulators = {"default": system.emulator}
        for name in names[1:]:
            emulators[name] = _emulator(system, name, ports[name], secrets[name], scale)
        ids = {name: [f"{name}-{index}" for index in range(recordings)] for name in names}
        for name in names:
            emulators[name].recordings(ids[name])
        finished: dict[str, float] = {}
        started = time.monotonic()

        def deliver(name: str) -> None:
            path = "/webhooks/recall" if name == "default" else f"/webhooks/recall/{name}"
            secret = secrets.get(name) or system.env["RECALL_WEBHOOK_SECRET"]
            deliver_recordings_done(
                system.receiver_url, ids[name], threads=8, path=path, secret=secret
            )

        with ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(deliver, names))
        deadline = started + 300 + recordings
        while len(finished) < len(names):
            if time.monotonic() > deadline:
                raise TimeoutError(f"workspaces unfinished: {set(names) - set(finished)}")
            for name in names:
                if name not in finished and system.done_in(name) >= recordings:
                    finished[name] = time.monotonic() - started
            time.sleep(0.2)
        stats = {name: emulators[name].stats() for name in names}
    finally:
        system.stop()
    return {
        "seconds": round(max(finished.values()), 1),
        "per workspace": {
            name: {
                "seconds": round(finished[name], 1),
                "calls per job": {
                    f: round(stats[name]["calls"].get(f, 0) / recordings, 2)
                    for f in FAMILIES
                    if stats[name]["calls"].get(f)
                },
                "refused (429)": sum(stats[name]["throttled"].values()),
            }
            for name in names
        },
    }


def _secret(name: str) -> str:
    return "whsec_" + base64.b64encode(f"bench-workspace-{name}".encode()).decode()


def _emulator(system: System, name: str, port: int, secret: str, scale: float) -> EmulatorHandle:
    """Another workspace's Recall: its own key, signing secret and quotas."""
    args = ["--processing-s", "0", "--quotas", RECALL_QUOTAS, "--quota-scale", str(scale)]
    return system.start_emulator(
        *args, workspace=name, api_key=f"key-{name}", secret=secret, port=port
    )
