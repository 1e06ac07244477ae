"""The console at 1,000,000 tasks: server-side time of the task list (unfiltered, filtered, searched)
and of the overview page, through Django's test client in this process.

    DATABASE_URL=... .venv/bin/python bench/console_1m.py [ROWS]          (make bench runs it)

Target: each page under 500 ms. Each is fetched 5 times; the median is reported.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    ("task page", "/admin/queueapp/task/654321/change/"),
    ("overview", "/admin/queueapp/task/overview/"),
]


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with scratch_database("taskqueue_bench_console"):
        import os

        os.environ.setdefault("ALLOWED_HOSTS", "testserver")
        from django.conf import settings
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client

        settings.ALLOWED_HOSTS = ["testserver"]
        with connection.cursor() as cursor:
            # Bench fill (not queue SQL): a realistic mix, 1% failed, finished over the last hour.
            cursor.execute(
                """
                INSERT INTO queueapp_task (task_path, queue_name, priority, status, args, kwargs, run_after,
                    enqueued_at, started_at, finished_at, attempts, max_attempts, worker_ids, errors,
                    cancel_requested, return_value)
                SELECT CASE WHEN g %% 3 = 0 THEN 'bench.tasks.noop' ELSE 'app.tasks.send_email' END,
                       CASE WHEN g %% 10 = 0 THEN 'emails' ELSE 'default' END, 0,
                       CASE WHEN g %% 100 = 0 THEN 'FAILED' WHEN g %% 50 = 1 THEN 'READY'
                            ELSE 'SUCCESSFUL' END,
                       '[1, 2]', '{}', now() - interval '1 hour' + (g || ' ms')::interval,
                       now() - interval '1 hour', now() - interval '1 hour' + (g * 3 || ' ms')::interval,
                       CASE WHEN g %% 50 = 1 THEN NULL
                            ELSE now() - interval '1 hour' + (g * 3 || ' ms')::interval END,
                       1, 3, '{}',
                       CASE WHEN g %% 100 = 0 THEN '[{"exception_class_path": "builtins.RuntimeError",
                            "message": "boom", "traceback": "Traceback...", "attempt": 1}]'::jsonb
                            ELSE '[]'::jsonb END,
                       false, '0'
                FROM generate_series(1, %s) AS g
                """,
                [rows],
            )
            cursor.execute("VACUUM ANALYZE queueapp_task")
        from queueapp import models

        for pid in range(20):  # a realistic fleet: the pages list and count per worker
            models.Worker.objects.create(hostname="bench", pid=pid, queues=["default"], concurrency=8)
        user = User.objects.create_superuser("bench", "bench@example.com", "bench")
        client = Client()
        client.force_login(user)
        print(f"{rows:,} tasks; median of 5 server-side renders (target: under 500 ms each):")
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


if __name__ == "__main__":
    main()
