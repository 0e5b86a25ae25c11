from django.db import migrations, models

import knowledge.models


class Migration(migrations.Migration):
    """Knowledge bases that exist already keep collections without a keyword vector: their setting stays empty
    (search falls back to semantic and says `reindex --recreate` enables hybrid); new ones get the defaults."""

    dependencies = [
        ("knowledge", "0003_owner_optional"),
    ]

    operations = [
        migrations.AddField(
            model_name="knowledgebase",
            name="keyword_settings",
            field=models.JSONField(blank=True, editable=False, null=True),
        ),
        migrations.AlterField(
            model_name="knowledgebase",
            name="keyword_settings",
            field=models.JSONField(
                blank=True,
                default=knowledge.models.default_keyword_settings,
                editable=False,
                help_text="How text becomes BM25 keywords (language, stemming, stopwords, k, b, avg_len). Empty: "
                "the KB's collection predates keyword search, and `reindex --recreate` enables it.",
                null=True,
            ),
        ),
    ]
