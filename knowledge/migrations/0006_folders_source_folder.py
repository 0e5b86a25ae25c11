from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0005_document_metadata_pages_token_expiry"),
    ]

    operations = [
        migrations.AddField(
            model_name="document",
            name="source_folder",
            field=models.CharField(
                blank=True,
                help_text="The folder `manage.py sync_folder` keeps it in step with (its source name is its path there).",
                max_length=1000,
            ),
        ),
    ]
