"""Schedules (periodic tasks) and the ticks they enqueued: new, small tables."""

import django.db.models.deletion
import django.db.models.functions.datetime
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('queueapp', '0004_unique_keys'),
    ]

    operations = [
        migrations.CreateModel(
            name='Schedule',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(max_length=100, unique=True)),
                ('task_path', models.CharField(max_length=255)),
                ('cron', models.CharField(help_text='Five fields (minute hour day month weekday), or six with seconds', max_length=100)),
                ('timezone', models.CharField(default='UTC', help_text='An IANA zone, e.g. Europe/Paris', max_length=64)),
                ('args', models.JSONField(blank=True, default=list)),
                ('kwargs', models.JSONField(blank=True, default=dict)),
                ('queue_name', models.CharField(default='default', max_length=100)),
                ('priority', models.SmallIntegerField(default=0)),
                ('catch_up', models.CharField(choices=[('none', 'None: skip missed ticks'), ('latest', 'Latest: run the latest missed tick once'), ('all', 'All: run every missed tick, up to the limit')], default='latest', max_length=10)),
                ('catch_up_limit', models.PositiveIntegerField(default=100)),
                ('enabled', models.BooleanField(default=True)),
                ('source', models.CharField(default='admin', editable=False, max_length=10)),
                ('next_run_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('created_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
            ],
        ),
        migrations.CreateModel(
            name='ScheduleTick',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('tick_at', models.DateTimeField()),
                ('task_id', models.BigIntegerField(null=True)),
                ('manual', models.BooleanField(default=False)),
                ('enqueued_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now())),
            ],
            options={
                'db_table': 'queueapp_schedule_tick',
            },
        ),
        migrations.AddConstraint(
            model_name='schedule',
            constraint=models.CheckConstraint(condition=models.Q(('catch_up__in', ['none', 'latest', 'all'])), name='schedule_catch_up_known'),
        ),
        migrations.AddConstraint(
            model_name='schedule',
            constraint=models.CheckConstraint(condition=models.Q(('priority__gte', -100), ('priority__lte', 100)), name='schedule_priority_range'),
        ),
        migrations.AddField(
            model_name='scheduletick',
            name='schedule',
            field=models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='ticks', to='queueapp.schedule'),
        ),
        migrations.AddConstraint(
            model_name='scheduletick',
            constraint=models.UniqueConstraint(fields=('schedule', 'tick_at'), name='schedule_tick_once'),
        ),
    ]
