from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0005_document_metadata_pages_token_expiry"),
    ]

    operations = [
        migrations.AddField(
            model_name="knowledgebase",
            name="index_generation",
            field=models.PositiveIntegerField(
                default=1,
                editable=False,
                help_text="The generation of the KB's points that searches read; a rebuild writes the next one, "
                "then switches this in one update.",
            ),
        ),
    ]
