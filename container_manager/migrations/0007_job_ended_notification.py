from django.db import migrations

import container_manager.notify


class Migration(migrations.Migration):
    """On PostgreSQL: NOTIFY when a job ends, so callers waiting on it wake at once."""

    dependencies = [
        ("container_manager", "0006_attempt_execution_index"),
    ]

    operations = [
        migrations.RunPython(
            container_manager.notify.install_ended_trigger,
            container_manager.notify.drop_ended_trigger,
        ),
    ]
