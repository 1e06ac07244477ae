"""The claim's cost at 10,000 and at 1,000,000 READY rows, and with 1,000,000 deferred tasks ahead.

The worker's claim statement (LIMIT 10, prepared, as workers run it) is timed from the client, each
time in a transaction that is rolled back so that the READY count stays what it says. Rows spread
over 201 priorities, two queues and a range of run_after times. At 1,000,000 the plan is checked
too: an Index Scan on task_live_claim_idx that stops after LIMIT rows, with no Sort node. Then
10,000 READY tasks with 1,000,000 SCHEDULED ones an hour ahead at a higher priority: deferred
tasks are not READY, so they lie outside the claim's index and must cost it nothing.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

import psycopg

from bench.common import Figure, clear_tasks

FILL = """
INSERT INTO queueapp_task_live (task_path, queue_name, priority, status, args, kwargs, run_after,
                           enqueued_at, attempts, max_attempts, worker_ids, errors, cancel_requested)
SELECT 'bench.tasks.noop', CASE WHEN g %% 10 = 0 THEN 'emails' ELSE 'default' END,
       (g %% 201) - 100, 'READY', '[]', '{}', now() - (g || ' ms')::interval, now(), 0, 3,
       '{}', '[]', false
FROM generate_series(1, %s) AS g
"""

DEFERRED = """
INSERT INTO queueapp_task_live (task_path, queue_name, priority, status, args, kwargs, run_after,
                                enqueued_at, attempts, max_attempts, worker_ids, errors, cancel_requested)
SELECT 'bench.tasks.noop', 'default', 100, 'SCHEDULED', '[]', '{}', now() + interval '1 hour', now(), 0, 3,
       '{}', '[]', false
FROM generate_series(1, %s) AS g
"""


def claim_ms(conn: psycopg.Connection, params: dict[str, object], samples: int) -> float:
    """Median milliseconds of one claim of 10 (each rolled back)."""
    from queueapp.sql import QUERIES

    times = []
    for _ in range(samples):
        with conn.transaction(force_rollback=True):
            started = time.perf_counter()
            rows = conn.execute(QUERIES["claim_tasks"], params).fetchall()
            times.append((time.perf_counter() - started) * 1000)
            assert len(rows) == 10
    return statistics.median(times)


def plan(conn: psycopg.Connection, params: dict[str, object]) -> list[str]:
    from queueapp.sql import QUERIES

    with conn.transaction(force_rollback=True):
        lines = conn.execute("EXPLAIN (ANALYZE, COSTS OFF) " + QUERIES["claim_tasks"], params).fetchall()
    return [line for (line,) in lines]


def figures(small: int = 10_000, large: int = 1_000_000, samples: int = 300) -> list[Figure]:
    worker_id = uuid.uuid4()
    params = {"worker_id": worker_id, "queues": ["default"], "limit": 10, "flow_epoch": 0}
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, prepare_threshold=0) as conn:
        conn.execute(
            "INSERT INTO queueapp_worker (id, hostname, pid, queues, concurrency, state, started_at,"
            " last_heartbeat_at) VALUES (%s, 'bench', 0, '{default}', 10, 'ALIVE', now(), now())",
            [worker_id],
        )
        cost = {}
        for rows in (small, large):
            clear_tasks()
            conn.execute(FILL, [rows])
            conn.execute("VACUUM ANALYZE queueapp_task_live")
            claim_ms(conn, params, 20)  # warm the cache and the prepared statement
            cost[rows] = claim_ms(conn, params, samples)
        shown = plan(conn, params)
        clear_tasks()
        conn.execute(FILL, [small])
        conn.execute(DEFERRED, [large])
        conn.execute("VACUUM ANALYZE queueapp_task_live")
        claim_ms(conn, params, 20)
        deferred_cost = claim_ms(conn, params, samples)
        clear_tasks()
    text = "\n".join(shown)
    if "task_live_claim_idx" not in text or any(line.strip().startswith("Sort") for line in shown):
        raise SystemExit(f"the claim does not walk task_claim_idx without sorting:\n{text}")
    ratio = cost[large] / cost[small]
    deferred_ratio = deferred_cost / cost[small]
    return [
        Figure(
            f"claim of 10 at {large:,} READY rows (median of {samples})",
            f"{cost[large]:.3f} ms",
            f"{cost[small]:.3f} ms (the same claim at {small:,} READY rows)",
            f"{ratio:.2f}x",
            "<= 1.5x",
            ratio <= 1.5,
        ),
        Figure(
            f"claim of 10 at {small:,} READY rows with {large:,} deferred ahead (higher priority)",
            f"{deferred_cost:.3f} ms",
            f"{cost[small]:.3f} ms (the same claim with none deferred)",
            f"{deferred_ratio:.2f}x",
            "<= 1.5x",
            deferred_ratio <= 1.5,
        ),
    ]
