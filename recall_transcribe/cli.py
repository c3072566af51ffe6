"""`recall-transcribe SUBCOMMAND`: receiver, worker, flower, emulator, up, enqueue, jobs, events,
callbacks, health, reconcile."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from recall_transcribe import jobs as jobs_commands
from recall_transcribe.health import SERVICES
from tasks.jobs.states import State
from tasks.limits import OverLimit
from tasks.logs import configure_logging
from tasks.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recall-transcribe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    receiver = sub.add_parser("receiver", help="serve the webhook receiver and jobs API (gunicorn)")
    receiver.add_argument("--host", default="127.0.0.1")
    receiver.add_argument("--port", type=int, default=8000)
    receiver.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    receiver.add_argument(
        "--threads", type=int, default=2, help="threads per process (more adds GIL contention)"
    )

    sub.add_parser(
        "worker", help="start a Celery worker on the pipeline queues (extra args go to celery)"
    )

    flower = sub.add_parser("flower", help="start Flower, the monitoring dashboard")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="127.0.0.1")

    emulator = sub.add_parser("emulator", help="serve the Recall emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8500)
    emulator.add_argument(
        "--webhook-url", action="append", default=[], help="where to send webhooks (repeatable)"
    )
    emulator.add_argument("--api-key", default=None, help="accept only this API key (default: any)")
    emulator.add_argument(
        "--processing-s", type=float, default=1.0, help="transcript processing time"
    )
    emulator.add_argument("--latency-s", type=float, default=0.0, help="added to every API call")
    emulator.add_argument("--retry-scale", type=float, default=1.0, help="x Svix retry delays")
    emulator.add_argument("--page-size", type=int, default=10, help="List Transcripts page size")
    emulator.add_argument("--legacy-headers", action="store_true", help="sign with svix-* headers")
    emulator.add_argument("--seed", type=int, default=None, help="seed for probabilistic faults")
    emulator.add_argument(
        "--quotas",
        default=None,
        help="rate limits, FAMILY=COUNT/SECONDS,... or none (default: Recall's)",
    )
    emulator.add_argument(
        "--quota-scale", type=float, default=1.0, help="x every quota window (1/6: 1 min -> 10 s)"
    )

    up = sub.add_parser(
        "up", help="run everything on this machine (emulator when no RECALL_API_KEY)"
    )
    up.add_argument("--receiver-port", type=int, default=8000)
    up.add_argument("--emulator-port", type=int, default=8500)
    up.add_argument("--flower-port", type=int, default=5555)

    enqueue = sub.add_parser("enqueue", help="enqueue a transcription job for a recording")
    enqueue.add_argument("recording_id")
    enqueue.add_argument("--provider", type=json.loads, default=None, help="provider JSON")
    enqueue.add_argument("--idempotency-key", default=None)
    enqueue.add_argument("--workspace", default="default", help="the Recall workspace")
    enqueue.add_argument("--wait", action="store_true", help="wait for the job to finish")
    enqueue.add_argument("--timeout", type=float, default=None, help="give up waiting after (s)")

    jobs = sub.add_parser(
        "jobs",
        help="list, show or retry jobs, print a job's transcript, or repair the listing indexes",
    )
    jobs.add_argument(
        "action",
        nargs="?",
        choices=("list", "show", "retry", "transcript", "reindex"),
        default="list",
    )
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("--state", default=None, choices=[state.value for state in State])
    jobs.add_argument("--recording-id", default=None)
    jobs.add_argument("--workspace", default=None, help="list: only this workspace's jobs")
    jobs.add_argument("--limit", type=int, default=20, help="list: rows per page")
    jobs.add_argument("--offset", type=int, default=0, help="list: rows to skip")
    jobs.add_argument("--cursor", default=None, help="list: go on from a page's next cursor")
    jobs.add_argument("--created-before", default=None, help="list: created before (ISO 8601)")
    jobs.add_argument("--failed", action="store_true", help="retry: every failed job that matches")
    jobs.add_argument(
        "--code", default=None, help="list, retry --failed: only jobs failed with this code"
    )
    jobs.add_argument(
        "--created-after", default=None, help="list, retry --failed: created at or after (ISO)"
    )
    jobs.add_argument(
        "--format", default="json", choices=("json", "text", "srt", "vtt"), help="transcript"
    )
    jobs.add_argument("--json", action="store_true", help="show: the job and history as JSON")

    callbacks = sub.add_parser("callbacks", help="callbacks whose every attempt failed")
    callbacks.add_argument("action", choices=("retry",))
    callbacks.add_argument(
        "--failed", action="store_true", required=True, help="every delivery that gave up"
    )

    health = sub.add_parser("health", help="exit 0 when the service is ready (for healthchecks)")
    health.add_argument("service", nargs="?", choices=SERVICES, help="default: what PID 1 runs")
    health.add_argument("--port", type=int, default=None, help="the port it listens on")

    events = sub.add_parser("events", help="webhook events no worker could apply")
    events.add_argument("action", choices=("dead",))
    events.add_argument(
        "--replay", action="store_true", help="put them back in the inbox and apply them again"
    )

    reconcile = sub.add_parser(
        "reconcile",
        help="submit the jobs of finished recordings whose recording.done never reached us",
    )
    reconcile.add_argument(
        "--since", default=None, help="3d, 12h, 90m or ISO 8601 (default: RECONCILE_LOOKBACK_S)"
    )
    reconcile.add_argument("--until", default=None, help="ISO 8601 or a duration (default: now)")
    reconcile.add_argument("--workspace", default=None, help="only this workspace (default: all)")
    reconcile.add_argument("--dry-run", action="store_true", help="only print what it would submit")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging(_log_format())
    parser = _parser()
    if argv and argv[0] == "worker":
        args, extra = parser.parse_args(argv[:1]), argv[1:]
    else:
        args, extra = parser.parse_args(argv), []
    try:
        return int(COMMANDS[args.command](args, extra) or 0)
    except (ConfigError, OverLimit) as exc:
        print(f"recall-transcribe: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _log_format() -> str:
    """LOG_FORMAT, or text while the settings are wrong (the command then says what is)."""
    try:
        return load_settings().LOG_FORMAT
    except ConfigError:
        return "text"


def _receiver(args: argparse.Namespace, _: list[str]) -> int:
    from receiver.app import create_app
    from receiver.serve import serve

    serve(create_app(load_settings()), args.host, args.port, args.workers, args.threads)
    return 0


def _worker(_: argparse.Namespace, extra: list[str]) -> int:
    from worker.main import run

    return run(load_settings(), extra)


def _flower(args: argparse.Namespace, _: list[str]) -> int:
    from worker.celery_app import create_celery

    settings = load_settings()
    argv = ["flower", f"--port={args.port}", f"--address={args.address}"]
    loopback = ("127.0.0.1", "localhost", "::1")
    if settings.FLOWER_BASIC_AUTH:
        argv.append(f"--basic-auth={settings.FLOWER_BASIC_AUTH.get_secret_value()}")
    elif args.address not in loopback:
        raise ConfigError("FLOWER_BASIC_AUTH is required when Flower listens beyond loopback")
    elif any(host not in loopback for host in _redis_hosts(settings)):
        raise ConfigError("FLOWER_BASIC_AUTH is required when the broker is not on loopback")
    create_celery(settings).start(argv)
    return 0


def _redis_hosts(settings: Settings) -> list[str]:
    """The hosts the broker is found through: REDIS_URL's, or every Sentinel's."""
    from urllib.parse import urlparse

    if settings.sentinels:
        return [host for host, _ in settings.sentinels]
    return [urlparse(settings.REDIS_URL).hostname or ""]


def _emulator(args: argparse.Namespace, _: list[str]) -> int:
    from emulator.config import EmulatorConfig
    from emulator.quotas import RECALL_QUOTAS, parse_quotas
    from emulator.server import serve

    settings = load_settings()
    secrets = settings.webhook_secrets
    try:
        parse_quotas(args.quotas or RECALL_QUOTAS)
    except ValueError as exc:
        raise ConfigError(f"--quotas: {exc}") from None
    config = EmulatorConfig(
        public_url=f"http://{args.host}:{args.port}",
        api_key=args.api_key,
        webhook_urls=args.webhook_url,
        webhook_secret=secrets[0] if secrets else None,
        legacy_headers=args.legacy_headers,
        processing_s=args.processing_s,
        latency_s=args.latency_s,
        retry_scale=args.retry_scale,
        page_size=args.page_size,
        seed=args.seed,
        quotas=args.quotas or RECALL_QUOTAS,
        quota_scale=args.quota_scale,
    )
    serve(config, args.host, args.port)
    return 0


def _up(args: argparse.Namespace, _: list[str]) -> int:
    from recall_transcribe.up import Ports, run_all

    return run_all(load_settings(), Ports(args.receiver_port, args.emulator_port, args.flower_port))


def _callbacks(_: argparse.Namespace, __: list[str]) -> int:
    """Start again the deliveries whose every attempt failed."""
    from tasks.callbacks.deliveries import Deliveries
    from tasks.connection import redis_client

    settings = load_settings()
    deliveries = Deliveries.from_settings(redis_client(settings), settings)
    print(f"{deliveries.retry_failed()} failed callback(s) will be sent again")
    return 0


def _events(args: argparse.Namespace, _: list[str]) -> int:
    """List the dead letters (event id, type, recording), or replay them all."""
    from tasks.connection import redis_client
    from tasks.inbox import Inbox

    settings = load_settings()
    inbox = Inbox.from_settings(redis_client(settings), settings)
    if args.replay:
        print(f"{inbox.replay_dead()} dead event(s) sent again")
        return 0
    dead = inbox.dead()
    print(f"{'EVENT':<32}  {'WORKSPACE':<12} {'TYPE':<18} RECORDING")
    for event_id, (workspace, event_json) in sorted(dead.items()):
        kind, recording = _summary(event_json)
        print(f"{event_id:<32}  {workspace:<12} {kind:<18} {recording}".rstrip())
    if not dead:
        print("(no dead events)")
    return 0


def _summary(event_json: str) -> tuple[str, str]:
    """An event's type and recording id, as far as its body says (it may be unreadable)."""
    try:
        event = json.loads(event_json)
        return str(event.get("event", "?")), str(event["data"]["recording"]["id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return "?", "?"


def _reconcile(args: argparse.Namespace, _: list[str]) -> int:
    from recall_transcribe import reconcile
    from tasks.connection import redis_client
    from tasks.dispatch import Dispatcher
    from tasks.jobs.store import JobStore
    from tasks.metrics import Metrics
    from tasks.recalls import recall_clients
    from tasks.reconcile import reconciliations

    settings = load_settings()
    if args.workspace is not None and args.workspace not in settings.workspaces:
        raise ConfigError(f"--workspace: no workspace {args.workspace!r} is set up")
    client = redis_client(settings)
    dispatch = Dispatcher.from_settings(JobStore.from_settings(client, settings), settings)
    metrics = Metrics(client)
    recalls = recall_clients(settings, client, metrics)[1]  # paced as the fleet is, in its windows
    if args.workspace is not None:
        recalls = {args.workspace: recalls[args.workspace]}
    chosen = reconciliations(settings, dispatch, recalls, metrics, dry_run=args.dry_run)
    return reconcile.run(settings, chosen, args.since, args.until, args.dry_run)


def _health(args: argparse.Namespace, _: list[str]) -> int:
    from recall_transcribe.health import check, running

    try:
        service, port = (args.service, args.port) if args.service else running()
    except (LookupError, OSError) as exc:  # not in a container of ours: name the service
        print(f"recall-transcribe: health: {exc}", file=sys.stderr)
        return 2
    problem = check(service, args.port or port)
    if problem:
        print(f"recall-transcribe: not ready: {problem}", file=sys.stderr)
    return 1 if problem else 0


COMMANDS = {
    "receiver": _receiver,
    "worker": _worker,
    "flower": _flower,
    "emulator": _emulator,
    "up": _up,
    "enqueue": jobs_commands.enqueue,
    "jobs": jobs_commands.jobs,
    "events": _events,
    "callbacks": _callbacks,
    "health": _health,
    "reconcile": _reconcile,
}
