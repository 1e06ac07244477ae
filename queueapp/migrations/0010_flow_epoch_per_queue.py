"""The flow epoch moves from the worker rows to the queue settings rows: a flow-control change moves
the epoch of the queues it changes (rows it writes anyway) instead of locking every worker row of
those queues until it commits, which held up their heartbeats (queries.sql: flow_changed).

The column is the database's alone: QueueControl does not declare it, so that the ORM (the admin's
save, update_or_create) never writes back a value it read earlier; only flow_changed moves it.
Safe on a live installation: a constant default (no rewrite; the settings table holds a row per
queue), and dropping a column only marks it gone. Workers of the previous release compare the
epoch of their row in their claim: stop them before migrating.
"""

from django.db import migrations

ADD_EPOCH = "ALTER TABLE queueapp_queuecontrol ADD COLUMN flow_epoch integer NOT NULL DEFAULT 0"
DROP_EPOCH = "ALTER TABLE queueapp_queuecontrol DROP COLUMN flow_epoch"


class Migration(migrations.Migration):
    dependencies = [("queueapp", "0009_flow_control")]

    operations = [
        migrations.RemoveField(model_name="worker", name="flow_epoch"),
        migrations.RunSQL(ADD_EPOCH, reverse_sql=DROP_EPOCH),
    ]
