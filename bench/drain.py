"""Drain N no-op tasks with P worker processes; the count is verified in the table.

    DATABASE_URL=... .venv/bin/python bench/drain.py [N] [P] [CONCURRENCY]     (make bench runs it)

Baseline in the same run: a minimal psycopg loop that claims 100 rows with the same SKIP LOCKED
claim and marks them done, on the same machine and database: the ratio is what to compare.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, scratch_database, worker_env


def fill(n: int) -> None:
    from bench import tasks

    for start in range(0, n, 5000):
        tasks.noop.enqueue_many([((), {})] * min(5000, n - start))


def drain_with_workers(url: str, n: int, processes: int, concurrency: int) -> tuple[float, float]:
    """(wall seconds including start-up, seconds from first start to last finish by the DB clock)."""
    from django.db import connection

    fill(n)
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "runworker",
            "--burst",
            "--processes",
            str(processes),
            "--concurrency",
            str(concurrency),
        ],
        cwd=ROOT,
        env=worker_env(url),
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"runworker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE status = 'SUCCESSFUL'), count(*),"
            " extract(epoch FROM max(finished_at) - min(started_at)) FROM queueapp_task"
        )
        done, total, busy = cursor.fetchone()
        cursor.execute("TRUNCATE queueapp_task")
    if done != n or total != n:
        sys.exit(f"drain lost work: {done} of {n} SUCCESSFUL ({total} rows)")
    return wall, float(busy)


def drain_raw(url: str, n: int) -> float:
    """The same claim shape from a bare psycopg loop: claim 100, mark them done, commit."""
    import psycopg

    fill(n)
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "WITH picked AS (SELECT id FROM queueapp_task WHERE status = 'READY' AND run_after <= now()"
                " ORDER BY priority DESC, run_after, id LIMIT 100 FOR UPDATE SKIP LOCKED)"
                " UPDATE queueapp_task t SET status = 'SUCCESSFUL', finished_at = now(),"
                " attempts = t.attempts + 1 FROM picked WHERE t.id = picked.id RETURNING t.id"
            ).fetchall()
            if not rows:
                break
    elapsed = time.monotonic() - started
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE queueapp_task")
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    processes = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    concurrency = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    with scratch_database("taskqueue_bench_drain") as url:
        raw = drain_raw(url, n)
        print(f"baseline  raw psycopg claim-100 loop: {n / raw:,.0f} tasks/s ({raw:.2f} s)")
        for p in sorted({1, processes}):
            wall, busy = drain_with_workers(url, n, p, concurrency)
            print(
                f"runworker --processes {p} --concurrency {concurrency}: {n / busy:,.0f} tasks/s while busy"
                f" ({busy:.2f} s, {wall:.2f} s with start-up), {n:,} verified SUCCESSFUL;"
                f" {n / busy / (n / raw):.1%} of the baseline"
            )


if __name__ == "__main__":
    main()
