"""BENCHMARKS.md: the machine, the versions, and every figure next to its reference."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import textwrap
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def machine() -> list[str]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    redis_version = _output(["redis-server", "--version"]).split(" v=")[-1].split()[0]
    wrk = _output(["wrk", "--version"]).split("[")[0].strip() or "not installed"
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in (
            "celery",
            "kombu",
            "redis",
            "flask",
            "gunicorn",
            "pydantic",
            "standardwebhooks",
        )
    )
    return [
        f"- Machine: {os.cpu_count()} cores ({cpu}), {memory} GiB, {platform.platform()}",
        f"- Python {platform.python_version()}; Redis {redis_version}; {wrk}",
        f"- {packages}",
        f"- Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, `python -m bench`, all on loopback",
    ]


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return ""


def table(rows: dict[str, dict[str, Any]], first: str) -> list[str]:
    columns = list(
        dict.fromkeys(k for row in rows.values() for k in row if not isinstance(row[k], dict))
    )
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return lines


def render(results: dict[str, Any]) -> str:
    out = ["## Results", "", *machine(), ""]
    if "ingest" in results:
        ing = results["ingest"]
        out += ["### 1. Webhook ingestion", ""]
        out += [
            f"Same gunicorn settings for all ({ing['gunicorn']['workers']} processes x "
            f"{ing['gunicorn']['threads']} threads, gthread); wrk, 1 thread, 32 connections; "
            f"{ing['rounds']} interleaved rounds of {ing['seconds']} s per server: the best round, "
            "and the median.",
            "",
        ]
        out += table(ing["saturation"], "server")
        out += [
            "",
            f"Receiver / necessary-work reference: **{ing['ratio_vs_necessary']}x** (by round: "
            f"{ing['ratio_vs_necessary_by_round']}); "
            f"receiver / bare Flask: {ing['ratio_vs_bare']}x.",
            "",
        ]
        out += [
            "Paced at about 1,000 requests/s (24 connections, 20 ms pauses), with the references "
            "at the same rate:",
            "",
        ]
        out += table(ing["paced_1000"], "paced")
        if ing.get("profile"):
            out += ["", "Receiver profile under load (py-spy --gil, share of on-CPU samples):", ""]
            out += [f"- `{name}` {share}%" for name, share in ing["profile"]]
        out += [""]
    if "throughput" in results:
        tp = results["throughput"]
        out += ["### 2. Pipeline throughput", ""]
        ours, ref = tp["ours"], tp["raw chain"]
        rows = {
            "raw chain of 4 no-op tasks": {
                "jobs/s": ref["jobs/s"],
                "jobs": ref["rounds"][0]["jobs"],
                "rounds (jobs/s)": [r["jobs/s"] for r in ref["rounds"]],
            },
            "ours (emulator at zero latency)": {
                "jobs/s": ours["jobs/s"],
                "jobs": ours["jobs"],
                "rounds (jobs/s)": ours["rounds"],
            },
        }
        for label, row in tp["200 ms latency, 1 process"].items():
            rows[f"ours, 200 ms per Recall call, {label}"] = {
                "jobs/s": row["jobs/s"],
                "jobs": row["jobs"],
            }
        out += table(rows, "run")
        out += [
            "",
            f"Ours / raw chain: **{tp['ratio']}x** (one worker process, 16 threads; two "
            "alternating rounds, medians). The 200 ms rows bound at threads / (3 calls x 0.2 s).",
            "",
        ]
        if ours.get("profile"):
            out += ["Worker profile (py-spy --gil, share of on-CPU samples):", ""]
            out += [f"- `{name}` {share}%" for name, share in ours["profile"]]
            out += [""]
        out += ["### 3. Cost per job", ""]
        out += [
            f"- Recall API calls per job (happy path): {ours['recall calls/job']}",
            f"- Redis commands per job: {ours['redis commands/job']} "
            f"(top: {ours['top redis commands/job']})",
            f"- CPU seconds over the run: {ours['cpu seconds']} ({ours['cores busy']} cores busy)",
            "",
        ]
    if "awaiting" in results:
        aw = results["awaiting"]
        out += ["Jobs awaiting a transcript that takes a day (no polls due):", ""]
        out += [f"- {k}: {v}" for k, v in aw.items()]
        out += [""]
    if "scaling" in results:
        out += ["### 4. Scaling over worker processes", ""]
        out += table(results["scaling"], "workers (16 threads each)")
        out += [""]
        out += ["CPU seconds per process over each run:", ""]
        for label, row in results["scaling"].items():
            out += [f"- {label}: {row['cpu seconds']} ({row['cores busy']} cores busy)"]
        out += [""]
    if "latency" in results:
        out += ["### 5. Latency: transcript.done answered -> files persisted (no backlog)", ""]
        out += table({"transcript.done -> persisted": results["latency"]}, "")
        out += [""]
    if "limiter" in results:
        out += ["### 6. The fleet-wide limiter, chosen by measurement", ""]
        out += [
            "8 threads share one family (60 calls per 2 s, Recall's List minute scaled); each call",
            "reaches a Recall-like sliding window 0-50 ms late; a refused call waits its",
            "Retry-After and goes again.",
            "",
        ]
        out += table(results["limiter"], "limiter")
        out += [""]
    if "quotas" in results:
        out += ["### 7. Under Recall's quotas", ""]
        out += [f"- {k}: {v}" for k, v in results["quotas"]["burst"].items()]
        if "shared key" in results["quotas"]:
            out += ["", "Recall enforcing less than declared (another application on the key):", ""]
            out += [f"- {k}: {v}" for k, v in results["quotas"]["shared key"].items()]
        out += ["", "A worker SIGKILLed mid-download, a fresh one started at once:", ""]
        out += [f"- {k}: {v}" for k, v in results["quotas"]["crash"].items()]
        out += [""]
    if "faulty_burst" in results:
        out += _listed(
            "### 8. A burst with faults, quotas known to the fleet",
            "Two workers; a workspace whose Retrieve quota binds (40/min, windows x 0.1); a fifth "
            "of the transcript webhooks dropped (those jobs poll), a tenth of the create answers "
            "lost. What Recall refused (429):",
            results["faulty_burst"],
        )
    if "backlog" in results:
        out += ["### 9. A backlog longer than a lease", ""]
        out += [
            "Jobs submitted at once to one worker with 2 threads, every Recall call 250 ms: the",
            "queue waits many leases (15 s). Each step must be sent once:",
            "",
        ]
        out += table({"backlog": results["backlog"]}, "")
        out += [""]
    if "callbacks" in results:
        cb = results["callbacks"]
        out += ["### 10. Callbacks", ""]
        out += ["One job at a time, its callback to a receiver on loopback:", ""]
        out += table({"latency": cb["latency"]}, "")
        out += ["", "Deliveries due at once, one worker process, one receiver:", ""]
        out += table({"throughput": cb["throughput"]}, "")
        out += ["", "A receiver down while the jobs finish, then back:", ""]
        out += [f"- {k}: {v}" for k, v in cb["receiver down"].items()]
        out += [""]
    if "workspaces" in results:
        ws = results["workspaces"]
        out += ["### 11. Several Recall workspaces at once", ""]
        out += [
            "Each workspace its own emulator, key, secret and quotas; a quota-bound burst in one",
            "workspace alone, then in each of several at once, on the same two workers:",
            "",
        ]
        out += [f"- {k}: {v}" for k, v in ws.items() if k != "per workspace"]
        out += [
            "",
            "| workspace | seconds | calls per job | refused (429) |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in ws["per workspace"].items():
            calls = ", ".join(f"{f} {n}" for f, n in row["calls per job"].items())
            out += [f"| {name} | {row['seconds']} | {calls} | {row['refused (429)']} |"]
        out += [""]
    if "shares" in results:
        out += _listed(
            "### 11b. A workspace whose Recall hangs, beside a healthy burst",
            "One workspace's burst alone (one workspace configured, then two), and again while "
            "every call to the other workspace's Recall hangs until the client's timeout:",
            results["shares"],
        )
    if "failover" in results:
        out += ["### 12. Redis failover mid-burst", ""]
        out += [
            "`tests/test_failover.py`, webhooks re-sent until accepted as Recall does; every",
            "recording transcribed once, checked by the test. A crash: a primary with AOF, one",
            "replica, three Sentinels; the primary SIGKILLed a third of the way into the burst:",
            "",
        ]
        out += [f"- {k}: {v}" for k, v in results["failover"]["crash"].items()]
        out += [
            "",
            "A partition: the primary, and a receiver and a worker that reach it directly, cut off",
            "(every byte held, no reset) from two replicas, the Sentinels and the rest of the",
            "fleet; the cut-off side is asked first for every webhook:",
            "",
        ]
        out += [f"- {k}: {v}" for k, v in results["failover"]["partition"].items()]
        out += [""]
    if "reconcile" in results:
        out += _listed(
            "### 13. A reconciliation backfill at Recall's quotas",
            "The fleet's first periodic run (two workers) walks three days of finished recordings "
            "(each already transcribed at Recall, so it submits nothing) through List Recordings "
            "at Recall's quotas, windows scaled; bursts of recordings go through the pipeline "
            "during the walk, and on the same fleet with reconciliation off:",
            results["reconcile"],
        )
    if "listings" in results:
        out += listings(results["listings"])
    if "footprint" in results:
        out += _listed(
            "### 15. Redis bytes per finished job",
            "The growth of used_memory while the job store's own transitions finish the jobs:",
            results["footprint"],
        )
    return "\n".join(out)


def _listed(title: str, intro: str, figures: dict[str, Any]) -> list[str]:
    """A section of its title, a paragraph, and its figures one a line."""
    lines = [f"- {k}: {v}" for k, v in figures.items()]
    return [title, "", *textwrap.wrap(intro, 92), "", *lines, ""]


def listings(sizes: dict[str, Any]) -> list[str]:
    """One row per filter combination, p50 / p99 per size, and the largest to smallest median."""
    out = ["### 14. Listings at volume", ""]
    out += [
        "A 50-job page of `GET /api/v1/jobs` over HTTP (the first page, then by `next_cursor`),",
        "for every combination of its filters; the jobs written straight into Redis:",
        "",
    ]
    out += [
        f"- {name}: filled in {row['fill (s)']} s, used_memory {row['used_memory (MB)']} MB"
        for name, row in sizes.items()
    ]
    names = list(sizes)
    header = " | ".join(f"{name} p50 / p99 ms" for name in names)
    out += [
        "",
        "A cell: p50 / p99 ms (jobs on the page). The ratio compares medians of pages holding as",
        f"many jobs as at {names[0]} (a page of a rare combination fills as the jobs grow; its",
        'cost per job returned is the rendering, not the walk: "same page" figures).',
        "",
        f"| filters | {header} | p50 {names[-1]} / {names[0]}, same page |",
    ]
    out += ["|---" * (len(names) + 2) + "|"]
    if len(names) == 1:  # one size: nothing to compare
        out[-2], out[-1] = f"| filters | {header} |", "|---|---|"
    for combination in sizes[names[0]]["pages"]:
        rows = [sizes[name]["pages"][combination] for name in names]
        cells = " | ".join(f"{r['p50 ms']} / {r['p99 ms']} ({r['jobs on a page']})" for r in rows)
        last = rows[-1].get("same page p50 ms", rows[-1]["p50 ms"])
        ratio = f" {round(last / rows[0]['p50 ms'], 2)} |" if len(names) > 1 else ""
        out += [f"| {combination} | {cells} |{ratio}"]
    return [*out, ""]


def write_section(path: Path, text: str) -> None:
    """Replace the generated section of `path`, keeping what people wrote around it."""
    block = f"{BEGIN}\n{text}\n{END}"
    if not path.exists():
        path.write_text(f"# Benchmarks\n\n{block}\n")
        return
    current = path.read_text()
    if BEGIN in current:
        current = re.sub(
            re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, current, flags=re.S
        )
    else:
        current = f"{current.rstrip()}\n\n{block}\n"
    path.write_text(current)
