"""A Redis primary with AOF, a replica and three Sentinels, all on loopback, started (and stopped)
by the test or benchmark that needs them."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.helpers import free_port, redis_answers, wait_for

MASTER = "mymaster"


@dataclass
class Cluster:
    """The processes, and where each listens."""

    directory: Path
    primary_port: int
    replica_port: int
    sentinel_ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def sentinels(self) -> str:
        """REDIS_SENTINELS for the system."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start_server(self, port: int, *extra: str) -> None:
        """A data node (redis-server with AOF) on `port`, its files in its own directory."""
        data = self.directory / f"node-{port}"
        data.mkdir(parents=True, exist_ok=True)
        argv = [_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        argv += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        argv += ["--repl-diskless-sync-delay", "0", *extra]
        self.processes[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for(redis_answers(f"redis://127.0.0.1:{port}/0"), 10, what=f"redis on {port}")

    def start(self) -> None:
        self.start_server(self.primary_port)
        self.start_server(self.replica_port, "--replicaof", "127.0.0.1", str(self.primary_port))
        for port in self.sentinel_ports:
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            self.processes[port] = subprocess.Popen(
                [_server(), str(config), "--sentinel"], stdout=subprocess.DEVNULL
            )
        wait_for(self.ready, 30, what="the sentinels to see a primary and its replica")

    def ready(self) -> bool:
        try:
            for port in self.sentinel_ports:
                sentinel = redis.Redis(port=port, socket_timeout=1)
                replicas = sentinel.sentinel_slaves(MASTER)  # type: ignore[no-untyped-call]
                if not any("s_down" not in r["flags"] for r in replicas):
                    return False
            return True
        except redis.RedisError:
            return False

    def primary(self) -> int:
        """The port the sentinels now name as the primary."""
        sentinel = redis.Redis(port=self.sentinel_ports[0], socket_timeout=1)
        _, port = sentinel.sentinel_get_master_addr_by_name(MASTER)  # type: ignore[no-untyped-call]
        return int(port)

    def kill(self, port: int) -> None:
        """SIGKILL a node, as a crash would."""
        process = self.processes[port]
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def cluster(directory: Path) -> Cluster:
    found = Cluster(directory, free_port(), free_port(), [free_port() for _ in range(3)])
    found.start()
    return found


def _server() -> str:
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed")
    return server


def wait_until_promoted(found: Cluster, old: int, timeout: float = 30) -> float:
    """Seconds until the sentinels name a new primary."""
    started = time.monotonic()
    wait_for(lambda: _safe_primary(found) not in (None, old), timeout, what="a promotion")
    return time.monotonic() - started


def _safe_primary(found: Cluster) -> int | None:
    try:
        return found.primary()
    except (redis.RedisError, TypeError):
        return None
