from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0006_folders_source_folder"),
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
