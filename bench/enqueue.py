"""Enqueue through django.tasks next to its raw ceiling from a minimal psycopg loop.

One per transaction: `task.enqueue()` in autocommit, against the same INSERT + NOTIFY + COMMIT
from psycopg (prepared, autocommit: one round trip, as little client work as there can be).
Bulk: `task.enqueue_many()` of 20,000 tasks, against a COPY of the same rows (prepared beforehand)
followed by the NOTIFY and the COMMIT. Both sides alternate round by round, and the ratio is the
median over pairs of neighbouring rounds: on this shared machine a round can take half as long
again for reasons of its own, and a pair shares its moment. Rates are the sides' medians.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import time

import psycopg

from bench.common import Figure, clear_tasks, rate_figure

COPY = (
    "COPY queueapp_task_live (task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at,"
    " attempts, max_attempts, timeout, worker_ids, errors, cancel_requested) FROM STDIN"
)


def paired_ratio(ours: list[float], raw: list[float]) -> float:
    """Median of raw/ours over rounds run side by side (times, so the faster side has the smaller)."""
    return statistics.median(r / o for o, r in zip(ours, raw, strict=True))


def one_per_transaction(rounds: int = 20, per_round: int = 100) -> Figure:
    from bench import tasks
    from queueapp.sql import QUERIES

    params = {
        "task_path": tasks.noop.module_path,
        "queue_name": "default",
        "priority": 0,
        "args": "[1]",
        "kwargs": "{}",
        "run_after": None,
        "max_attempts": 3,
        "timeout": None,
        "concurrency_key": None,
        "notify": True,  # notifies nobody: no worker waits
    }
    ours, raw = [], []
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, prepare_threshold=0) as conn:
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(per_round):
                conn.execute(QUERIES["enqueue_task"], params).fetchone()
            raw.append(time.perf_counter() - started)
            started = time.perf_counter()
            for _ in range(per_round):
                tasks.noop.enqueue(1)
            ours.append(time.perf_counter() - started)
    clear_tasks()
    return rate_figure(
        "enqueue, one per transaction (`task.enqueue()`)",
        per_round / statistics.median(ours),
        per_round / statistics.median(raw),
        "psycopg INSERT + NOTIFY + COMMIT, prepared",
        at_least=0.80,
        ratio=paired_ratio(ours, raw),
    )


def bulk(n: int = 20_000, rounds: int = 5) -> Figure:
    from bench import tasks

    ours, raw = [], []
    calls = [((i,), {}) for i in range(n)]
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        for _ in range(rounds):
            now = dt.datetime.now(dt.UTC)
            rows = [
                (
                    tasks.noop.module_path,
                    "default",
                    0,
                    "READY",
                    f"[{i}]",
                    "{}",
                    now,
                    now,
                    0,
                    3,
                    None,
                    "{}",
                    "[]",
                    False,
                )
                for i in range(n)
            ]
            started = time.perf_counter()
            with conn.cursor().copy(COPY) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.execute("SELECT pg_notify('taskqueue', 'default')")
            conn.commit()
            raw.append(time.perf_counter() - started)
            clear_tasks()
            started = time.perf_counter()
            results = tasks.noop.enqueue_many(calls)
            ours.append(time.perf_counter() - started)
            assert len(results) == n
            clear_tasks()
    return rate_figure(
        f"bulk enqueue of {n:,} (`task.enqueue_many()`)",
        n / statistics.median(ours),
        n / statistics.median(raw),
        "COPY of the same rows + NOTIFY + COMMIT",
        at_least=0.50,
        ratio=paired_ratio(ours, raw),
    )
