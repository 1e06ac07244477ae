"""args must be a JSON array and kwargs a JSON object, in the live table and in history.

Safe on a big live table: each check is added NOT VALID (new and updated rows are checked from then
on; the ACCESS EXCLUSIVE lock lasts an instant, and gives up after lock_timeout rather than queue
every enqueue behind a long transaction), then validated in a transaction of its own, which scans
under a SHARE UPDATE EXCLUSIVE lock that enqueues, claims and finishes pass. On the partitioned
history table both steps recurse to every partition, and partitions made later (store.history:
CREATE TABLE ... LIKE ... INCLUDING CONSTRAINTS, then ATTACH) carry the checks too. Safe to run
again after an interruption. Rows that break a check stop the migration with the query that finds
them: the queue cannot guess what they meant.
"""

from typing import Any

from django.db import IntegrityError, migrations, models, transaction

CHECKS = {
    "task_live_args_array": ("queueapp_task_live", "jsonb_typeof(args) = 'array'"),
    "task_live_kwargs_object": ("queueapp_task_live", "jsonb_typeof(kwargs) = 'object'"),
    "task_history_args_array": ("queueapp_task_history", "jsonb_typeof(args) = 'array'"),
    "task_history_kwargs_object": ("queueapp_task_history", "jsonb_typeof(kwargs) = 'object'"),
}


def add_checks(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout = '5s'")
        for name, (table, condition) in CHECKS.items():
            cursor.execute("SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s", [table, name])
            if cursor.fetchone() is None:
                cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} CHECK ({condition}) NOT VALID")
    for name, (table, condition) in CHECKS.items():
        try:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
                cursor.execute(f"ALTER TABLE {table} VALIDATE CONSTRAINT {name}")
        except IntegrityError as exc:
            raise RuntimeError(
                f"rows of {table} break the check {name} ({condition}); find them with "
                f"`SELECT id, args, kwargs FROM {table} WHERE NOT ({condition})`, fix or delete "
                "them, then migrate again"
            ) from exc


def drop_checks(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        for name, (table, _) in CHECKS.items():
            cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")


def _json_type(column: str) -> models.Func:
    return models.Func(models.F(column), function="jsonb_typeof", output_field=models.TextField())


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("queueapp", "0006_fresh_retry_budget"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunPython(add_checks, drop_checks, atomic=False)],
            state_operations=[
                migrations.AddConstraint(
                    model_name="livetask",
                    constraint=models.CheckConstraint(
                        condition=models.lookups.Exact(_json_type("args"), "array"),
                        name="task_live_args_array",
                    ),
                ),
                migrations.AddConstraint(
                    model_name="livetask",
                    constraint=models.CheckConstraint(
                        condition=models.lookups.Exact(_json_type("kwargs"), "object"),
                        name="task_live_kwargs_object",
                    ),
                ),
            ],
        ),
    ]
