"""Live tasks remember the attempt they were last retried at by hand, so that a retried task's
backoff starts again from its base. A column with a constant default is added without rewriting
the table (PostgreSQL 11+); the lock it needs is brief, and waits at most lock_timeout behind a
long transaction instead of queueing every claim behind it."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("queueapp", "0005_schedules")]

    operations = [
        migrations.RunSQL("SET LOCAL lock_timeout = '10s'", migrations.RunSQL.noop),
        migrations.AddField(
            model_name="livetask",
            name="retried_at_attempt",
            field=models.IntegerField(db_default=0),
        ),
    ]
