"""The console at 1,000,000 live tasks and 10,000,000 finished ones: server-side time of the task list
(unfiltered, filtered, searched), the task page and the overview page, through Django's test client
in this process.

    DATABASE_URL=... .venv/bin/python bench/console_1m.py [LIVE_ROWS [HISTORY_ROWS]]   (make bench runs it)

History is spread over the last ten days, one partition a day as the workers make them. Target: each
page under 500 ms. Each is fetched 5 times; the median is reported.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import results
from bench.common import scratch_database

PAGES = [
    ("task list, unfiltered", "/admin/queueapp/task/"),
    ("task list, status=FAILED", "/admin/queueapp/task/?status__exact=FAILED"),
    ("task list, queue=emails", "/admin/queueapp/task/?queue_name=emails"),
    ("task list, task=bench.tasks.noop", "/admin/queueapp/task/?task_path=bench.tasks.noop"),
    ("task list, search by id", "/admin/queueapp/task/?q=654321"),
    ("task list, search by task path", "/admin/queueapp/task/?q=bench.tasks"),
    (
        "task list, FAILED + emails, page 3",
        "/admin/queueapp/task/?status__exact=FAILED&queue_name=emails&p=3",
    ),
    ("task page, live task", "/admin/queueapp/task/654321/change/"),
    ("task page, finished task", "/admin/queueapp/task/7654321/change/"),
    ("overview", "/admin/queueapp/task/overview/"),
]


LIVE_FILL = """
INSERT INTO queueapp_task_live (id, task_path, queue_name, priority, status, args, kwargs, run_after,
    enqueued_at, started_at, attempts, max_attempts, worker_ids, errors, cancel_requested, worker_id)
SELECT g, CASE WHEN g %% 3 = 0 THEN 'bench.tasks.noop' ELSE 'app.tasks.send_email' END,
       CASE WHEN g %% 10 = 0 THEN 'emails' ELSE 'default' END, 0,
       CASE WHEN g %% 10 < 6 THEN 'READY' WHEN g %% 10 < 9 THEN 'SCHEDULED' ELSE 'RUNNING' END,
       '[1, 2]', '{}',
       CASE WHEN g %% 10 BETWEEN 6 AND 8 THEN now() + interval '1 hour' ELSE now() - interval '1 hour' END,
       now() - interval '1 hour', CASE WHEN g %% 10 = 9 THEN now() END,
       CASE WHEN g %% 10 = 9 THEN 1 ELSE 0 END,
       3, '{}', '[]', false, CASE WHEN g %% 10 = 9 THEN %s::uuid END
FROM generate_series(1, %s) AS g
"""

# Finished over the last ten days, newest ids last; 1% FAILED, 0.5% CANCELLED.
HISTORY_FILL = """
INSERT INTO queueapp_task_history (id, task_path, queue_name, priority, status, args, kwargs, run_after,
    enqueued_at, started_at, finished_at, attempts, max_attempts, worker_ids, errors, return_value,
    timeout, cancel_requested, worker_id)
SELECT %s + g, CASE WHEN g %% 3 = 0 THEN 'bench.tasks.noop' ELSE 'app.tasks.send_email' END,
       CASE WHEN g %% 10 = 0 THEN 'emails' ELSE 'default' END, 0,
       CASE WHEN g %% 100 = 0 THEN 'FAILED' WHEN g %% 200 = 1 THEN 'CANCELLED' ELSE 'SUCCESSFUL' END,
       '[1, 2]', '{}', f - interval '2 seconds', f - interval '2 seconds', f - interval '1 second', f,
       1, 3, '{}',
       CASE WHEN g %% 100 = 0 THEN '[{"exception_class_path": "builtins.RuntimeError",
            "message": "boom", "traceback": "Traceback...", "attempt": 1}]'::jsonb ELSE '[]'::jsonb END,
       '0', NULL, g %% 200 = 1, NULL
FROM generate_series(1, %s) AS g, LATERAL (SELECT now() - (%s - g) * interval '86.4 ms' AS f) AS t
"""


def partitions_for_the_last_days(cursor: object, days: int) -> None:
    """The partitions workers would have made on those days (bench set-up)."""
    import datetime as dt

    from queueapp import store

    today = store.database_now().astimezone(dt.UTC).date()
    for back in range(1, days + 1):
        day = today - dt.timedelta(days=back)
        cursor.execute(  # type: ignore[attr-defined]
            f"CREATE TABLE IF NOT EXISTS {store.history.partition_name(day)}"
            " PARTITION OF queueapp_task_history"
            f" FOR VALUES FROM ('{day} 00:00+00') TO ('{day + dt.timedelta(days=1)} 00:00+00')"
        )


def main() -> None:
    live = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    history = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000
    with scratch_database("taskqueue_bench_console"):
        import os

        os.environ.setdefault("ALLOWED_HOSTS", "testserver")
        import uuid

        from django.conf import settings
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client

        settings.ALLOWED_HOSTS = ["testserver"]
        started = time.perf_counter()
        with connection.cursor() as cursor:
            partitions_for_the_last_days(cursor, 11)
            cursor.execute(LIVE_FILL, [str(uuid.uuid4()), live])
            for start in range(0, history, 1_000_000):  # a transaction per million rows
                count = min(1_000_000, history - start)
                cursor.execute(HISTORY_FILL, [live + start, count, history - start])
            cursor.execute("VACUUM ANALYZE queueapp_task_live")
            cursor.execute("VACUUM ANALYZE queueapp_task_history")
        print(f"filled in {time.perf_counter() - started:.0f} s")
        from queueapp import models

        for pid in range(20):  # a realistic fleet: the pages list and count per worker
            models.Worker.objects.create(hostname="bench", pid=pid, queues=["default"], concurrency=8)
        user = User.objects.create_superuser("bench", "bench@example.com", "bench")
        client = Client()
        client.force_login(user)
        print(
            f"{live:,} live and {history:,} finished tasks; median of 5 server-side renders"
            " (target: under 500 ms each):"
        )
        rows: list[dict[str, Any]] = []
        for label, url in PAGES:
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                response = client.get(url)
                timings.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    sys.exit(f"{url}: HTTP {response.status_code}")
            median = statistics.median(timings)
            print(f"  {label:40s} {median:7.1f} ms  {'ok' if median < 500 else 'SLOW'}")
            rows.append({"page": label, "median_ms": round(median, 1)})
    results.save_bars(
        "console",
        rows,
        about={"live": live, "history": history},
        title=f"console pages, {live:,} live + {history:,} finished tasks, median of 5",
        label="page",
        value="median_ms",
        unit="ms",
    )


if __name__ == "__main__":
    main()
