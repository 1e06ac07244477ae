"""Pickup latency: enqueue to start, with idle workers woken by NOTIFY (polling set to 30 s).

    DATABASE_URL=... .venv/bin/python bench/latency.py [TASKS] [RATE] [PROCESSES]   (make bench runs it)

Both ends are read from the database clock (enqueued_at, started_at). Baseline in the same run:
a bare NOTIFY from one connection to a LISTENing one, the floor any PostgreSQL queue pays.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, percentile, scratch_database, worker_env


def notify_baseline(url: str, count: int, rate: float) -> list[float]:
    """Milliseconds from pg_notify's commit to its arrival at a listener."""
    import psycopg

    arrivals: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url, autocommit=True) as sender:
        listener.execute("LISTEN bench")
        ready = threading.Event()

        def listen() -> None:
            ready.set()
            for notify in listener.notifies(timeout=count / rate + 10, stop_after=count):
                arrivals[notify.payload] = time.perf_counter()

        thread = threading.Thread(target=listen)
        thread.start()
        ready.wait()
        sent: dict[str, float] = {}
        for i in range(count):
            sent[str(i)] = time.perf_counter()
            sender.execute("SELECT pg_notify('bench', %s)", [str(i)])
            time.sleep(1 / rate)
        thread.join()
    return [(arrivals[key] - sent[key]) * 1000 for key in sent if key in arrivals]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 50.0
    processes = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    with scratch_database("taskqueue_bench_latency") as url:
        from django.db import connection

        from bench import tasks

        baseline = notify_baseline(url, count, rate)
        worker = subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "runworker",
                "--processes",
                str(processes),
                "--concurrency",
                "4",
                "--poll-interval",
                "30",
            ],
            cwd=ROOT,
            env=worker_env(url),
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'taskqueue-listener'"
                        " AND datname = current_database() AND query = 'LISTEN taskqueue'"
                    )
                    if cursor.fetchone()[0] >= processes:
                        break
                time.sleep(0.1)
            time.sleep(1)  # past the workers' first poll: from now on only NOTIFY wakes them
            for _ in range(count):
                tasks.noop.enqueue()
                time.sleep(1 / rate)
            while True:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT count(*) FROM queueapp_task WHERE status <> 'SUCCESSFUL'")
                    if cursor.fetchone()[0] == 0:
                        break
                time.sleep(0.1)
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT extract(epoch FROM started_at - enqueued_at) * 1000 FROM queueapp_task"
                )
                latencies = [float(row[0]) for row in cursor.fetchall()]
        finally:
            worker.terminate()
            worker.wait(30)
        print(f"{count} tasks at {rate:.0f}/s, {processes} idle worker processes (--poll-interval 30):")
        for label, values in (("enqueue -> start", latencies), ("baseline NOTIFY -> LISTEN", baseline)):
            print(
                f"  {label:26s} p50 {percentile(values, 50):6.2f} ms  p95 {percentile(values, 95):6.2f} ms"
                f"  p99 {percentile(values, 99):6.2f} ms"
            )
        ratio = percentile(latencies, 50) / percentile(baseline, 50)
        print(f"  ratio p50 (queue / NOTIFY baseline): {ratio:.1f}x")


if __name__ == "__main__":
    main()
