"""The ingestion references, served exactly as the receiver is (same gunicorn settings).

- `bare`: a Flask endpoint that answers 200: the ceiling of the web stack itself.
- `necessary`: only the work a durable, deduplicating receiver cannot skip: verify the signature,
  then one Lua call that marks the webhook id seen and pushes the raw body onto a Redis list.
- `celery`: verify, dedupe, then Celery's `send_task`: what the obvious implementation costs.

Run one: `python -m bench.refs KIND PORT REDIS_URL SECRET WORKERS THREADS`.
"""

from __future__ import annotations

import sys

import redis
from celery import Celery
from flask import Flask, Response, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from receiver.serve import serve

SEEN_THEN_PUSH = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 604800) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
KINDS = ("bare", "necessary", "celery")


def create_reference(kind: str, redis_url: str, secret: str) -> Flask:
    """The reference app of that kind, on `POST /webhooks/recall`."""
    app = Flask(f"reference-{kind}")
    hook = Webhook(secret)
    client = redis.Redis.from_url(redis_url)
    seen_then_push = client.register_script(SEEN_THEN_PUSH)
    celery = Celery(broker=redis_url, set_as_current=False)

    def verified() -> tuple[bytes, str] | None:
        body = request.get_data(cache=False)
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            hook.verify(body, headers, json_parse=False)
        except WebhookVerificationError:
            return None
        return body, headers["webhook-id"]

    if kind == "bare":

        @app.post("/webhooks/recall")
        def bare() -> Response:
            return Response(b"{}", 200, mimetype="application/json")

    elif kind == "necessary":

        @app.post("/webhooks/recall")
        def necessary() -> Response:
            got = verified()
            if got is None:
                return Response(b"{}", 401, mimetype="application/json")
            body, webhook_id = got
            seen_then_push(keys=[f"ref:seen:{webhook_id}", "ref:events"], args=[body])
            return Response(b"{}", 200, mimetype="application/json")

    elif kind == "celery":

        @app.post("/webhooks/recall")
        def with_celery() -> Response:
            got = verified()
            if got is None:
                return Response(b"{}", 401, mimetype="application/json")
            body, webhook_id = got
            if client.set(f"ref:seen:{webhook_id}", "1", nx=True, ex=604800):
                celery.send_task("ref.ingest", args=[body.decode()], queue="ref.events")
            return Response(b"{}", 200, mimetype="application/json")

    else:
        raise SystemExit(f"bench.refs: kind must be one of {', '.join(KINDS)}")
    return app


if __name__ == "__main__":
    kind, port, redis_url, secret, workers, threads = sys.argv[1:7]
    app = create_reference(kind, redis_url, secret)
    serve(app, "127.0.0.1", int(port), int(workers), int(threads))
