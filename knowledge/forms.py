"""Forms of the admin pages: a knowledge base, an upload of files, a document's labels, a trial search."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from knowledge.errors import InvalidInput
from knowledge.models import Document, KnowledgeBase
from knowledge.services.document_metadata import (
    clean_tags,
    format_metadata_pairs,
    labels_fingerprint,
    parse_metadata_pairs,
)
from knowledge.services.knowledge_bases import MIN_CHUNK_TOKENS, KnowledgeBaseService
from knowledge.services.metadata_fields import (
    MetadataFieldService,
    describe_fields,
    format_field_lines,
    misfits,
    parse_field_lines,
)
from search.embedding.registry import embedders
from search.errors import KbsiteError
from search.services.search import MAX_LIMIT, MAX_QUERY_CHARS


class MetadataFieldsField(forms.CharField):
    """A knowledge base's declared metadata fields typed as `key: type` lines."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault(
            "help_text",
            "One key: type a line, e.g. year: number, status: text, published: date, reviewed: bool. Searches "
            "filter on these keys only. A document uploaded with a new key declares it; changing a type rewrites "
            "the chunks' filter values (no embedding), once every document's value is of the new type.",
        )
        super().__init__(required=False, widget=forms.Textarea(attrs={"rows": 5}), **kwargs)

    def prepare_value(self, value):
        return format_field_lines(value) if isinstance(value, dict) else value

    def to_python(self, value):
        if isinstance(value, dict):
            return value
        try:
            return parse_field_lines(value or "")
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from exc


class KnowledgeBaseForm(forms.ModelForm):
    # Not the model's field (which is not editable): the owner's change goes through MetadataFieldService.
    declared_fields = MetadataFieldsField(label="Metadata fields")
    # Chosen once, when the KB is made: moving a KB to another model rebuilds it (`reindex --recreate --model`).
    embedder = forms.ChoiceField(
        label="Embedding model",
        required=False,
        help_text="The model that embeds this knowledge base's chunks and its searches. To change it later, "
        "run `manage.py reindex --kb <slug> --recreate --model <name>`.",
    )

    class Meta:
        model = KnowledgeBase
        fields = ["name", "slug", "description", "owner", "chunk_size", "chunk_overlap"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["embedder"].choices = [(name, embedders.describe(name)) for name in embedders.names()]
        self.fields["embedder"].initial = embedders.default.model_id
        self.initial.setdefault("declared_fields", self.instance.metadata_fields or {})

    def clean_declared_fields(self):
        fields = self.cleaned_data["declared_fields"]
        if self.instance.pk is not None and "declared_fields" in self.changed_data:
            try:
                MetadataFieldService().check_change(kb=self.instance, fields=fields)
            except InvalidInput as exc:
                raise forms.ValidationError(exc.message) from exc
        return fields

    def clean(self):
        cleaned = super().clean()
        creating = self.instance._state.adding
        model = (cleaned.get("embedder") or embedders.default.model_id) if creating else self.instance.embedding_model
        candidate = KnowledgeBase(
            chunk_size=cleaned.get("chunk_size") or 0,
            chunk_overlap=cleaned.get("chunk_overlap") or 0,
            embedding_model=model,
        )
        try:
            if creating:
                # An endpoint configured without its vector size is asked for it now, not on the first upload.
                candidate.vector_size = embedders.service(model).dimensions
            KnowledgeBaseService.validate_chunking(candidate)
        except KbsiteError as exc:
            raise forms.ValidationError(exc.message) from exc
        return cleaned


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    widget = MultipleFileInput

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, (list, tuple)):
            return [single(item, initial) for item in data]
        return [single(data, initial)]


class TagsField(forms.CharField):
    """Tags typed as one line, separated by commas."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("help_text", "Separated by commas, e.g. policy, hr. Searches can filter on them.")
        super().__init__(required=False, **kwargs)

    def prepare_value(self, value):
        return ", ".join(value) if isinstance(value, list) else value

    def to_python(self, value) -> list[str]:
        text = super().to_python(value)
        try:
            return clean_tags([tag for tag in text.split(",") if tag.strip()])
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from exc

    def has_changed(self, initial, data) -> bool:
        try:
            return self.to_python(data) != (initial or [])
        except forms.ValidationError:
            return True


class MetadataField(forms.CharField):
    """Metadata typed as key=value lines: 2024 is a number, true a boolean, "2024" text, a date stays text."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault(
            "help_text",
            'One key=value a line, e.g. year=2024, status=draft, reviewed=true, published=2024-05-17; '
            'quote a number to keep it text ("0042"). Searches can filter on them.',
        )
        super().__init__(required=False, widget=forms.Textarea(attrs={"rows": 4}), **kwargs)

    def prepare_value(self, value):
        return format_metadata_pairs(value) if isinstance(value, dict) else value

    def to_python(self, value) -> dict:
        text = super().to_python(value)
        try:
            return parse_metadata_pairs(line for line in text.splitlines() if line.strip())
        except InvalidInput as exc:
            raise forms.ValidationError(exc.message) from exc

    def has_changed(self, initial, data) -> bool:
        try:
            return labels_fingerprint([], self.to_python(data)) != labels_fingerprint([], initial or {})
        except forms.ValidationError:
            return True


class DocumentForm(forms.ModelForm):
    """A document's editable parts: its title and its labels (the rest is the indexing's record)."""

    tags = TagsField()
    metadata = MetadataField()

    class Meta:
        model = Document
        fields = ["title", "tags", "metadata"]

    def clean_metadata(self):
        metadata = self.cleaned_data["metadata"]
        if self.instance.pk is not None and metadata:
            declared = self.instance.knowledge_base.metadata_fields or {}
            if wrong := misfits(metadata, declared):
                key, field_type = next(iter(wrong.items()))
                raise forms.ValidationError(
                    f"{key} is a {field_type} field of this knowledge base, not {metadata[key]!r}. "
                    f"Its fields: {describe_fields(declared)}."
                )
        return metadata


class UploadForm(forms.Form):
    knowledge_base = forms.ModelChoiceField(queryset=KnowledgeBase.objects.none())
    files = MultipleFileField(help_text=".txt, .md, .html, .pdf or .docx; several at once if you like.")
    tags = TagsField(help_text="For every file uploaded, separated by commas. Searches can filter on them.")
    metadata = MetadataField()
    # Only "Preview chunks" reads these: uploads are always chunked with the knowledge base's settings.
    preview_chunk_size = forms.IntegerField(
        label="Preview chunk size",
        min_value=MIN_CHUNK_TOKENS,
        required=False,
        help_text="Tokens per chunk to preview with; empty: the knowledge base's. Uploads always use the "
        "knowledge base's settings.",
    )
    preview_chunk_overlap = forms.IntegerField(
        label="Preview chunk overlap",
        min_value=0,
        required=False,
        help_text="Tokens shared with the previous chunk, to preview with; empty: the knowledge base's.",
    )

    def __init__(self, *args, knowledge_bases, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["knowledge_base"].queryset = knowledge_bases
        # In the unit that fits: a limit under 1 MB read "0 MB" when it was given in whole megabytes.
        self.max_upload_size = filesizeformat(int(settings.INGESTION["MAX_UPLOAD_BYTES"]))

    def clean_files(self):
        files = self.cleaned_data["files"]
        limit = int(settings.INGESTION["MAX_UPLOAD_BYTES"])
        too_large = [f"{f.name} ({filesizeformat(f.size)})" for f in files if f.size > limit]
        if too_large:
            raise forms.ValidationError(
                f"Files may be at most {self.max_upload_size} each; these are larger: {', '.join(too_large)}."
            )
        return files


class SearchForm(forms.Form):
    q = forms.CharField(
        label="Search",
        max_length=MAX_QUERY_CHARS,
        strip=True,
        error_messages={
            "required": "Type some words to search for.",
            "max_length": "The query has %(show_value)d characters; the most is %(limit_value)d. Shorten it.",
        },
    )
    limit = forms.IntegerField(min_value=1, max_value=MAX_LIMIT, initial=10, required=False)
    mode = forms.ChoiceField(
        choices=[("hybrid", "hybrid: meaning and keywords"), ("semantic", "semantic: meaning"), ("keyword", "keyword: words")],
        initial="hybrid",
        required=False,
    )
    include_archived = forms.BooleanField(required=False, label="include archived")

    def clean_limit(self) -> int:
        return self.cleaned_data.get("limit") or 10
