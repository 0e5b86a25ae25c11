"""Metadata filters: the JSON a search's `filter` takes, checked against the declared fields and compiled to one Qdrant `models.Filter`.

Grammar (README, "Tags, metadata and filters"): a filter is `{"and": [filter, …]}`, `{"or": [filter, …]}`,
a tag condition `{"tag": {"any"|"all"|"none": ["a", …]}}`, or a key condition
`{"key": "year", "<op>": value, …}` with op among eq, ne, in, not_in, gt, gte, lt, lte, exists (several
ops in one condition must all hold). A key must be a declared metadata field (search.fields) of every
knowledge base searched, and its values of the field's type: text and bool fields take eq, ne, in,
not_in and exists; number and date fields also compare. `ne` and `not_in` also match documents without
the key. Every refusal names the part at fault by its path (`filter.and[1].or[0].gte`), and one about a
key lists the fields declared. Compiling never creates an index: writes and owners do (search.fields).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qdrant_client import models

from search.errors import InvalidFilter
from search.fields import (
    METADATA_FIELD,
    TYPE_HINTS,
    FieldType,
    SearchedFields,
    field_path,
    is_finite_number,
    parse_date,
)

__all__ = ["METADATA_FIELD", "TAGS_FIELD", "CompiledFilter", "SearchedFields", "compile_filter"]

# Where a chunk's payload keeps its document's labels (always a keyword index; not declared).
TAGS_FIELD = "tags"

# A metadata key is one plain payload key: no dots or brackets, which Qdrant reads as a path.
KEY_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_DEPTH = 6
MAX_CONDITIONS = 50
MAX_VALUES = 100
MAX_TEXT = 500

COMPARISONS = ("gt", "gte", "lt", "lte")
OPERATORS = ("eq", "ne", "in", "not_in", *COMPARISONS, "exists")
TAG_OPERATORS = ("any", "all", "none")

Scalar = str | int | float | bool

# Lone surrogates (JSON's "\ud800") are no text Qdrant can encode.
SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass
class CompiledFilter:
    """The Qdrant filter a search applies."""

    filter: models.Filter


class _Compiler:
    def __init__(self, fields: SearchedFields) -> None:
        self.conditions = 0
        self.fields = fields

    def fail(self, path: str, message: str, **detail: Any) -> InvalidFilter:
        return InvalidFilter(
            f"{path}: {message} See the search API's `filter` description.", detail={"path": path, **detail}
        )

    def field_fail(self, path: str, message: str) -> InvalidFilter:
        """A refusal about a key: it lists the fields the knowledge bases searched declare."""
        return self.fail(
            path,
            f"{message} {self.fields.describe()}",
            fields={key: str(field_type) for key, field_type in sorted(self.fields.common.items())},
        )

    def node(self, spec: Any, path: str, depth: int) -> models.Filter:
        if not isinstance(spec, Mapping):
            raise self.fail(path, "a filter is a JSON object with `and`, `or`, `tag` or `key`.")
        if depth > MAX_DEPTH:
            raise self.fail(path, f"filters nest at most {MAX_DEPTH} deep.")
        kinds = [k for k in ("and", "or", "tag", "key") if k in spec]
        if len(kinds) != 1:
            raise self.fail(path, "a filter holds exactly one of `and`, `or`, `tag`, `key`.")
        kind = kinds[0]
        if kind in ("and", "or"):
            self.only(spec, {kind}, path)
            parts = spec[kind]
            if not isinstance(parts, list) or not parts:
                raise self.fail(f"{path}.{kind}", "needs a non-empty list of filters.")
            compiled = [self.node(part, f"{path}.{kind}[{i}]", depth + 1) for i, part in enumerate(parts)]
            return models.Filter(must=compiled) if kind == "and" else models.Filter(should=compiled)
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise self.fail(path, f"a filter holds at most {MAX_CONDITIONS} conditions.")
        if kind == "tag":
            self.only(spec, {"tag"}, path)
            return self.tag(spec["tag"], f"{path}.tag")
        return self.key(spec, path)

    def only(self, spec: Mapping, allowed: set[str], path: str) -> None:
        extra = sorted(str(k) for k in spec if k not in allowed)
        if extra:
            raise self.fail(f"{path}.{extra[0]}", f"unknown field; expected {', '.join(sorted(allowed))}.")

    def tag(self, spec: Any, path: str) -> models.Filter:
        if not isinstance(spec, Mapping) or not spec:
            raise self.fail(path, f"needs an object with {', '.join(TAG_OPERATORS)}.")
        self.only(spec, set(TAG_OPERATORS), path)
        must: list[models.Condition] = []
        must_not: list[models.Condition] = []
        for op, values in spec.items():
            tags = self.values(values, f"{path}.{op}", strings_only=True)
            if op == "any":
                must.append(_any(TAGS_FIELD, tags))
            elif op == "all":
                must.extend(_match(TAGS_FIELD, tag) for tag in tags)
            else:
                must_not.append(_any(TAGS_FIELD, tags))
        return models.Filter(must=must or None, must_not=must_not or None)

    def key(self, spec: Mapping, path: str) -> models.Filter:
        key = spec["key"]
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise self.fail(f"{path}.key", "a key is a letter or _ then up to 63 letters, digits or _.")
        self.only(spec, {"key", *OPERATORS}, path)
        ops = [op for op in OPERATORS if op in spec]
        if not ops:
            raise self.fail(path, f"name an operator: {', '.join(OPERATORS)}.")
        field_type = self.fields.type_of(key)
        if field_type is None:
            raise self.field_fail(f"{path}.key", self.fields.undeclared(key))
        target = field_path(key, field_type)
        must: list[models.Condition] = []
        must_not: list[models.Condition] = []
        bounds: dict[str, Any] = {}
        for op in ops:
            value, where = spec[op], f"{path}.{op}"
            if op == "exists":
                if not isinstance(value, bool):
                    raise self.fail(where, "is true or false.")
                empty = models.IsEmptyCondition(is_empty=models.PayloadField(key=target))
                (must_not if value else must).append(empty)
            elif op in ("eq", "ne"):
                condition = self.equals(target, field_type, self.typed(key, field_type, value, where))
                (must if op == "eq" else must_not).append(condition)
            elif op in ("in", "not_in"):
                values = [
                    self.typed(key, field_type, v, f"{where}[{i}]")
                    for i, v in enumerate(self.values(value, where))
                ]
                condition = self.one_of(target, field_type, values)
                (must if op == "in" else must_not).append(condition)
            else:
                if field_type not in (FieldType.NUMBER, FieldType.DATE):
                    raise self.field_fail(
                        where, f"{key!r} is a {field_type} field: it takes eq, ne, in, not_in and exists."
                    )
                bounds[op] = self.typed(key, field_type, value, where)
        if bounds:
            range_type = models.DatetimeRange if field_type == FieldType.DATE else models.Range
            must.append(models.FieldCondition(key=target, range=range_type(**bounds)))
        return models.Filter(must=must or None, must_not=must_not or None)

    def scalar(self, value: Any, path: str) -> Scalar:
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise self.fail(path, f"text values are at most {MAX_TEXT} characters.")
            if SURROGATE.search(value):
                raise self.fail(path, "text may not hold a lone surrogate (\\ud800 to \\udfff); send UTF-8.")
            return value
        if isinstance(value, bool) or is_finite_number(value):
            return value
        raise self.fail(path, f"takes a string, a number within ±1.8e308 or a boolean, not {_shown(value)}.")

    def typed(self, key: str, field_type: FieldType, value: Any, path: str) -> Scalar | datetime:
        """The value as the field's type compares it; a value of another type is refused, never "no match"."""
        value = self.scalar(value, path)
        if field_type == FieldType.TEXT and isinstance(value, str):
            return value
        if field_type == FieldType.BOOL and isinstance(value, bool):
            return value
        if field_type == FieldType.NUMBER and is_finite_number(value):
            return value
        if (
            field_type == FieldType.DATE
            and isinstance(value, str)
            and (date := parse_date(value)) is not None
        ):
            return date
        raise self.field_fail(
            path, f"{key!r} is a {field_type} field: give {TYPE_HINTS[field_type]}, not {_shown(value)}."
        )

    def values(self, values: Any, path: str, *, strings_only: bool = False) -> list[Any]:
        if not isinstance(values, list) or not values:
            raise self.fail(path, "needs a non-empty list.")
        if len(values) > MAX_VALUES:
            raise self.fail(path, f"lists hold at most {MAX_VALUES} values.")
        checked = [self.scalar(v, f"{path}[{i}]") for i, v in enumerate(values)]
        if strings_only:
            for i, v in enumerate(checked):
                if not isinstance(v, str):
                    raise self.fail(f"{path}[{i}]", f"tags are strings, not {v!r}.")
        return checked

    def equals(self, target: str, field_type: FieldType, value: Any) -> models.Condition:
        if field_type in (FieldType.TEXT, FieldType.BOOL):
            return _match(target, value)
        if field_type == FieldType.DATE:
            return models.FieldCondition(key=target, range=models.DatetimeRange(gte=value, lte=value))
        # Qdrant matches exact values of text, whole numbers and booleans only; a number, whole or
        # not, is equal when it lies in [value, value], which holds for integer and float payloads alike.
        return models.FieldCondition(key=target, range=models.Range(gte=value, lte=value))

    def one_of(self, target: str, field_type: FieldType, values: list[Any]) -> models.Condition:
        if field_type == FieldType.TEXT:
            return _any(target, values)
        return models.Filter(should=[self.equals(target, field_type, v) for v in values])


def _shown(value: Any) -> str:
    # A 400-digit number would fill the message (and Python refuses to print one of over 4300 digits).
    if isinstance(value, int) and not isinstance(value, bool) and not is_finite_number(value):
        return "a number past ±1.8e308"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _match(key: str, value: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _any(key: str, values: list[Any]) -> models.FieldCondition:
    return models.FieldCondition(key=key, match=models.MatchAny(any=values))


def compile_filter(spec: Any, *, fields: SearchedFields, path: str = "filter") -> CompiledFilter:
    """Check a filter's JSON against the fields declared and compile it; InvalidFilter names the first part at fault."""
    return CompiledFilter(filter=_Compiler(fields).node(spec, path, 1))
