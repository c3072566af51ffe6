"""The emulator's app factory and server: Recall's API, its downloads, and test controls."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.serving import WSGIRequestHandler, make_server

from emulator import controls, downloads, recall_api
from emulator.config import EmulatorConfig
from emulator.core import Emulator

log = logging.getLogger(__name__)


def create_emulator(config: EmulatorConfig) -> Flask:
    """The emulator app; `app.extensions["emulator"]` is its `Emulator` for in-process use."""
    app = Flask("recall-emulator")
    app.extensions["emulator"] = Emulator(config)
    for blueprint in (recall_api.bp, downloads.bp, controls.bp):
        app.register_blueprint(blueprint)
    return app


class KeepAliveHandler(WSGIRequestHandler):
    """HTTP/1.1 with persistent connections, as Recall's API serves (werkzeug's default is 1.0)."""

    protocol_version = "HTTP/1.1"


def serve(config: EmulatorConfig, host: str, port: int) -> None:
    """Serve the emulator with a threaded HTTP server until interrupted."""
    server = make_server(
        host, port, create_emulator(config), threaded=True, request_handler=KeepAliveHandler
    )
    log.info("Recall emulator on http://%s:%d", host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
