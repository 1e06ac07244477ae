"""What flow control costs the claim, as ratios from one run (python -m bench.flow_cost).

At 10,000 READY rows, the worker's claim of 10 (prepared, median of 300, each rolled back):
- plain: the plain claim of a queue without limits, no queue settings at all;
- limited: the flow-controlled claim of the same queue under a concurrency limit and a rate limit
  that do not bind, as a worker with that one flow-controlled queue runs it (lock its settings row,
  then claim_flow_queue): target <= 1.5x;
- general: the same queue claimed by claim_flow_tasks, as a worker runs it when the queue has keyed
  tasks or it claims several flow-controlled queues at once;
each with no other task RUNNING, then with 1,000 tasks of another queue RUNNING (the claims count
their queue's RUNNING tasks through the running index, which holds every queue's).
What queues without flow control pay is bench/flow_tax.py (against main).
"""

from __future__ import annotations

import os
import statistics
import time
import uuid

import psycopg

from bench.claim_cost import FILL
from bench.common import Figure, clear_tasks, rolled_back, scratch_database

SETTINGS = "INSERT INTO queueapp_queuecontrol (name, concurrency_limit, rate_limit)"


def timed_ms(
    conn: psycopg.Connection, statements: list[str], params: dict[str, object], samples: int
) -> float:
    """Median milliseconds of claim_plan and the statements, pipelined in one transaction (rolled
    back, the statements kept prepared), as a worker's round runs them."""
    from queueapp.sql import QUERIES
    from queueapp.store import timeouts

    times = []
    for n in range(samples + 20):  # the first 20 warm the cache and the prepared statements
        with rolled_back(conn):
            started = time.perf_counter()
            with conn.pipeline():
                conn.execute(timeouts.UNLIMITED_CLAIM_PLAN, prepare=False)
                if len(statements) > 1:  # a flow-controlled claim
                    conn.execute(QUERIES["flow_plan"], prepare=False)
                cursors = [conn.execute(statement, params) for statement in statements]
            rows = cursors[-1].fetchall()
            if n >= 20:
                times.append((time.perf_counter() - started) * 1000)
            assert len(rows) == 10, len(rows)
    return statistics.median(times)


# Tasks of another queue RUNNING across the fleet: the flow-controlled claims count the RUNNING
# tasks of their queue through the running index, which holds every queue's.
RUNNING = """
UPDATE queueapp_task_live SET status = 'RUNNING', worker_id = gen_random_uuid(), attempts = 1
WHERE id IN (SELECT id FROM queueapp_task_live WHERE queue_name = 'emails' LIMIT %s)
"""


def figures(ready: int = 10_000, samples: int = 300, rounds: int = 3, running: int = 0) -> list[Figure]:
    from queueapp.sql import QUERIES

    worker_id = uuid.uuid4()
    params = {"worker_id": worker_id, "queues": ["default"], "queue": "default", "limit": 10, "flow_epoch": 0}
    plain = [QUERIES["claim_tasks"]]
    limited = [QUERIES["lock_flow_queues"], QUERIES["claim_flow_queue"]]  # no breaker: no step_breakers
    general = [QUERIES["lock_flow_queues"], QUERIES["claim_flow_tasks"]]
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, prepare_threshold=0) as conn:
        conn.execute(
            "INSERT INTO queueapp_worker (id, hostname, pid, queues, concurrency, state, started_at,"
            " last_heartbeat_at) VALUES (%s, 'bench', 0, '{default}', 10, 'ALIVE', now(), now())",
            [worker_id],
        )
        clear_tasks()
        conn.execute(FILL, [ready])
        conn.execute(RUNNING, [running])
        conn.execute("VACUUM ANALYZE queueapp_task_live")
        cost = {}
        for round_ in range(rounds):  # alternating, so that a drift of the machine falls on all
            conn.execute("DELETE FROM queueapp_queuecontrol")
            cost["plain", round_] = timed_ms(conn, plain, params, samples)
            conn.execute(SETTINGS + " VALUES ('default', 1000, 1000000)")
            cost["limited", round_] = timed_ms(conn, limited, params, samples)
            cost["general", round_] = timed_ms(conn, general, params, samples)
        clear_tasks()
    base = statistics.mean([cost["plain", n] for n in range(rounds)])
    beside = f", {running:,} tasks of another queue running" if running else ""
    return [
        flow_figure(what + beside, statistics.mean([cost[key, n] for n in range(rounds)]), base, target)
        for key, what, target in [
            ("limited", "flow-controlled claim of 10, one unkeyed queue (lock + claim_flow_queue)", 1.5),
            ("general", "flow-controlled claim of 10 by claim_flow_tasks (keys, several queues)", None),
        ]
    ]


def flow_figure(what: str, ms: float, base: float, target: float | None) -> Figure:
    ratio = ms / base
    return Figure(
        what,
        f"{ms:.3f} ms",
        f"{base:.3f} ms (the plain claim of the queue without limits)",
        f"{ratio:.2f}x",
        f"<= {target}x" if target else "-",
        target is None or ratio <= target,
    )


def main() -> None:
    for running in (0, 1_000):
        with scratch_database("taskqueue_bench_flow"):
            for figure in figures(running=running):
                print(f"{figure.what}: {figure.figure} vs {figure.ceiling}: {figure.ratio} ({figure.target})")


if __name__ == "__main__":
    main()
