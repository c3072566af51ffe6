"""`recall-transcribe health [SERVICE]`: is the service in this container ready? For the image's
HEALTHCHECK and compose. The receiver answers on `/readyz` (Redis reachable), Flower on
`/healthcheck`, the emulator on its controls; a worker is ready when it reaches its broker (through
Sentinel where set). Without SERVICE, the one this container runs: PID 1's own subcommand."""

from __future__ import annotations

import urllib.request
from pathlib import Path

SERVICES = ("receiver", "worker", "flower", "emulator")
_PATHS = {"receiver": "/readyz", "flower": "/healthcheck", "emulator": "/_emulator/stats"}
_PORTS = {"receiver": 8000, "flower": 5555, "emulator": 8500}
TIMEOUT_S = 3.0


def running(cmdline: Path = Path("/proc/1/cmdline")) -> tuple[str, int | None]:
    """The service PID 1 runs (`recall-transcribe SERVICE ... --port P`) and its port, if given."""
    argv = cmdline.read_bytes().decode(errors="replace").split("\0")
    service = next((arg for arg in argv if arg in SERVICES), None)
    if service is None:
        raise LookupError(f"PID 1 runs none of {', '.join(SERVICES)}: name the service")
    given = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--port"]
    given += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--port=")]
    return service, int(given[-1]) if given else None


def check(service: str, port: int | None) -> str:
    """Nothing when the service is ready, else why not (one line)."""
    if service == "worker":
        from tasks.connection import redis_client
        from tasks.settings import load_settings

        try:
            redis_client(load_settings()).ping()
        except Exception as exc:  # any failure is "not ready", in one line
            return f"worker: the broker does not answer ({type(exc).__name__})"
        return ""
    url = f"http://127.0.0.1:{port or _PORTS[service]}{_PATHS[service]}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
            status = answer.status
    except OSError as exc:
        return f"{service}: {url} {getattr(exc, 'code', None) or type(exc).__name__}"
    return "" if status == 200 else f"{service}: {url} answered {status}"
