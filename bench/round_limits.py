"""What the statement and lock timeouts cost a worker's round when each transaction sets them (SET
LOCAL, pipelined with the round: the form that holds behind a pooler in transaction mode), against
set once for the session (the form before, which PgBouncer refuses).

Two worker sessions on one table of READY tasks take turns, round by round (which goes first
alternates), each round recording the last round's 10 successes and claiming 10 more, as a worker at
full speed does; the figure is the ratio of their median round times, from the same run.

    DATABASE_URL=... .venv/bin/python bench/round_limits.py
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, clear_tasks, scratch_database

FILL = """
INSERT INTO queueapp_task_live (task_path, queue_name, priority, status, args, kwargs, run_after,
                                enqueued_at, attempts, max_attempts, worker_ids, errors, cancel_requested)
SELECT 'bench.tasks.noop', 'default', 0, 'READY', '[]', '{}', now() - (g || ' ms')::interval, now(), 0, 3,
       '{}', '[]', false
FROM generate_series(1, %s) AS g
"""
BATCH = 10


def figures(rounds: int = 2000) -> list[Figure]:
    from django.db import connection

    from queueapp import store

    limits = store.StatementLimits(statement_timeout_ms=30_000, lock_timeout_ms=15_000)
    per_transaction = store.WorkerSession(worker_id=uuid.uuid4(), queues=["default"], limits=limits)
    per_session = store.WorkerSession(worker_id=uuid.uuid4(), queues=["default"])
    per_session.conn = per_session.connect()
    per_session.conn.execute("SET statement_timeout = 30000")  # what the startup options did
    per_session.conn.execute("SET lock_timeout = 15000")
    store.ensure_history_partitions()
    clear_tasks()
    with connection.cursor() as cursor:
        cursor.execute(FILL, [(rounds + 100) * BATCH * 2])
        cursor.execute("VACUUM ANALYZE queueapp_task_live")
    sessions = (per_transaction, per_session)
    held: dict[store.WorkerSession, list[store.Success]] = {session: [] for session in sessions}
    times: dict[store.WorkerSession, list[float]] = {session: [] for session in sessions}
    for n in range(rounds + 100):
        for session in sessions if n % 2 else reversed(sessions):
            started = time.perf_counter()
            _, rows = session.round(held[session], BATCH)
            took = time.perf_counter() - started
            held[session] = [store.Success(row.id, row.attempts, "null") for row in rows]
            if n >= 100:  # the first hundred warm the cache and the prepared statements
                times[session].append(took * 1000)
    for session in sessions:
        session.close()
    clear_tasks()
    limited, before = (statistics.median(times[session]) for session in sessions)
    ratio = limited / before
    return [
        Figure(
            f"round of {BATCH} finishes + {BATCH} claims, timeouts set per transaction (median of {rounds})",
            f"{limited:.3f} ms",
            f"{before:.3f} ms (the same round, timeouts set for the session)",
            f"{ratio:.3f}x",
            "<= 1.05x",
            ratio <= 1.05,
        )
    ]


if __name__ == "__main__":
    with scratch_database("taskqueue_bench_round_limits"):
        for f in figures():
            print(f"{f.what}: {f.figure} vs {f.ceiling}: {f.ratio} (target {f.target})")
