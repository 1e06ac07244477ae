"""Wake one, not all: queueapp_wake_waiters(queue, tasks) names which waiting workers should claim.

The notification's payload is "<queue> <worker id>" for up to `tasks` waiting workers of the queue,
picked at random (one notification each; PostgreSQL folds identical ones within a transaction, so
an enqueue loop that picks the same worker twice sends it once). A listener acts on a named
notification only for its own worker (a supervisor: for one of its children, or another idle child
when that one is busy); every other worker sleeps on. A plain "<queue>" payload (a resumed queue)
still wakes every listener of the queue. The lock and the marks are read as in 0008, so no wake-up
is lost: a worker that marked itself waiting is among those that may be named.

Workers of the previous version ignore named notifications (the payload is not one of their queue
names) and find those tasks by their poll: upgrade workers and the schema together, or expect up to
a poll interval of pickup latency meanwhile.
"""

import importlib

from django.db import migrations

WAKE_NAMED_WAITERS = """
DROP FUNCTION IF EXISTS queueapp_wake_waiters(text);
CREATE OR REPLACE FUNCTION queueapp_wake_waiters(queue text, tasks integer DEFAULT 1) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
  PERFORM pg_advisory_xact_lock_shared(hashtext('taskqueue.wake'), hashtext(queue));
  PERFORM pg_notify('taskqueue', queue || ' ' || named.id::text)
  FROM (SELECT id FROM queueapp_worker
        WHERE waiting AND state = 'ALIVE' AND queue = ANY(queues)
        ORDER BY random() LIMIT greatest(tasks, 1)) AS named;
END
$$;
"""

BACK = "DROP FUNCTION queueapp_wake_waiters(text, integer);" + importlib.import_module(
    "queueapp.migrations.0008_worker_waiting"
).WAKE_WAITERS


class Migration(migrations.Migration):
    dependencies = [("queueapp", "0012_rate_limit_per_key")]

    operations = [migrations.RunSQL(WAKE_NAMED_WAITERS, BACK)]
