"""Fill 1,000,000 READY tasks and show EXPLAIN (ANALYZE) of the claim.

    make bench            (a throwaway cluster)  or  DATABASE_URL=... python bench/claim_explain.py

The claim must walk task_claim_idx and stop after LIMIT rows: no Sort node, no scan of the table.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import scratch_database

ROWS = 1_000_000


def main() -> None:
    with scratch_database("taskqueue_bench_claim"):
        from django.db import connection

        from queueapp import models
        from queueapp.sql import QUERIES

        worker = models.Worker.objects.create(hostname="bench", pid=0, queues=["default"], concurrency=10)
        with connection.cursor() as cursor:
            # Bench fill only (not queue SQL): 1M READY rows over 201 priorities and two queues.
            cursor.execute(
                """
                INSERT INTO queueapp_task (task_path, queue_name, priority, status, args, kwargs, run_after,
                                           enqueued_at, attempts, max_attempts, worker_ids, errors,
                                           cancel_requested)
                SELECT 'bench.noop', CASE WHEN g %% 10 = 0 THEN 'emails' ELSE 'default' END,
                       (g %% 201) - 100, 'READY', '[]', '{}', now() - (g || ' ms')::interval, now(), 0, 3,
                       '{}', '[]', false
                FROM generate_series(1, %s) AS g
                """,
                [ROWS],
            )
            cursor.execute("VACUUM ANALYZE queueapp_task")
            cursor.execute("SELECT count(*) FROM queueapp_task WHERE status = 'READY'")
            print(f"READY rows: {cursor.fetchone()[0]:,}")
            for label, queues in (
                ("queues=['default']", ["default"]),
                ("queues=['default','emails']", ["default", "emails"]),
            ):
                cursor.execute("BEGIN")
                cursor.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + QUERIES["claim_tasks"],
                    {"worker_id": worker.id, "queues": queues, "limit": 10},
                )
                plan = [row[0] for row in cursor.fetchall()]
                cursor.execute("ROLLBACK")
                print(f"\nEXPLAIN (ANALYZE, BUFFERS) claim_tasks, limit 10, {label}:")
                print("\n".join(plan))
                assert "task_claim_idx" in "\n".join(plan), "the claim does not use task_claim_idx"
                assert not any(line.strip().startswith("Sort") for line in plan), "the claim sorts"


if __name__ == "__main__":
    main()
