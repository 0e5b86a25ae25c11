"""Forms of the owners' and editors' pages: a knowledge base's settings, its members, a document's labels, filters."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.core.validators import MaxValueValidator

from knowledge.forms import MetadataField, MetadataFieldsField, TagsField
from knowledge.models import KnowledgeBase, Role
from knowledge.services.document_metadata import MAX_TAG_CHARS
from search.embedding import embedding_service
from search.embedding.registry import embedders

DOCUMENT_FILTERS = [
    ("", "Any status"),
    ("pending", "Waiting"),
    ("processing", "Being indexed"),
    ("ready", "Ready"),
    ("failed", "Failed"),
    ("archived", "Archived"),
]


class KnowledgeBaseSettingsForm(forms.Form):
    """Name, description and chunk settings: the form that creates a KB and the one that changes it."""

    name = forms.CharField(max_length=KnowledgeBase._meta.get_field("name").max_length)
    description = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What it holds and for whom: members see it on its page.",
    )
    chunk_size = forms.IntegerField(label="Chunk size (tokens)", min_value=1)
    chunk_overlap = forms.IntegerField(label="Chunk overlap (tokens)", min_value=0)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        size, overlap = settings.CHUNKING["SIZE"], settings.CHUNKING["OVERLAP"]
        most = embedding_service.embedder.max_chunk_tokens
        self.fields["chunk_size"].validators.append(MaxValueValidator(most))
        self.fields["chunk_size"].widget.attrs["max"] = most
        self.fields["chunk_size"].help_text = (
            f"How much text each search result holds, in the embedding model's tokens (a token is a word or part "
            f"of one; 100 tokens are about 75 English words). The default, {size}, is a paragraph or two: smaller "
            f"chunks find short facts more exactly, larger ones keep more context. At most {most}, all the model reads."
        )
        self.fields["chunk_overlap"].help_text = (
            f"Tokens each chunk repeats from the one before, so a sentence cut at a chunk's end is still found "
            f"whole. The default, {overlap}, is a fifth of the default size; it must stay below the chunk size."
        )
        self.initial.setdefault("chunk_size", size)
        self.initial.setdefault("chunk_overlap", overlap)


class NewKnowledgeBaseForm(KnowledgeBaseSettingsForm):
    """The settings of a new KB, and, where the site has more than one embedder, the model that embeds it."""

    embedding_model = forms.ChoiceField(
        label="Embedding model",
        help_text="The model that embeds its documents and its searches. An administrator can move it to "
        "another later (its documents are then embedded again).",
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        names = embedders.names()
        if len(names) == 1:
            del self.fields["embedding_model"]  # nothing to choose: the built-in model
        else:
            self.fields["embedding_model"].choices = [(name, embedders.describe(name)) for name in names]
            self.initial.setdefault("embedding_model", embedders.default.model_id)


class MetadataFieldsForm(forms.Form):
    declared_fields = MetadataFieldsField(label="Metadata fields")


class DeleteKnowledgeBaseForm(forms.Form):
    confirm_name = forms.CharField(label="Type the knowledge base's name to confirm", max_length=200)


class AddMemberForm(forms.Form):
    user = forms.CharField(
        label="User name or e-mail", max_length=254, help_text="They need an account on this site already."
    )
    role = forms.ChoiceField(choices=Role.choices, initial=Role.READER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class DocumentLabelsForm(forms.Form):
    tags = TagsField()
    metadata = MetadataField()


class DocumentFilterForm(forms.Form):
    status = forms.ChoiceField(choices=DOCUMENT_FILTERS, required=False)
    tag = forms.CharField(required=False, max_length=MAX_TAG_CHARS, strip=True)
    page = forms.IntegerField(required=False, min_value=1, max_value=10**6)
