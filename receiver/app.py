"""The receiver's Flask app factory."""

from __future__ import annotations

import redis
from flask import Flask, Response, jsonify

from receiver import jobs_api, webhooks
from tasks.app import create_app as create_pipeline
from tasks.app import redis_client
from tasks.inbox import Inbox
from worker.settings import ConfigError, Settings

MAX_BODY_BYTES = 1024 * 1024


def create_app(settings: Settings) -> Flask:
    """Build the receiver; without a webhook secret it refuses unless told to run insecure."""
    if not settings.webhook_secrets and not settings.RECALL_WEBHOOK_INSECURE:
        raise ConfigError(
            "RECALL_WEBHOOK_SECRET is not set (set it, or RECALL_WEBHOOK_INSECURE=1 for local use)"
        )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    client = redis_client(settings)
    _, pipeline = create_pipeline(settings)
    app.extensions["verifier"] = webhooks.Verifier(settings.webhook_secrets)
    app.extensions["inbox"] = Inbox(
        client, settings.JOB_STEP_LEASE_S, settings.WEBHOOK_DEDUPE_TTL_S
    )
    app.extensions["pipeline"] = pipeline
    app.extensions["api_tokens"] = settings.api_tokens
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(jobs_api.bp)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            client.ping()
        except redis.RedisError:
            return jsonify(status="redis unavailable"), 503
        return jsonify(status="ready"), 200

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(jobs_api.openapi())

    @app.errorhandler(413)
    def too_large(_: Exception) -> tuple[Response, int]:
        return jsonify(error=f"body over {MAX_BODY_BYTES} bytes"), 413

    return app
