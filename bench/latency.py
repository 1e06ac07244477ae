"""Pickup latency: enqueue to start, 300 tasks at 50/s, idle workers woken by NOTIFY alone.

Both ends are read from the database clock (enqueued_at, started_at); polling is set to 30 s so
that only the notification can wake a worker. The ceiling in the same run is a bare NOTIFY from
one connection to a LISTENing one: the floor any PostgreSQL queue pays.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time

import psycopg

from bench.common import ROOT, Figure, clear_tasks, percentile, wait_succeeded, wait_waiting, worker_env
from bench.drain import RUNWORKER


def notify_round_trips(count: int, rate: float) -> list[float]:
    """Milliseconds from pg_notify's commit to its arrival at a listener."""
    url = os.environ["DATABASE_URL"]
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


def pickup(count_: int, rate: float, processes: int) -> list[float]:
    worker = subprocess.Popen(
        [*RUNWORKER, "--processes", str(processes), "--concurrency", "4", "--poll-interval", "30"],
        cwd=ROOT,
        env=worker_env(os.environ["DATABASE_URL"]),
    )
    try:
        wait_waiting(processes)
        time.sleep(1)  # past the workers' first poll: from now on only NOTIFY wakes them
        latencies = timed_pickups(count_, rate)
    finally:
        worker.terminate()
        worker.wait(60)
    clear_tasks()
    return latencies


def timed_pickups(count_: int, rate: float) -> list[float]:
    """Enqueue count_ no-ops at rate a second; milliseconds from each enqueue to its start."""
    from django.db import connection

    from bench import tasks

    for _ in range(count_):
        tasks.noop.enqueue()
        time.sleep(1 / rate)
    wait_succeeded(count_, timeout=60)
    with connection.cursor() as cursor:
        cursor.execute("SELECT extract(epoch FROM started_at - enqueued_at) * 1000 FROM queueapp_task")
        return [float(row[0]) for row in cursor.fetchall()]


def figures(count_: int = 300, rate: float = 50.0, processes: int = 2) -> list[Figure]:
    floor = notify_round_trips(count_, rate)
    latencies = pickup(count_, rate, processes)
    rows = []
    for pct, limit in ((50, 2.0), (95, None), (99, 5.0)):
        ours, bare = percentile(latencies, pct), percentile(floor, pct)
        rows.append(
            Figure(
                f"pickup latency p{pct}, {count_} tasks at {rate:.0f}/s, {processes} idle workers",
                f"{ours:.2f} ms",
                f"{bare:.2f} ms (bare NOTIFY to LISTEN)",
                f"{ours / bare:.1f}x",
                f"<= {limit:.0f} ms" if limit is not None else "-",
                limit is None or ours <= limit,
            )
        )
    return rows
