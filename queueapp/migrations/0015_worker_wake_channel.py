"""Wake-ups to the named worker's listener only: each worker row says which channel its listener
hears (its supervisor's, or its own), and queueapp_wake_waiters sends a named wake-up there instead
of to the shared channel that every listener hears. A fleet of 20 supervisors spent 19 wake-ups per
task in listeners that found the named worker was not theirs (docs/benchmarks.md).

Safe on a live installation: a nullable column without a default (no table rewrite) on the small
worker table, and the function replaced in place. Rows of workers of the previous version have no
channel: their wake-ups still go to the shared channel, which every version's listener hears.
"""

import importlib

from django.db import migrations, models

WAKE_ON_LISTENERS_CHANNEL = """
CREATE OR REPLACE FUNCTION queueapp_wake_waiters(queue text, tasks integer DEFAULT 1) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtext('taskqueue.wake'), hashtext(queue));
  PERFORM pg_notify(coalesce(named.wake_channel, 'taskqueue'), queue || ' ' || named.id::text)
  FROM (SELECT id, wake_channel FROM queueapp_worker
        WHERE waiting AND state = 'ALIVE' AND queue = ANY(queues)
        ORDER BY random() LIMIT greatest(tasks, 1)) AS named;
END
$$;
"""

BACK = importlib.import_module("queueapp.migrations.0013_wake_named_waiters").WAKE_NAMED_WAITERS


class Migration(migrations.Migration):
    dependencies = [("queueapp", "0014_housekeeper")]

    operations = [
        migrations.AddField(
            model_name="worker",
            name="wake_channel",
            field=models.CharField(blank=True, max_length=63, null=True),
        ),
        # Back: the function first, while the column it reads is still there.
        migrations.RunSQL(WAKE_ON_LISTENERS_CHANNEL, BACK),
    ]
