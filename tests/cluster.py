"""A Redis primary with AOF, its replicas and three Sentinels, all on loopback, started (and
stopped) by the test or benchmark that needs them; optionally with the primary behind a `Link`
that a test can cut, as a network partition would."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from harness import free_port, redis_answers, wait_for

MASTER = "mymaster"


class Link:
    """The network between the primary and everyone else, as a TCP forwarder on loopback.
    `cut` stalls every byte both ways and leaves connections open, as a partition does (no reset,
    so each side finds out only by timing out); `heal` drops the stalled connections and forwards
    again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        with self._lock:
            stalled, self._sockets = self._sockets, []
        for sock in stalled:
            _close(sock)
        self._open.set()

    def close(self) -> None:
        _close(self._listener)
        self.heal()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._open.wait()  # during a cut a new connection hangs, unanswered
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets += [client, upstream]
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._open.wait()  # held while cut; `heal` closes both ends meanwhile
                sink.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@dataclass
class Cluster:
    """The processes, and where each listens; `link` is the primary's network, when cuttable."""

    directory: Path
    primary_port: int
    replica_ports: list[int]
    sentinel_ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    link: Link | None = None

    @property
    def primary_address(self) -> int:
        """The primary's port as the replica and the sentinels reach it."""
        return self.link.port if self.link else self.primary_port

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
        for port in self.replica_ports:
            self.start_server(port, "--replicaof", "127.0.0.1", str(self.primary_address))
        for port in self.sentinel_ports:
            config = self.directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_address} 2\n"
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
                seen = [r for r in replicas if "s_down" not in r["flags"]]
                if len(seen) < len(self.replica_ports):
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
        if self.link:
            self.link.close()
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def cluster(directory: Path, replicas: int = 1, partitionable: bool = False) -> Cluster:
    """Started; with `partitionable`, the replicas and the sentinels reach the primary through a
    `Link` (clients may still reach it directly, on `primary_port`)."""
    primary = free_port()
    found = Cluster(
        directory, primary, [free_port() for _ in range(replicas)], [free_port() for _ in range(3)]
    )
    found.link = Link(primary) if partitionable else None
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
