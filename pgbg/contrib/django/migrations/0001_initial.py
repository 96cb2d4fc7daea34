"""pgbg's schema (its own Alembic migrations, as ``pgbg migrate`` runs them) and, for
Django's state only, the unmanaged models that read it. Later pgbg releases upgrade the
schema from ``post_migrate`` (pgbg/contrib/django/apps.py): no new Django migration needed.
"""

from django.db import migrations, models

from pgbg.contrib.django.migration import upgrade_operation


class Migration(migrations.Migration):

    initial = True
    atomic = False  # Alembic runs on a connection of its own, in its own transactions

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunPython(upgrade_operation, migrations.RunPython.noop, elidable=False),
        migrations.CreateModel(
            name='Task',
            fields=[
                ('id', models.UUIDField(primary_key=True, serialize=False)),
                ('task_type', models.TextField()),
                ('func', models.TextField()),
                ('args', models.JSONField(default=list)),
                ('kwargs', models.JSONField(default=dict)),
                ('priority', models.IntegerField(default=0)),
                ('status', models.TextField(choices=[('queued', 'queued'), ('running', 'running'), ('succeeded', 'succeeded'), ('failed', 'failed'), ('cancelled', 'cancelled'), ('terminated', 'terminated')], default='queued')),
                ('num_proc', models.IntegerField(default=0)),
                ('num_of_task_type', models.JSONField(default=dict)),
                ('queued_at', models.DateTimeField()),
                ('started_at', models.DateTimeField(null=True)),
                ('finished_at', models.DateTimeField(null=True)),
                ('worker_id', models.UUIDField(null=True)),
                ('hostname', models.TextField(null=True)),
                ('pid', models.IntegerField(null=True)),
                ('attempt', models.IntegerField(default=0)),
                ('max_attempts', models.IntegerField(default=1)),
                ('timeout', models.FloatField(null=True)),
                ('exit_code', models.IntegerField(null=True)),
                ('signal', models.IntegerField(null=True)),
                ('info', models.TextField(null=True)),
                ('error', models.TextField(null=True)),
                ('result', models.JSONField(null=True)),
                ('cancel_requested_at', models.DateTimeField(null=True)),
                ('cancel_requested_by', models.TextField(null=True)),
                ('run_at', models.DateTimeField(null=True)),
                ('unique_key', models.TextField(null=True)),
                ('unique_running', models.BooleanField(default=True)),
                ('retry_backoff', models.FloatField(null=True)),
                ('periodic', models.TextField(null=True)),
                ('period', models.DateTimeField(null=True)),
                ('complete', models.BooleanField(default=False)),
                ('completed_successfully', models.BooleanField(default=False)),
            ],
            options={
                'verbose_name': 'task',
                'db_table': '"pgbg"."task"',
                'ordering': ['-queued_at'],
                'managed': False,
            },
        ),
        migrations.CreateModel(
            name='TaskLink',
            fields=[
                ('pk', models.CompositePrimaryKey('task', 'kind', 'key', blank=True, editable=False, primary_key=True, serialize=False)),
                ('kind', models.TextField()),
                ('key', models.TextField()),
            ],
            options={
                'verbose_name': 'link',
                'db_table': '"pgbg"."task_link"',
                'managed': False,
            },
        ),
        migrations.CreateModel(
            name='TaskLog',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('at', models.DateTimeField()),
                ('level', models.TextField()),
                ('message', models.TextField()),
            ],
            options={
                'verbose_name': 'log line',
                'db_table': '"pgbg"."task_log"',
                'ordering': ['id'],
                'managed': False,
            },
        ),
        migrations.CreateModel(
            name='Worker',
            fields=[
                ('id', models.UUIDField(primary_key=True, serialize=False)),
                ('hostname', models.TextField()),
                ('pid', models.IntegerField()),
                ('concurrency', models.IntegerField()),
                ('started_at', models.DateTimeField()),
                ('heartbeat_at', models.DateTimeField()),
            ],
            options={
                'verbose_name': 'worker',
                'db_table': '"pgbg"."worker"',
                'ordering': ['hostname', 'pid'],
                'managed': False,
            },
        ),
    ]
