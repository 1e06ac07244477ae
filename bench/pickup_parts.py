"""Pickup latency as peerbench sees it (from the enqueue call to the task function), in its parts.

peerbench's latency mode times `task.enqueue()` at 50 a second to the task's first line, on one idle
`runworker --processes 1`. Here each task returns time.time() as it starts (bench.tasks.clock) and
the parts are read on the one clock of this machine:

- the enqueue call: Python, the INSERT, and its commit (a WAL flush) with the notification;
- commit to claim: the notification's way to the worker, until its claim's transaction began
  (`started_at` is the claim's now());
- claim to task: the claim's statement and answer, and the worker handing the row to a thread.

Next to them, the floor of the first part: a bare prepared INSERT of the same row and its commit from
psycopg at the same rate (no notification: no worker is waiting by then), and a bare `SELECT 1`.
At 50 a second every process sleeps between tasks, and on this machine a round trip that wakes
sleeping processes costs ten times one in a busy loop.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.pickup_parts
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import psycopg

from bench.common import ROOT, percentile, scratch_database, wait_succeeded, wait_waiting, worker_env
from bench.drain import RUNWORKER


def paced(count: int, rate: float, call: Callable[[], object]) -> list[float]:
    """Milliseconds of each of count calls, one every 1/rate seconds."""
    took = []
    for _ in range(count):
        time.sleep(1 / rate)
        started = time.perf_counter()
        call()
        took.append((time.perf_counter() - started) * 1000)
    return took


def parts(count: int, rate: float) -> dict[str, list[float]]:
    from django.db import connection

    from bench import tasks

    called: dict[int, tuple[float, float]] = {}
    for _ in range(count):
        time.sleep(1 / rate)
        before = time.time()
        result = tasks.clock.enqueue()
        called[int(result.id)] = (before, time.time())
    wait_succeeded(count, timeout=60)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT id, extract(epoch FROM started_at), return_value::float8 FROM queueapp_task_history"
        )
        rows = cursor.fetchall()
    found: dict[str, list[float]] = {
        "enqueue call": [],
        "commit to claim": [],
        "claim to task": [],
        "all": [],
    }
    for task_id, claimed, ran in rows:
        before, after = called[task_id]
        found["enqueue call"].append((after - before) * 1000)
        found["commit to claim"].append((float(claimed) - after) * 1000)
        found["claim to task"].append((ran - float(claimed)) * 1000)
        found["all"].append((ran - before) * 1000)
    return found


def floors(count: int, rate: float) -> dict[str, list[float]]:
    from bench import tasks
    from queueapp.sql import QUERIES

    row = {
        "task_path": tasks.noop.module_path,
        "queue_name": "default",
        "priority": 0,
        "args": "[]",
        "kwargs": "{}",
        "run_after": None,
        "max_attempts": 3,
        "timeout": None,
        "concurrency_key": None,
        "notify": False,
    }
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, prepare_threshold=0) as conn:
        found = {
            "bare INSERT + commit": paced(count, rate, lambda: conn.execute(QUERIES["enqueue_task"], row)),
            "bare SELECT 1": paced(count, rate, lambda: conn.execute("SELECT 1")),
        }
        conn.execute("TRUNCATE queueapp_task_live")
    return found


def main(count: int = 300, rate: float = 50.0) -> None:
    with scratch_database("bench_pickup_parts"):
        worker = subprocess.Popen(
            [*RUNWORKER, "--processes", "1"], cwd=ROOT, env=worker_env(os.environ["DATABASE_URL"])
        )
        try:
            wait_waiting(1)
            time.sleep(1)
            found = parts(count, rate)
        finally:
            worker.terminate()
            worker.wait(60)
        found |= floors(count, rate)
        print(f"{count} tasks at {rate:.0f}/s, one idle `runworker --processes 1`; milliseconds")
        print("| part | p50 | p90 | p99 |\n| --- | --- | --- | --- |")
        for name, values in found.items():
            cells = " | ".join(f"{percentile(values, pct):.2f}" for pct in (50, 90, 99))
            print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
