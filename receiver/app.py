"""The receiver's Flask app factory: webhooks in, the jobs API, health and the OpenAPI document."""

from __future__ import annotations

import json

import redis
from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WerkzeugResponse

from receiver import jobs_api, webhooks
from receiver.auth import bearer_is_one_of
from receiver.openapi import openapi_document
from tasks.callbacks.guard import Guard
from tasks.connection import redis_client
from tasks.dispatch import Dispatcher
from tasks.inbox import Inbox
from tasks.jobs.store import JobStore
from tasks.metrics import Metrics, RedisCollector
from tasks.names import DEFAULT
from tasks.settings import ConfigError, Settings
from tasks.store import open_store

MAX_BODY_BYTES = 1024 * 1024


def create_app(settings: Settings) -> Flask:
    """Build the receiver; without a webhook secret it refuses unless told to run insecure."""
    workspaces = settings.workspaces
    verifiers = {
        name: webhooks.Verifier(w.webhook_secrets)
        for name, w in workspaces.items()
        if w.webhook_secrets
    }
    if settings.RECALL_WEBHOOK_INSECURE and DEFAULT not in verifiers:
        verifiers[DEFAULT] = webhooks.Verifier([])  # local use: unsigned webhooks accepted
    if DEFAULT not in verifiers:  # the default workspace too, when RECALL_WORKSPACES adds others
        raise ConfigError(
            "RECALL_WEBHOOK_SECRET is not set (set it, or RECALL_WEBHOOK_INSECURE=1 for local use)"
        )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    client = redis_client(settings)
    app.extensions["verifiers"] = verifiers
    app.extensions["inbox"] = Inbox.from_settings(client, settings)
    jobs = JobStore.from_settings(client, settings)
    guard = Guard(settings.client_callback_networks) if settings.callback_secrets else None
    app.extensions["jobs_api"] = jobs_api.JobsApi(
        Dispatcher.from_settings(jobs, settings),
        settings.api_tokens,
        open_store(settings.TRANSCRIPTS_STORE, settings.S3_ENDPOINT_URL),
        guard,
    )
    app.extensions["metrics"] = Metrics(client)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(jobs_api.bp)
    document = openapi_document(list(workspaces), callbacks=guard is not None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(client))

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

    metrics_token = settings.METRICS_TOKEN.get_secret_value() if settings.METRICS_TOKEN else None

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text: the whole fleet's, read from Redis (behind METRICS_TOKEN if set)."""
        if metrics_token is not None and not bearer_is_one_of([metrics_token]):
            response = jsonify(error="a valid bearer token is required")
            response.status_code = 401
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        try:
            text = generate_latest(registry)
        except redis.RedisError:
            return Response("Redis unavailable\n", status=503, mimetype="text/plain")
        return Response(text, mimetype=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(document)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> WerkzeugResponse:
        """Every HTTP error as `{"error": ...}` JSON, its headers (Allow on a 405) kept."""
        response = exc.get_response()
        message = f"body over {MAX_BODY_BYTES} bytes" if exc.code == 413 else exc.description
        if exc.code == 413 and request.path.startswith("/webhooks/recall"):
            workspace = request.path.removeprefix("/webhooks/recall").strip("/") or DEFAULT
            app.extensions["metrics"].for_workspace(workspace[:40]).webhook("too_large")
        response.set_data(json.dumps({"error": message}))
        response.content_type = "application/json"
        return response

    return app
