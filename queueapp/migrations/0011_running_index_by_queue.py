"""The running index leads with the queue: the flow-controlled claims count their queue's RUNNING
tasks (and its keys') through its range, instead of reading every queue's RUNNING task from the
heap (at 1,000 RUNNING tasks of other queues that was most of a flow claim's time). Lookups by
worker (the reaper, the workers page, the supervisor) read the whole index, the fleet's RUNNING
tasks, and the heap only for that worker's.

Safe on a live installation: the new index is built CONCURRENTLY before the old one is dropped
CONCURRENTLY (no lock that stops claims or finishes), so this migration runs outside a transaction.
"""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("queueapp", "0010_flow_epoch_per_queue")]

    operations = [
        AddIndexConcurrently(
            model_name="livetask",
            index=models.Index(
                condition=models.Q(("status", "RUNNING")),
                fields=["queue_name", "worker"],
                name="task_live_running_queue_idx",
            ),
        ),
        RemoveIndexConcurrently(model_name="livetask", name="task_live_running_idx"),
    ]
