"""A rate limit per concurrency key: two settings of a queue and a token bucket per key (KeyBucket).

Safe on a live installation: the settings table holds a row per queue, the bucket table is new.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('queueapp', '0011_running_index_by_queue'),
    ]

    operations = [
        migrations.CreateModel(
            name='KeyBucket',
            fields=[
                ('pk', models.CompositePrimaryKey('queue_name', 'concurrency_key', blank=True, editable=False, primary_key=True, serialize=False)),
                ('queue_name', models.CharField(max_length=100)),
                ('concurrency_key', models.CharField(max_length=200)),
                ('tokens', models.FloatField()),
                ('tokens_at', models.DateTimeField()),
            ],
        ),
        migrations.AddField(
            model_name='queuecontrol',
            name='key_rate_limit',
            field=models.PositiveIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='queuecontrol',
            name='key_rate_period',
            field=models.FloatField(db_default=1.0, default=1.0),
        ),
        migrations.AddConstraint(
            model_name='queuecontrol',
            constraint=models.CheckConstraint(condition=models.Q(('key_rate_limit__gte', 1), ('key_rate_limit__isnull', True), _connector='OR'), name='queue_key_rate_limit_positive', violation_error_message='A rate limit per key is at least 1 start per period (empty: none).'),
        ),
        migrations.AddConstraint(
            model_name='queuecontrol',
            constraint=models.CheckConstraint(condition=models.Q(('key_rate_period__gt', 0)), name='queue_key_rate_period_positive', violation_error_message='The rate period per key is a positive number of seconds.'),
        ),
    ]
