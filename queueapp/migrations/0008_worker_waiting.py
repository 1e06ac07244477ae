"""Notify only when someone waits: workers mark themselves waiting (queueapp_worker.waiting), and
enqueues notify through queueapp_wake_waiters(queue), which sends the NOTIFY only while an ALIVE
worker of that queue waits (queries.sql: enqueue_task and mark_worker_waiting say why and how no
wake-up is lost).

Safe on a live installation: the column has a constant default (no table rewrite), the worker table
is small (one row per worker start), and the function is new. VOLATILE matters: each statement in
it takes a fresh snapshot, so the marks are read after the advisory lock is held.
"""

from django.db import migrations, models

WAKE_WAITERS = """
CREATE OR REPLACE FUNCTION queueapp_wake_waiters(queue text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtext('taskqueue.wake'), hashtext(queue));
  IF EXISTS (SELECT 1 FROM queueapp_worker
             WHERE waiting AND state = 'ALIVE' AND queue = ANY(queues)) THEN
    PERFORM pg_notify('taskqueue', queue);
  END IF;
END
$$;
"""


class Migration(migrations.Migration):
    dependencies = [("queueapp", "0007_task_argument_shapes")]

    operations = [
        migrations.AddField(
            model_name="worker",
            name="waiting",
            field=models.BooleanField(db_default=False, default=False),
        ),
        migrations.AddIndex(
            model_name="worker",
            index=models.Index(
                condition=models.Q(("state", "ALIVE"), ("waiting", True)),
                fields=["id"],
                name="worker_waiting_idx",
            ),
        ),
        migrations.RunSQL(WAKE_WAITERS, "DROP FUNCTION queueapp_wake_waiters(text)"),
    ]
