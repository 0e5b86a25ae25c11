"""A document's tags and metadata checked before they are stored, and read from text (forms, command line)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from knowledge.errors import InvalidInput
from knowledge.services.text_fields import unstorable_character
from search.filters import KEY_PATTERN, MAX_TEXT

MAX_TAGS = 50
MAX_TAG_CHARS = 100
MAX_KEYS = 50
# A value longer than a filter may compare with could never be found by one.
MAX_VALUE_CHARS = MAX_TEXT
# Whole numbers Qdrant stores as they are (a 64-bit integer); a larger one would fail the document's indexing.
MIN_INTEGER, MAX_INTEGER = -(2**63), 2**63 - 1

Metadata = dict[str, str | int | float | bool]


def _refuse(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", detail={"field": field})


def clean_tags(tags: Any) -> list[str]:
    """Tags as stored: trimmed, each once, in the order given."""
    if isinstance(tags, (str, bytes)) or not isinstance(tags, Iterable):
        raise _refuse("tags", "give a list of tags.")
    cleaned: list[str] = []
    for position, tag in enumerate(tags):
        field = f"tags[{position}]"
        if not isinstance(tag, str):
            raise _refuse(field, f"a tag is text, not {tag!r}.")
        tag = tag.strip()
        if not tag or len(tag) > MAX_TAG_CHARS:
            raise _refuse(field, f"a tag has 1 to {MAX_TAG_CHARS} characters.")
        if problem := unstorable_character(tag):
            raise _refuse(field, f"a tag may not hold {problem}.")
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise _refuse("tags", f"a document has at most {MAX_TAGS} tags, not {len(cleaned)}.")
    return cleaned


def clean_metadata(metadata: Any) -> Metadata:
    """Metadata as stored: a flat object of text, numbers and booleans (dates as ISO 8601 text)."""
    if not isinstance(metadata, Mapping):
        raise _refuse("metadata", "give an object of keys and values, e.g. {\"year\": 2024}.")
    if len(metadata) > MAX_KEYS:
        raise _refuse("metadata", f"a document has at most {MAX_KEYS} metadata keys, not {len(metadata)}.")
    cleaned: Metadata = {}
    for key, value in metadata.items():
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise _refuse(
                f"metadata.{key}", "a key is a letter or _, then up to 63 letters, digits or _."
            )
        field = f"metadata.{key}"
        if isinstance(value, str):
            if len(value) > MAX_VALUE_CHARS:
                raise _refuse(field, f"text has at most {MAX_VALUE_CHARS} characters.")
            if problem := unstorable_character(value):
                raise _refuse(field, f"text may not hold {problem}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise _refuse(field, f"{value} is not a number that can be stored.")
        elif (
            isinstance(value, int) and not isinstance(value, bool) and not MIN_INTEGER <= value <= MAX_INTEGER
        ):
            raise _refuse(field, "whole numbers lie between -2^63 and 2^63-1; send a larger one as text.")
        elif not isinstance(value, (bool, int, float)):
            raise _refuse(
                field,
                f"values are text, numbers, true/false or ISO 8601 dates as text, not {type(value).__name__};"
                " lists and objects cannot be filtered on, so they are not kept.",
            )
        cleaned[key] = value
    return cleaned


def labels_fingerprint(tags: Iterable[str], metadata: Mapping[str, Any]) -> str:
    """Equal for equal labels only: unlike ==, it tells 1 from 1.0 and from true."""
    return json.dumps([list(tags), metadata], sort_keys=True)


def parse_metadata_value(text: str) -> str | int | float | bool:
    """`2024` is a number, `true` a boolean, `"2024"` text, and so is what JSON cannot read (a date)."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (str, int, float, bool)) else text


def parse_metadata_pairs(pairs: Iterable[str]) -> Metadata:
    """`key=value` pairs (the ingest command's `--meta`, one line each in the admin) as metadata."""
    metadata: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _refuse("metadata", f"{pair!r} is not key=value.")
        metadata[key.strip()] = parse_metadata_value(value.strip())
    return clean_metadata(metadata)


def parse_metadata_json(text: str) -> Metadata:
    """Metadata sent as a JSON object in one text field (a multipart upload's `metadata`)."""
    try:
        metadata = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: JSON nested deeper than the parser recurses, which metadata (flat) never is.
        raise _refuse(
            "metadata", 'send a flat JSON object, e.g. {"year": 2024, "status": "draft"}.'
        ) from None
    return clean_metadata(metadata)


def format_metadata_pairs(metadata: Mapping[str, Any]) -> str:
    """parse_metadata_pairs' inverse, one pair a line: text that would read as another type is quoted."""
    lines = []
    for key, value in metadata.items():
        shown = value if isinstance(value, str) else json.dumps(value)
        if isinstance(value, str) and parse_metadata_value(value) != value:
            shown = json.dumps(value)
        lines.append(f"{key}={shown}")
    return "\n".join(lines)
