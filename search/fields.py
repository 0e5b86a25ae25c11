"""Declared metadata fields: the keys a knowledge base's documents carry, each with one type, and where filters read them.

A knowledge base declares its fields (`{"year": "number", "status": "text"}`): its owners do, and a
write of a document whose metadata holds a new key declares it with the type of its value. Searches
only read them: a filter names declared keys with values of their type, or is refused.

Payload layout. Knowledge bases of one embedding model share one Qdrant collection, and a payload
index belongs to the collection, so one index on `meta.year` would have one type for every knowledge
base in it. Each chunk therefore carries, beside its document's metadata as given (`meta`, shown in
results), a copy of each declared key's value under a payload object named after the key's type:
`meta_number.year`, `meta_text.status`, `meta_date.published`, `meta_bool.reviewed`. The index on
`meta_number.year` is a float index whichever knowledge base made it, so two knowledge bases that
declare `year` with different types never meet, one knowledge base's type never constrains another's,
and changing a type rewrites that key's copies in its own chunks' payload (no embedding) and makes
the index of the new type if the collection has none yet.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from qdrant_client import models

# Where a chunk's payload keeps its document's metadata as given; filters read the typed copies.
METADATA_FIELD = "meta"
TYPED_PREFIX = "meta_"


class FieldType(StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"
    BOOL = "bool"


FIELD_TYPES = tuple(FieldType)
INDEX_SCHEMAS: dict[FieldType, models.PayloadSchemaType] = {
    FieldType.TEXT: models.PayloadSchemaType.KEYWORD,
    FieldType.NUMBER: models.PayloadSchemaType.FLOAT,
    FieldType.DATE: models.PayloadSchemaType.DATETIME,
    FieldType.BOOL: models.PayloadSchemaType.BOOL,
}
TYPE_HINTS: dict[FieldType, str] = {
    FieldType.TEXT: "text",
    FieldType.NUMBER: "a number",
    FieldType.DATE: "an ISO 8601 date as text (2024-05-17)",
    FieldType.BOOL: "true or false",
}

Fields = Mapping[str, str]


def typed_object(field_type: str) -> str:
    """The payload object holding every declared key of this type: `meta_number`."""
    return f"{TYPED_PREFIX}{field_type}"


def field_path(key: str, field_type: str) -> str:
    """Where filters read a declared key of this type: `meta_number.year`."""
    return f"{typed_object(field_type)}.{key}"


def is_finite_number(value: Any) -> bool:
    """A JSON number Qdrant can compare: not a boolean, and within a double's range.

    Python reads `1e999` as inf but `1` followed by 400 zeros as an int too large for a float, which
    math.isfinite would meet with OverflowError; both are refused here.
    """
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -sys.float_info.max <= value <= sys.float_info.max
    return isinstance(value, float) and math.isfinite(value)


def parse_date(value: str) -> datetime | None:
    """An ISO 8601 date or date-time, in UTC when it names no zone (as Qdrant reads it), else None."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def infer_type(value: Any) -> FieldType:
    """The type a value declares its key with: text that reads as an ISO 8601 date is a date."""
    if isinstance(value, bool):
        return FieldType.BOOL
    if isinstance(value, (int, float)):
        return FieldType.NUMBER
    return FieldType.DATE if isinstance(value, str) and parse_date(value) is not None else FieldType.TEXT


def typed_value(field_type: str, value: Any) -> Any:
    """The value as a filter of the type compares it (a date as RFC 3339), or None when it is not of the type."""
    if field_type == FieldType.TEXT:
        return value if isinstance(value, str) else None
    if field_type == FieldType.NUMBER:
        return value if is_finite_number(value) else None
    if field_type == FieldType.BOOL:
        return value if isinstance(value, bool) else None
    if field_type == FieldType.DATE and isinstance(value, str) and (date := parse_date(value)) is not None:
        return date.isoformat()
    return None


def typed_payload(metadata: Mapping[str, Any], fields: Fields) -> dict[str, dict[str, Any]]:
    """The typed copies of a document's declared metadata, every type's object present (so a rewrite drops stale copies)."""
    payload: dict[str, dict[str, Any]] = {typed_object(t): {} for t in FIELD_TYPES}
    for key, value in metadata.items():
        field_type = fields.get(key)
        if field_type is not None and (typed := typed_value(field_type, value)) is not None:
            payload[typed_object(field_type)][key] = typed
    return payload


def index_schemas(fields: Fields) -> dict[str, models.PayloadSchemaType]:
    """The payload index each declared field needs, by payload path."""
    return {
        field_path(key, field_type): INDEX_SCHEMAS[FieldType(field_type)]
        for key, field_type in fields.items()
    }


def describe_fields(fields: Fields) -> str:
    """`status (text), year (number)`, or `none` for a knowledge base that declares no field."""
    return ", ".join(f"{key} ({fields[key]})" for key in sorted(fields)) or "none"


@dataclass(frozen=True)
class SearchedFields:
    """The metadata fields a search may filter on: those every knowledge base searched declares with one type.

    A key declared in one knowledge base searched but not another (or with another type there) is
    refused rather than read as "no match" in the others: the refusal names where it is declared.
    """

    #: Each knowledge base searched, by name, with its declared fields.
    per_kb: Mapping[str, Fields]

    @property
    def common(self) -> dict[str, FieldType]:
        kbs = list(self.per_kb.values())
        if not kbs:
            return {}
        return {
            key: FieldType(field_type)
            for key, field_type in kbs[0].items()
            if all(fields.get(key) == field_type for fields in kbs[1:])
        }

    def type_of(self, key: str) -> FieldType | None:
        return self.common.get(key)

    def describe(self) -> str:
        """What the knowledge bases searched declare, for a refusal's message."""
        if len(self.per_kb) == 1:
            name, fields = next(iter(self.per_kb.items()))
            return f"{name!r} declares: {describe_fields(fields)}."
        return f"The knowledge bases searched all declare: {describe_fields(self.common)}."

    def undeclared(self, key: str) -> str:
        declared = {name: fields[key] for name, fields in self.per_kb.items() if key in fields}
        if not declared:
            return f"{key!r} is not a declared metadata field."
        where = ", ".join(f"{name!r} as {field_type}" for name, field_type in sorted(declared.items()))
        missing = sorted(name for name in self.per_kb if name not in declared)
        also = f" and not in {', '.join(repr(name) for name in missing)}" if missing else ""
        return (
            f"{key!r} is declared in {where}{also}; a filter's keys must be declared with one type in every "
            "knowledge base searched (search them one at a time)."
        )
