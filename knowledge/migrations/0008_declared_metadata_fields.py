"""Knowledge bases declare their metadata fields; an existing one declares those its documents already carry.

The types are inferred here from the values (a frozen copy of search.fields.infer_type, so this
migration reads the same whatever later code does): a key whose values are all of one type gets it;
text and dates mixed are text; other mixes take the type most values have, and the others are left
out of filters until a document is written again. `manage.py upgrade_fields` then writes the typed
copies filters read into each knowledge base's chunks (no embedding).
"""

from collections import Counter
from datetime import datetime

from django.db import migrations, models


def _infer_type(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return "text"
        return "date"
    return None


def declared_fields(metadatas):
    """Each key of these documents' metadata with the type its values have."""
    seen: dict[str, Counter] = {}
    for metadata in metadatas:
        for key, value in (metadata or {}).items():
            field_type = _infer_type(value)
            if field_type is not None:
                seen.setdefault(key, Counter())[field_type] += 1
    fields = {}
    for key, types in sorted(seen.items()):
        if set(types) == {"text", "date"}:
            fields[key] = "text"
        else:
            fields[key] = types.most_common(1)[0][0]
    return fields


def declare_carried_fields(apps, schema_editor):
    KnowledgeBase = apps.get_model("knowledge", "KnowledgeBase")
    Document = apps.get_model("knowledge", "Document")
    for kb in KnowledgeBase.objects.all().only("id"):
        metadatas = Document.objects.filter(knowledge_base=kb).values_list("metadata", flat=True).iterator()
        fields = declared_fields(metadatas)
        if fields:
            KnowledgeBase.objects.filter(pk=kb.pk).update(metadata_fields=fields)


class Migration(migrations.Migration):
    dependencies = [
        ("knowledge", "0007_tenants_index_generation"),
    ]

    operations = [
        migrations.AddField(
            model_name="knowledgebase",
            name="metadata_fields",
            field=models.JSONField(
                blank=True,
                default=dict,
                editable=False,
                help_text="The metadata keys its documents carry and searches filter on, each with its type (text, "
                'number, date or bool), e.g. {"year": "number"}. Owners declare them; a document written with a new '
                "key declares it.",
            ),
        ),
        migrations.RunPython(declare_carried_fields, migrations.RunPython.noop),
    ]
