"""A WSGI app under gunicorn's threaded workers: the receiver's server and the benchmarks'."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


def serve(app: Any, host: str, port: int, workers: int, threads: int) -> None:
    """Run `app` until stopped: `workers` processes of `threads` threads, no access log."""

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 24
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            return app

    Server().run()
