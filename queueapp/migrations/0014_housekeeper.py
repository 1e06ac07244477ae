"""One housekeeper per database: the row that says which process runs the stager and the scheduler
for the whole fleet (workers.housekeeper). A new, empty table: safe on a live installation; workers
of the previous version keep running their own (harmlessly, as before)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('queueapp', '0013_wake_named_waiters'),
    ]

    operations = [
        migrations.CreateModel(
            name='Housekeeper',
            fields=[
                ('role', models.CharField(max_length=50, primary_key=True, serialize=False)),
                ('holder', models.UUIDField()),
                ('hostname', models.CharField(max_length=255)),
                ('pid', models.IntegerField()),
                ('taken_at', models.DateTimeField()),
                ('expires_at', models.DateTimeField()),
            ],
            options={
                'db_table': 'queueapp_housekeeper',
            },
        ),
    ]
