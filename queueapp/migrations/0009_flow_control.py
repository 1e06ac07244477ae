"""Flow control: queue settings, circuit breaker outcomes, concurrency keys on tasks, the workers'
flow epoch, and the API key scope to manage queues.

Safe on a big live table: flow_epoch has a constant default, which PostgreSQL keeps in the
catalogue (no rewrite of the worker table); concurrency_key is nullable without a default, which PostgreSQL adds to
the catalogue only (no rewrite, a moment's lock), on the live table and on history (the partitioned
table passes it to its partitions, again without a rewrite); the view over both gets the column at
its end, after every column it has (CREATE OR REPLACE VIEW, no data touched).
"""

import django.db.models.functions.datetime
from django.db import migrations, models

COLUMNS = (
    "id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at, started_at, "
    "finished_at, attempts, max_attempts, worker_ids, errors, return_value, timeout, cancel_requested, worker_id, "
    "unique_key"
)


# The queues the plain claim leaves to the flow-controlled one (the only definition).
FLOW_QUEUE = """
CREATE VIEW queueapp_flow_queue AS
SELECT * FROM queueapp_queuecontrol
WHERE paused OR concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL OR has_keys
   OR breaker_threshold IS NOT NULL
"""

# What a flow-controlled queue may start now (the only definition; the claims add their limit):
# free is its concurrency limit less its RUNNING tasks (claimed ahead included), 0 while its breaker
# is open, 1 when a half-open breaker's trial is due, capped by the whole tokens in its bucket
# (refilled at rate_limit per rate_period up to a 100 ms burst, never below one; the claims run after
# the lock, so statement_timestamp() only moves forward); NULL when nothing caps it. Paused queues
# have no row.
FLOW_SLOT = """
CREATE VIEW queueapp_flow_slot AS
SELECT s.name, s.key_concurrency, s.rated, s.trying, s.tokens,
       least(s.free, CASE WHEN s.rated THEN floor(s.tokens)::int END) AS free
FROM (
  SELECT q.name, q.key_concurrency, q.rate_limit IS NOT NULL AS rated, q.breaker_state = 'half_open' AS trying,
         CASE WHEN q.breaker_state = 'open' THEN 0
              WHEN q.breaker_state = 'half_open' THEN (q.breaker_until <= statement_timestamp())::int
              WHEN q.concurrency_limit IS NOT NULL
              THEN greatest(q.concurrency_limit - (SELECT count(*) FROM queueapp_task_live r
                                                   WHERE r.status = 'RUNNING' AND r.queue_name = q.name), 0)::int
         END AS free,
         least(greatest(1, q.rate_limit / q.rate_period * 0.1),
               CASE WHEN q.tokens_at IS NULL THEN greatest(1, q.rate_limit / q.rate_period * 0.1)
                    ELSE q.tokens + q.rate_limit / q.rate_period
                                    * extract(epoch FROM statement_timestamp() - q.tokens_at) END) AS tokens
  FROM queueapp_flow_queue q
  WHERE NOT q.paused
) AS s
"""


def view(columns: str) -> str:
    return (
        f"CREATE OR REPLACE VIEW queueapp_task AS SELECT {columns} FROM queueapp_task_live"
        f" UNION ALL SELECT {columns} FROM queueapp_task_history"
    )


class Migration(migrations.Migration):

    dependencies = [
        ('queueapp', '0008_worker_waiting'),
    ]

    operations = [
        migrations.AddField(
            model_name='apikey',
            name='can_manage_queues',
            field=models.BooleanField(db_default=False, default=False),
        ),
        migrations.AddField(
            model_name='worker',
            name='flow_epoch',
            field=models.IntegerField(db_default=0, default=0, editable=False),
        ),
        migrations.AddField(
            model_name='livetask',
            name='concurrency_key',
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
        migrations.AddField(
            model_name='taskhistory',
            name='concurrency_key',
            field=models.CharField(blank=True, max_length=200, null=True),
        ),
        migrations.RunSQL(
            view(f"{COLUMNS}, concurrency_key"), reverse_sql=f"DROP VIEW queueapp_task; {view(COLUMNS)}"
        ),
        migrations.CreateModel(
            name='BreakerEvent',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('queue_name', models.CharField(max_length=100)),
                ('at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('failed', models.BooleanField()),
            ],
            options={
                'indexes': [models.Index(fields=['queue_name', 'at'], name='breaker_event_queue_at_idx')],
            },
        ),
        migrations.CreateModel(
            name='QueueControl',
            fields=[
                ('name', models.CharField(max_length=100, primary_key=True, serialize=False)),
                ('paused', models.BooleanField(db_default=False, default=False)),
                ('concurrency_limit', models.PositiveIntegerField(blank=True, null=True)),
                ('key_concurrency', models.PositiveIntegerField(db_default=1, default=1)),
                ('rate_limit', models.PositiveIntegerField(blank=True, null=True)),
                ('rate_period', models.FloatField(db_default=1.0, default=1.0)),
                ('has_keys', models.BooleanField(db_default=False, default=False, editable=False)),
                ('tokens', models.FloatField(db_default=0.0, default=0.0, editable=False)),
                ('tokens_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('breaker_threshold', models.FloatField(blank=True, null=True)),
                ('breaker_min_attempts', models.PositiveIntegerField(db_default=20, default=20)),
                ('breaker_window', models.FloatField(db_default=60.0, default=60.0)),
                ('breaker_cooloff', models.FloatField(db_default=30.0, default=30.0)),
                ('breaker_state', models.CharField(choices=[('closed', 'Closed'), ('open', 'Open'), ('half_open', 'Half-open')], db_default='closed', default='closed', editable=False, max_length=10)),
                ('breaker_until', models.DateTimeField(blank=True, editable=False, null=True)),
                ('breaker_changed_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('updated_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), editable=False)),
            ],
            options={
                'verbose_name': 'queue',
                'verbose_name_plural': 'queues',
                'constraints': [models.CheckConstraint(condition=models.Q(('concurrency_limit__gte', 1), ('concurrency_limit__isnull', True), _connector='OR'), name='queue_concurrency_limit_positive', violation_error_message='A concurrency limit is at least 1 (leave it empty for none).'), models.CheckConstraint(condition=models.Q(('key_concurrency__gte', 1)), name='queue_key_concurrency_positive', violation_error_message='Tasks per concurrency key is at least 1.'), models.CheckConstraint(condition=models.Q(('rate_limit__gte', 1), ('rate_limit__isnull', True), _connector='OR'), name='queue_rate_limit_positive', violation_error_message='A rate limit is at least 1 start per period (empty for none).'), models.CheckConstraint(condition=models.Q(('rate_period__gt', 0)), name='queue_rate_period_positive', violation_error_message='The rate period is a positive number of seconds.'), models.CheckConstraint(condition=models.Q(models.Q(('breaker_threshold__gt', 0), ('breaker_threshold__lte', 1)), ('breaker_threshold__isnull', True), _connector='OR'), name='queue_breaker_threshold_share', violation_error_message='The breaker threshold is a share: over 0, at most 1.'), models.CheckConstraint(condition=models.Q(('breaker_cooloff__gt', 0), ('breaker_min_attempts__gte', 1), ('breaker_window__gt', 0)), name='queue_breaker_positive', violation_error_message="The breaker's attempts, window and cool-off are positive.")],
            },
        ),
        migrations.RunSQL(FLOW_QUEUE, reverse_sql="DROP VIEW queueapp_flow_queue"),
        migrations.RunSQL(FLOW_SLOT, reverse_sql="DROP VIEW queueapp_flow_slot"),
    ]
