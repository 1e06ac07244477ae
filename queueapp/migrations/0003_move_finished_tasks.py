"""Move an existing installation's finished tasks to history, in batches, without a long lock.

Not atomic: each batch is a transaction of its own (a few thousand rows by primary key), so workers
and the console go on meanwhile; each task moves in one statement, so the view queueapp_task shows
it exactly once throughout. Safe to run again after an interruption. Deferred READY tasks become
SCHEDULED, the indexes only history needs are dropped from the live table, and the live table's
status check is validated once it holds live tasks only.
"""

import datetime
from typing import Any

from django.db import migrations

BATCH = 5000

COLUMNS = (
    "id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at, started_at, "
    "finished_at, attempts, max_attempts, worker_ids, errors, return_value, timeout, cancel_requested, worker_id"
)

# Day partitions (UTC) for the days that finished tasks are moved into (at most a year back; older
# rows go to the default partition, which purge_tasks empties by DELETE) and a week ahead; from then
# on store.history keeps them ahead.
PARTITION_DAYS = """
SELECT d::date FROM (SELECT min(finished_at) AS first FROM queueapp_task_live
                     WHERE status IN ('SUCCESSFUL', 'FAILED', 'CANCELLED')) AS moving,
  generate_series(least(greatest(date_trunc('day', coalesce(moving.first, now()) AT TIME ZONE 'UTC'),
                                 date_trunc('day', now() AT TIME ZONE 'UTC') - interval '366 days'),
                        date_trunc('day', now() AT TIME ZONE 'UTC')),
                  date_trunc('day', now() AT TIME ZONE 'UTC') + interval '7 days', interval '1 day') AS d
"""

MOVE_BATCH = f"""
WITH moved AS (
  DELETE FROM queueapp_task_live
  WHERE id > %(after)s AND id <= %(after)s + %(batch)s AND status IN ('SUCCESSFUL', 'FAILED', 'CANCELLED')
  RETURNING {COLUMNS}
)
INSERT INTO queueapp_task_history ({COLUMNS})
SELECT id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at, started_at,
       coalesce(finished_at, now()), attempts, max_attempts, worker_ids, errors, return_value, timeout,
       cancel_requested, worker_id
FROM moved
"""

SCHEDULE_BATCH = """
UPDATE queueapp_task_live SET status = 'SCHEDULED'
WHERE id > %(after)s AND id <= %(after)s + %(batch)s AND status = 'READY' AND run_after > now()
"""


def move_finished(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        cursor.execute(PARTITION_DAYS)
        days = [row[0] for row in cursor.fetchall() if row[0] is not None]
        for day in days:
            name = f"queueapp_task_history_p{day:%Y%m%d}"
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF queueapp_task_history "
                "FOR VALUES FROM (%s) TO (%s)",
                [f"{day} 00:00+00", f"{day + datetime.timedelta(days=1)} 00:00+00"],
            )
        cursor.execute("CREATE INDEX CONCURRENTLY IF NOT EXISTS task_live_due_idx "
                       "ON queueapp_task_live (run_after) WHERE status = 'SCHEDULED'")
        cursor.execute("SELECT coalesce(max(id), 0) FROM queueapp_task_live")
        last = cursor.fetchone()[0]
        after = 0
        while after < last:
            cursor.execute(MOVE_BATCH, {"after": after, "batch": BATCH})
            cursor.execute(SCHEDULE_BATCH, {"after": after, "batch": BATCH})
            after += BATCH
        for index in ("task_status_id_idx", "task_queue_id_idx", "task_path_id_idx", "task_finished_idx"):
            cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
        cursor.execute("ALTER TABLE queueapp_task_live VALIDATE CONSTRAINT task_live_status_live")


def move_back(apps: Any, schema_editor: Any) -> None:
    """0002's reverse moves every row back into one table."""


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("queueapp", "0002_live_and_history"),
    ]

    operations = [migrations.RunPython(move_finished, move_back, atomic=False)]
