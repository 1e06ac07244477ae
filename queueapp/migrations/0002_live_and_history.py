"""Live work apart from history (docs/design.md, "Live tasks and history").

The task table becomes queueapp_task_live, the lean table of the hot path (SCHEDULED, READY,
RUNNING); finished tasks go to queueapp_task_history, range-partitioned by finished_at; the view
queueapp_task shows both, for reads. This migration changes the schema in one short transaction
(renames, a NOT VALID check, an empty partitioned table, a view); 0003 moves an existing
installation's finished tasks in batches, without a long lock.
"""

import django.contrib.postgres.fields
import django.db.models.deletion
import django.db.models.expressions
import django.db.models.functions.comparison
import django.db.models.functions.datetime
import django.db.models.lookups
from django.db import migrations, models

COLUMNS = (
    "id, task_path, queue_name, priority, status, args, kwargs, run_after, enqueued_at, started_at, "
    "finished_at, attempts, max_attempts, worker_ids, errors, return_value, timeout, cancel_requested, worker_id"
)

FORWARD = f"""
ALTER TABLE queueapp_task RENAME TO queueapp_task_live;
-- No foreign key on the hot path (see LiveTask.worker); its name was chosen by Django, so look it up.
DO $$
DECLARE fk text;
BEGIN
  FOR fk IN SELECT conname FROM pg_constraint
            WHERE conrelid = 'queueapp_task_live'::regclass AND contype = 'f' LOOP
    EXECUTE format('ALTER TABLE queueapp_task_live DROP CONSTRAINT %I', fk);
  END LOOP;
END $$;
ALTER TABLE queueapp_task_live DROP CONSTRAINT task_status_known;
-- NOT VALID: checked for every row written from now on; 0003 validates it once the finished rows
-- have moved out (VALIDATE takes no lock that blocks writes).
ALTER TABLE queueapp_task_live ADD CONSTRAINT task_live_status_live
  CHECK (status IN ('SCHEDULED', 'READY', 'RUNNING')) NOT VALID;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_priority_range TO task_live_priority_range;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_attempts_non_negative TO task_live_attempts_non_negative;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_max_attempts_positive TO task_live_max_attempts_positive;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_timeout_positive TO task_live_timeout_positive;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_running_has_worker TO task_live_running_has_worker;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_args_size_cap TO task_live_args_size_cap;
ALTER INDEX task_claim_idx RENAME TO task_live_claim_idx;
ALTER INDEX task_ready_queue_idx RENAME TO task_live_ready_queue_idx;
ALTER INDEX task_running_worker_idx RENAME TO task_live_running_idx;

-- History: the same columns, finished_at required (it is the partition key). Partitions are made
-- by store.history (a day each, ahead of time); the default one catches a row whose day has none.
CREATE TABLE queueapp_task_history (
  id bigint NOT NULL,
  task_path varchar(255) NOT NULL,
  queue_name varchar(100) NOT NULL,
  priority smallint NOT NULL,
  status varchar(10) NOT NULL CONSTRAINT task_history_status_finished
    CHECK (status IN ('SUCCESSFUL', 'FAILED', 'CANCELLED')),
  args jsonb NOT NULL,
  kwargs jsonb NOT NULL,
  run_after timestamptz NOT NULL,
  enqueued_at timestamptz NOT NULL,
  started_at timestamptz NULL,
  finished_at timestamptz NOT NULL,
  attempts integer NOT NULL,
  max_attempts integer NOT NULL,
  worker_ids uuid[] NOT NULL,
  errors jsonb NOT NULL,
  return_value jsonb NULL,
  timeout double precision NULL,
  cancel_requested boolean NOT NULL,
  worker_id uuid NULL
) PARTITION BY RANGE (finished_at);
CREATE TABLE queueapp_task_history_default PARTITION OF queueapp_task_history DEFAULT;
-- By id: get_result, the task page, the API. Newest first per filter: the console and the API list.
-- By finished_at, covering what the per-minute charts, latency and the overview's per-queue counts
-- of the last hour read (index-only).
CREATE INDEX task_history_id_idx ON queueapp_task_history (id);
CREATE INDEX task_history_status_idx ON queueapp_task_history (status, id);
CREATE INDEX task_history_queue_idx ON queueapp_task_history (queue_name, id);
CREATE INDEX task_history_path_idx ON queueapp_task_history (task_path, id);
CREATE INDEX task_history_finished_idx ON queueapp_task_history (finished_at)
  INCLUDE (status, attempts, started_at, run_after, queue_name);

-- Every task, for reads. A task moves in one statement, so a snapshot sees it exactly once.
CREATE VIEW queueapp_task AS
  SELECT {{COLUMNS}} FROM queueapp_task_live
  UNION ALL
  SELECT {{COLUMNS}} FROM queueapp_task_history;
""".replace("{COLUMNS}", COLUMNS)

BACKWARD = f"""
DROP VIEW queueapp_task;
INSERT INTO queueapp_task_live ({COLUMNS}) SELECT {COLUMNS} FROM queueapp_task_history;
DROP TABLE queueapp_task_history;
UPDATE queueapp_task_live SET status = 'READY' WHERE status = 'SCHEDULED';
ALTER TABLE queueapp_task_live DROP CONSTRAINT task_live_status_live;
ALTER TABLE queueapp_task_live ADD CONSTRAINT task_status_known
  CHECK (status IN ('READY', 'RUNNING', 'SUCCESSFUL', 'FAILED', 'CANCELLED'));
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_live_priority_range TO task_priority_range;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_live_attempts_non_negative TO task_attempts_non_negative;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_live_max_attempts_positive TO task_max_attempts_positive;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_live_timeout_positive TO task_timeout_positive;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_live_running_has_worker TO task_running_has_worker;
ALTER TABLE queueapp_task_live RENAME CONSTRAINT task_live_args_size_cap TO task_args_size_cap;
ALTER INDEX task_live_claim_idx RENAME TO task_claim_idx;
ALTER INDEX task_live_ready_queue_idx RENAME TO task_ready_queue_idx;
ALTER INDEX task_live_running_idx RENAME TO task_running_worker_idx;
DROP INDEX IF EXISTS task_live_due_idx;
CREATE INDEX IF NOT EXISTS task_status_id_idx ON queueapp_task_live (status, id);
CREATE INDEX IF NOT EXISTS task_queue_id_idx ON queueapp_task_live (queue_name, id);
CREATE INDEX IF NOT EXISTS task_path_id_idx ON queueapp_task_live (task_path, id);
CREATE INDEX IF NOT EXISTS task_finished_idx ON queueapp_task_live (finished_at)
  INCLUDE (status, attempts, started_at, run_after) WHERE finished_at IS NOT NULL;
ALTER TABLE queueapp_task_live RENAME TO queueapp_task;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('queueapp', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(FORWARD, BACKWARD)],
            state_operations=[
        migrations.DeleteModel(name='Task'),
        migrations.CreateModel(
            name='TaskHistory',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('task_path', models.CharField(max_length=255)),
                ('queue_name', models.CharField(default='default', max_length=100)),
                ('priority', models.SmallIntegerField(default=0)),
                ('status', models.CharField(choices=[('SCHEDULED', 'Scheduled'), ('READY', 'Ready'), ('RUNNING', 'Running'), ('SUCCESSFUL', 'Successful'), ('FAILED', 'Failed'), ('CANCELLED', 'Cancelled')], default='READY', max_length=10)),
                ('args', models.JSONField(default=list)),
                ('kwargs', models.JSONField(default=dict)),
                ('run_after', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('enqueued_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('attempts', models.IntegerField(default=0)),
                ('max_attempts', models.IntegerField(default=3)),
                ('worker_ids', django.contrib.postgres.fields.ArrayField(base_field=models.UUIDField(), blank=True, default=list)),
                ('errors', models.JSONField(blank=True, default=list)),
                ('return_value', models.JSONField(blank=True, null=True)),
                ('timeout', models.FloatField(blank=True, null=True)),
                ('cancel_requested', models.BooleanField(default=False)),
                ('worker', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='+', to='queueapp.worker')),
            ],
            options={
                'db_table': 'queueapp_task_history',
            },
        ),
        migrations.CreateModel(
            name='LiveTask',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('task_path', models.CharField(max_length=255)),
                ('queue_name', models.CharField(default='default', max_length=100)),
                ('priority', models.SmallIntegerField(default=0)),
                ('status', models.CharField(choices=[('SCHEDULED', 'Scheduled'), ('READY', 'Ready'), ('RUNNING', 'Running'), ('SUCCESSFUL', 'Successful'), ('FAILED', 'Failed'), ('CANCELLED', 'Cancelled')], default='READY', max_length=10)),
                ('args', models.JSONField(default=list)),
                ('kwargs', models.JSONField(default=dict)),
                ('run_after', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('enqueued_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('attempts', models.IntegerField(default=0)),
                ('max_attempts', models.IntegerField(default=3)),
                ('worker_ids', django.contrib.postgres.fields.ArrayField(base_field=models.UUIDField(), blank=True, default=list)),
                ('errors', models.JSONField(blank=True, default=list)),
                ('return_value', models.JSONField(blank=True, null=True)),
                ('timeout', models.FloatField(blank=True, null=True)),
                ('cancel_requested', models.BooleanField(default=False)),
                ('worker', models.ForeignKey(blank=True, db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.DO_NOTHING, related_name='live_tasks', to='queueapp.worker')),
            ],
            options={
                'db_table': 'queueapp_task_live',
                'indexes': [models.Index(models.OrderBy(models.F('priority'), descending=True), models.F('run_after'), models.F('id'), condition=models.Q(('status', 'READY')), name='task_live_claim_idx'), models.Index(condition=models.Q(('status', 'SCHEDULED')), fields=['run_after'], name='task_live_due_idx'), models.Index(condition=models.Q(('status', 'READY')), fields=['queue_name'], name='task_live_ready_queue_idx'), models.Index(condition=models.Q(('status', 'RUNNING')), fields=['worker'], name='task_live_running_idx')],
                'constraints': [models.CheckConstraint(condition=models.Q(('priority__gte', -100), ('priority__lte', 100)), name='task_live_priority_range'), models.CheckConstraint(condition=models.Q(('status__in', ('SCHEDULED', 'READY', 'RUNNING'))), name='task_live_status_live'), models.CheckConstraint(condition=models.Q(('attempts__gte', 0)), name='task_live_attempts_non_negative'), models.CheckConstraint(condition=models.Q(('max_attempts__gte', 1)), name='task_live_max_attempts_positive'), models.CheckConstraint(condition=models.Q(('timeout__gt', 0), ('timeout__isnull', True), _connector='OR'), name='task_live_timeout_positive'), models.CheckConstraint(condition=models.Q(models.Q(('status', 'RUNNING'), ('worker__isnull', False)), models.Q(('status', 'RUNNING'), _negated=True), _connector='OR'), name='task_live_running_has_worker'), models.CheckConstraint(condition=django.db.models.lookups.LessThanOrEqual(django.db.models.expressions.CombinedExpression(models.Func(django.db.models.functions.comparison.Cast('args', models.TextField()), function='octet_length', output_field=models.IntegerField()), '+', models.Func(django.db.models.functions.comparison.Cast('kwargs', models.TextField()), function='octet_length', output_field=models.IntegerField())), 16777216), name='task_live_args_size_cap')],
            },
        ),
        migrations.CreateModel(
            name='Task',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('task_path', models.CharField(max_length=255)),
                ('queue_name', models.CharField(default='default', max_length=100)),
                ('priority', models.SmallIntegerField(default=0)),
                ('status', models.CharField(choices=[('SCHEDULED', 'Scheduled'), ('READY', 'Ready'), ('RUNNING', 'Running'), ('SUCCESSFUL', 'Successful'), ('FAILED', 'Failed'), ('CANCELLED', 'Cancelled')], default='READY', max_length=10)),
                ('args', models.JSONField(default=list)),
                ('kwargs', models.JSONField(default=dict)),
                ('run_after', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('enqueued_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
                ('started_at', models.DateTimeField(blank=True, null=True)),
                ('finished_at', models.DateTimeField(blank=True, null=True)),
                ('attempts', models.IntegerField(default=0)),
                ('max_attempts', models.IntegerField(default=3)),
                ('worker_ids', django.contrib.postgres.fields.ArrayField(base_field=models.UUIDField(), blank=True, default=list)),
                ('errors', models.JSONField(blank=True, default=list)),
                ('return_value', models.JSONField(blank=True, null=True)),
                ('timeout', models.FloatField(blank=True, null=True)),
                ('cancel_requested', models.BooleanField(default=False)),
            ],
            options={
                'db_table': 'queueapp_task',
                'managed': False,
                'permissions': [('retry_task', 'Can retry failed or cancelled tasks'), ('cancel_task', 'Can cancel tasks'), ('reprioritize_task', 'Can change the priority of waiting tasks')],
            },
        ),
            ],
        ),
    ]
