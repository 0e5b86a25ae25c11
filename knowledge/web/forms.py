"""The members' search form: the admin's trial search with a choice of knowledge bases, archived text left out."""

from __future__ import annotations

from django import forms

from knowledge.forms import SearchForm
from knowledge.models import KnowledgeBase
from search.services.search import MAX_LIMIT

MORE_STEP = 10


class MemberSearchForm(SearchForm):
    kb = forms.MultipleChoiceField(
        label="Knowledge bases",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every knowledge base you may read.",
    )
    # Members search what is live; archived text stays an editor's business in the admin.
    include_archived = None
    per_document = forms.BooleanField(
        required=False,
        label="One result per document",
        help_text="Each document once, with its other best passages below its best one.",
    )

    def __init__(self, *args, knowledge_bases: list[KnowledgeBase], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["kb"].choices = [(str(kb.pk), kb.name) for kb in knowledge_bases]
        self.fields["mode"].label = "Search mode"
        self.fields["limit"].label = "Number of results"
        self.fields["limit"].widget = forms.HiddenInput()

    def options(self, name: str) -> list[tuple[str, str, bool]]:
        """(value, label, chosen) for each choice of a field: the template writes the controls out itself,
        since Django's widget templates cost more than the rest of the page (one template per checkbox)."""
        value = self[name].value()
        chosen = {str(item) for item in (value if isinstance(value, list | tuple) else [value]) if item is not None}
        return [(str(choice), label, str(choice) in chosen) for choice, label in self.fields[name].choices]

    @property
    def query(self) -> str:
        return self["q"].value() or ""

    @property
    def more_limit(self) -> int | None:
        """The limit of the "show more" link, or None when the most results are already asked for."""
        limit = self.cleaned_data["limit"]
        return min(limit + MORE_STEP, MAX_LIMIT) if limit < MAX_LIMIT else None
