"""Unique tasks: a unique_key column on live tasks and history, unique among live tasks.

Safe on a big live table: the columns are nullable without a default (no table rewrite, a moment's
lock); the indexes are built CONCURRENTLY (writes go on), which cannot run in a transaction, hence
atomic = False. History is partitioned and PostgreSQL cannot build a partitioned index
concurrently: the index is made on the parent only (invalid, instantly), built concurrently on each
partition and attached; once every partition has it, the parent's is valid and partitions attached
later get theirs built at ATTACH. The view queueapp_task gains the column at its end (CREATE OR
REPLACE VIEW may only append).
"""

from typing import Any

from django.db import migrations, models

COLUMNS = (
    "id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at, started_at, "
    "finished_at, attempts, max_attempts, worker_ids, errors, return_value, timeout, cancel_requested, worker_id"
)

ADD_COLUMNS = f"""
ALTER TABLE queueapp_task_live ADD COLUMN IF NOT EXISTS unique_key varchar(255) NULL;
ALTER TABLE queueapp_task_history ADD COLUMN IF NOT EXISTS unique_key varchar(255) NULL;
CREATE OR REPLACE VIEW queueapp_task AS
  SELECT {COLUMNS}, unique_key FROM queueapp_task_live
  UNION ALL
  SELECT {COLUMNS}, unique_key FROM queueapp_task_history;
"""

DROP_COLUMNS = f"""
DROP VIEW queueapp_task;
CREATE VIEW queueapp_task AS
  SELECT {COLUMNS} FROM queueapp_task_live
  UNION ALL
  SELECT {COLUMNS} FROM queueapp_task_history;
ALTER TABLE queueapp_task_live DROP COLUMN unique_key;
ALTER TABLE queueapp_task_history DROP COLUMN unique_key;
"""

# ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL infers this index.
LIVE_INDEX = """
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS task_live_unique_key
ON queueapp_task_live (unique_key) WHERE unique_key IS NOT NULL
"""

# A key held "for a period after finishing": the newest finished task with the key, per partition.
HISTORY_INDEX = "task_history_unique_key_idx"
HISTORY_COLUMNS = "(unique_key, finished_at) WHERE unique_key IS NOT NULL"


def add_history_index(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"CREATE INDEX IF NOT EXISTS {HISTORY_INDEX} ON ONLY queueapp_task_history {HISTORY_COLUMNS}")
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'queueapp_task_history'::regclass ORDER BY c.relname"
        )
        for (partition,) in cursor.fetchall():
            index = f"{partition}_unique_key_idx"
            cursor.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {partition} {HISTORY_COLUMNS}")
            cursor.execute(
                "SELECT 1 FROM pg_inherits WHERE inhrelid = %s::regclass AND inhparent = %s::regclass",
                [index, HISTORY_INDEX],
            )
            if cursor.fetchone() is None:
                cursor.execute(f"ALTER INDEX {HISTORY_INDEX} ATTACH PARTITION {index}")


def drop_history_index(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {HISTORY_INDEX}")


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("queueapp", "0003_move_finished_tasks"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(ADD_COLUMNS, DROP_COLUMNS),
                migrations.RunSQL(LIVE_INDEX, "DROP INDEX IF EXISTS task_live_unique_key"),
                migrations.RunPython(add_history_index, drop_history_index, atomic=False),
            ],
            state_operations=[
                migrations.AddField(
                    model_name="livetask",
                    name="unique_key",
                    field=models.CharField(blank=True, max_length=255, null=True),
                ),
                migrations.AddField(
                    model_name="taskhistory",
                    name="unique_key",
                    field=models.CharField(blank=True, max_length=255, null=True),
                ),
                migrations.AddConstraint(
                    model_name="livetask",
                    constraint=models.UniqueConstraint(
                        condition=models.Q(("unique_key__isnull", False)),
                        fields=("unique_key",),
                        name="task_live_unique_key",
                    ),
                ),
            ],
        ),
    ]
