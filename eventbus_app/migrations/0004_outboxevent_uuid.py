"""OutboxEvent.uuid: the event's global identity (idempotency keys, relays).

Added nullable, filled for existing rows (each its own random UUID, made by the database in
one UPDATE), then made unique, indexed and defaulted. A table of millions of events is
rewritten by the UPDATE: run this migration in a quiet hour.
"""

import uuid

from django.db import migrations, models

import eventbus_app.models


def backfill(apps, schema_editor):
    OutboxEvent = apps.get_model("eventbus_app", "OutboxEvent")
    OutboxEvent.objects.using(schema_editor.connection.alias).filter(uuid__isnull=True).update(
        uuid=eventbus_app.models.RandomUUID()
    )


class Migration(migrations.Migration):

    dependencies = [
        ("eventbus_app", "0003_delivery_start_marker"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboxevent",
            name="uuid",
            field=models.UUIDField(editable=False, null=True, verbose_name="uuid"),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="outboxevent",
            name="uuid",
            field=models.UUIDField(
                db_default=eventbus_app.models.RandomUUID(),
                default=uuid.uuid4,
                editable=False,
                help_text="Globally unique: the event's identity across databases and services (idempotency keys, relays). The id is unique only within one database.",
                unique=True,
                verbose_name="uuid",
            ),
        ),
    ]
