"""Churn: continuous enqueue + drain for minutes, with a REPEATABLE READ snapshot held in the middle.

    DATABASE_URL=... .venv/bin/python bench/churn.py [--minutes 10] [--snapshot-at 3.5] [--snapshot-for 3]

First the drain rate of `runworker --processes 2` (its defaults) is measured on 20,000 no-ops; then the
same workers get tasks enqueued at 80% of that rate (bulk every 100 ms) for --minutes, while another
session holds a REPEATABLE READ snapshot from --snapshot-at for --snapshot-for minutes (vacuum can then
remove nothing). Autovacuum runs at its defaults. Every 10 s the script records tasks finished, the live
table's size (heap and indexes) and the claim's cost (the worker's statement, LIMIT 10, rolled back),
prints a table per minute and the verdicts, and appends them to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg

from bench.common import ROOT, scratch_database, wait_waiting, worker_env

DOC = ROOT / "docs" / "benchmarks.md"


def drain_rate(url: str, n: int = 20_000) -> float:
    from bench import tasks

    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM queueapp_task_history").fetchone()[0]  # type: ignore[index]
        started = time.monotonic()
        tasks.noop.enqueue_many([((), {})] * n)
        while conn.execute("SELECT count(*) FROM queueapp_task_history").fetchone()[0] < before + n:  # type: ignore[index]
            time.sleep(0.05)
        return n / (time.monotonic() - started)


def claim_ms(conn: psycopg.Connection, params: dict[str, object]) -> float:
    """One claim of 10 as a worker's round makes it (its plan setting first), rolled back."""
    from queueapp.sql import QUERIES
    from queueapp.store import timeouts

    with conn.transaction(force_rollback=True):
        conn.execute(timeouts.UNLIMITED_CLAIM_PLAN)
        started = time.perf_counter()
        conn.execute(QUERIES["claim_tasks"], params).fetchall()
        return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--snapshot-at", type=float, default=3.5)
    parser.add_argument("--snapshot-for", type=float, default=3)
    parser.add_argument("--share", type=float, default=0.8, help="enqueue rate as a share of the drain rate")
    opts = parser.parse_args()
    with scratch_database("taskqueue_bench_churn") as url:
        from bench import tasks

        workers = subprocess.Popen(
            [sys.executable, "manage.py", "runworker", "--processes", "2"], cwd=ROOT, env=worker_env(url)
        )
        try:
            wait_waiting(2)
            capacity = drain_rate(url)
            rate = capacity * opts.share
            print(
                f"drain rate at defaults: {capacity:,.0f} tasks/s; enqueueing {rate:,.0f} tasks/s", flush=True
            )
            samples = run(url, tasks, rate, opts)
        finally:
            workers.send_signal(signal.SIGTERM)
            workers.wait(60)
    report(samples, capacity, rate, opts)


def run(url: str, tasks: object, rate: float, opts: argparse.Namespace) -> list[dict[str, float]]:
    stop = threading.Event()
    length = opts.minutes * 60
    begin = time.monotonic()

    def enqueuer() -> None:
        from django.db import connection

        per_tick = max(1, round(rate / 10))
        tick = 0
        try:
            while not stop.is_set():
                tasks.noop.enqueue_many([((), {})] * per_tick)  # type: ignore[attr-defined]
                tick += 1
                delay = begin + tick * 0.1 - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
        finally:
            connection.close()

    def snapshot() -> None:
        if stop.wait(opts.snapshot_at * 60):
            return
        with psycopg.connect(url) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT count(*) FROM queueapp_task_live")
            stop.wait(opts.snapshot_for * 60)
            conn.execute("COMMIT")

    threads = [threading.Thread(target=enqueuer), threading.Thread(target=snapshot)]
    for thread in threads:
        thread.start()
    samples = []
    worker_id = uuid.uuid4()
    params = {"worker_id": worker_id, "queues": ["default"], "limit": 10, "flow_epoch": 0}
    with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:
        conn.execute(
            "INSERT INTO queueapp_worker (id, hostname, pid, queues, concurrency, state, started_at,"
            " last_heartbeat_at) VALUES (%s, 'churn', 0, '{default}', 10, 'ALIVE', now(), now())",
            [worker_id],
        )
        last_done = conn.execute("SELECT count(*) FROM queueapp_task_history").fetchone()[0]  # type: ignore[index]
        last = time.monotonic()
        claims: list[float] = []
        while time.monotonic() - begin < length:
            # The probe's worker beats like a live one: a reaped (LOST) worker's claim reads nothing.
            conn.execute("UPDATE queueapp_worker SET last_heartbeat_at = now() WHERE id = %s", [worker_id])
            claims.append(claim_ms(conn, params))
            time.sleep(0.25)
            if time.monotonic() - last < 10:
                continue
            done = conn.execute("SELECT count(*) FROM queueapp_task_history").fetchone()[0]  # type: ignore[index]
            size = conn.execute(
                "SELECT pg_total_relation_size('queueapp_task_live'),"
                " (SELECT count(*) FROM queueapp_task_live)"
            ).fetchone()
            elapsed = time.monotonic()
            samples.append(
                {
                    "t": elapsed - begin,
                    "rate": (done - last_done) / (elapsed - last),
                    "size_mb": size[0] / 2**20,  # type: ignore[index]
                    "backlog": size[1],  # type: ignore[index]
                    "claim_p50": statistics.median(claims),
                    "claim_p99": sorted(claims)[max(0, round(0.99 * (len(claims) - 1)))],
                }
            )
            s = samples[-1]
            print(
                f"t={s['t']:5.0f}s finished/s={s['rate']:7.0f} live={s['size_mb']:6.1f} MiB"
                f" backlog={s['backlog']:6.0f}"
                f" claim p50={s['claim_p50']:.2f} ms p99={s['claim_p99']:.2f} ms",
                flush=True,
            )
            last_done, last, claims = done, elapsed, []
        stop.set()
        for thread in threads:
            thread.join(opts.snapshot_for * 60 + 30)
    return samples


def minute(samples: list[dict[str, float]], start: float, end: float, key: str, how: str = "mean") -> float:
    values = [s[key] for s in samples if start * 60 < s["t"] <= end * 60]
    if not values:
        return float("nan")
    return max(values) if how == "max" else statistics.fmean(values)


def report(samples: list[dict[str, float]], capacity: float, rate: float, opts: argparse.Namespace) -> None:
    snap_start, snap_end = opts.snapshot_at, opts.snapshot_at + opts.snapshot_for
    before = minute(samples, 1, snap_start, "rate")
    during = minute(samples, snap_start + 0.5, snap_end, "rate")
    after = [s for s in samples if snap_end * 60 < s["t"] <= snap_end * 60 + 30]
    recovered = bool(after) and after[-1]["rate"] >= 0.9 * before
    end = opts.minutes
    size2, size_last = (
        minute(samples, 1, 2, "size_mb", "max"),
        minute(samples, end - 1, end, "size_mb", "max"),
    )
    p99_2, p99_last = (
        minute(samples, 1, 2, "claim_p99", "max"),
        minute(samples, end - 1, end, "claim_p99", "max"),
    )
    lines = [
        f"\n### Churn run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC (`bench/churn.py`)\n",
        f"Drain rate at defaults (`runworker --processes 2`): {capacity:,.0f} tasks/s; enqueued {rate:,.0f}"
        f" tasks/s ({opts.share:.0%}) for {opts.minutes:g} minutes, bulk every 100 ms; a REPEATABLE READ"
        f" snapshot held from minute {snap_start:g} to {snap_end:g}; autovacuum at its defaults.\n",
        "| minute | finished/s | live table (heap + indexes) | backlog | claim p50 | claim p99 |",
        "|---|---|---|---|---|---|",
    ]
    for m in range(int(end)):
        cells = [
            f"{minute(samples, m, m + 1, 'rate'):,.0f}",
            f"{minute(samples, m, m + 1, 'size_mb', 'max'):.1f} MiB",
            f"{minute(samples, m, m + 1, 'backlog', 'max'):,.0f}",
            f"{minute(samples, m, m + 1, 'claim_p50'):.2f} ms",
            f"{minute(samples, m, m + 1, 'claim_p99', 'max'):.2f} ms",
        ]
        lines.append(f"| {m + 1} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"- finished/s during the snapshot: {during:,.0f} against {before:,.0f} before"
        f" ({during / before:.0%}; target at least 50%)",
        f"- back to 90% of before within 30 s of the snapshot closing: {'yes' if recovered else 'NO'}",
        f"- live table, last minute against the second: {size_last:.1f} / {size2:.1f} MiB"
        f" ({size_last / size2:.2f}x; target at most 1.5x)",
        f"- claim p99, last minute against the second: {p99_last:.2f} / {p99_2:.2f} ms"
        f" ({p99_last / p99_2:.2f}x; target at most 1.5x)",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if os.environ.get("CHURN_NO_DOC") != "1":
        with DOC.open("a") as doc:
            doc.write(text)


if __name__ == "__main__":
    main()
