from django.db import migrations, models


class Migration(migrations.Migration):
    """Documents get tags, metadata and page starts (existing ones: none); API tokens may expire."""

    dependencies = [
        ("knowledge", "0004_keyword_settings"),
    ]

    operations = [
        migrations.AddField(
            model_name="document",
            name="tags",
            field=models.JSONField(
                blank=True, default=list, help_text='Labels to filter searches by, e.g. ["policy", "hr"].'
            ),
        ),
        migrations.AddField(
            model_name="document",
            name="metadata",
            field=models.JSONField(
                blank=True,
                default=dict,
                help_text="Flat key/value facts to filter searches by: strings, numbers, booleans, dates (ISO 8601).",
            ),
        ),
        migrations.AddField(
            model_name="document",
            name="page_starts",
            field=models.JSONField(
                blank=True,
                editable=False,
                null=True,
                help_text="Where each page begins in the text (character offsets, page 1 first); empty when the "
                "source has no pages.",
            ),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(blank=True, null=True, help_text="Answers 401 from then on. Empty: never."),
        ),
    ]
