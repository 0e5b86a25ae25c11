"""Metadata filters: the JSON a search's `filter` takes, checked and compiled to one Qdrant `models.Filter`.

Grammar (README, "Tags, metadata and filters"): a filter is `{"and": [filter, …]}`, `{"or": [filter, …]}`,
a tag condition `{"tag": {"any"|"all"|"none": ["a", …]}}`, or a key condition
`{"key": "year", "<op>": value, …}` with op among eq, ne, in, not_in, gt, gte, lt, lte, exists (several
ops in one condition must all hold). Comparisons take a number, or an ISO 8601 date compared as a date.
`ne` and `not_in` also match documents without the key. Every refusal names the part at fault by its
path (`filter.and[1].or[0].gte`).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from qdrant_client import models

from search.errors import InvalidFilter

# Where a chunk's payload keeps its document's labels and metadata.
TAGS_FIELD = "tags"
METADATA_FIELD = "meta"

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


def metadata_path(key: str) -> str:
    return f"{METADATA_FIELD}.{key}"


def parse_date(value: str) -> datetime | None:
    """An ISO 8601 date or date-time, in UTC when it names no zone (as Qdrant reads it), else None."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass
class CompiledFilter:
    """The Qdrant filter, and the payload index each field it reads would want (by payload path)."""

    filter: models.Filter
    index_hints: dict[str, models.PayloadSchemaType] = field(default_factory=dict)


class _Compiler:
    def __init__(self) -> None:
        self.conditions = 0
        self.hints: dict[str, models.PayloadSchemaType] = {}

    def fail(self, path: str, message: str) -> InvalidFilter:
        return InvalidFilter(
            f"{path}: {message} See the search API's `filter` description.", detail={"path": path}
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
        self.hint(TAGS_FIELD, models.PayloadSchemaType.KEYWORD)
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
        target = metadata_path(key)
        must: list[models.Condition] = []
        must_not: list[models.Condition] = []
        bounds: dict[str, float | datetime] = {}
        for op in ops:
            value, where = spec[op], f"{path}.{op}"
            if op == "exists":
                if not isinstance(value, bool):
                    raise self.fail(where, "is true or false.")
                empty = models.IsEmptyCondition(is_empty=models.PayloadField(key=target))
                (must_not if value else must).append(empty)
            elif op in ("eq", "ne"):
                condition = self.equals(target, self.scalar(value, where))
                (must if op == "eq" else must_not).append(condition)
            elif op in ("in", "not_in"):
                condition = self.one_of(target, self.values(value, where))
                (must if op == "in" else must_not).append(condition)
            else:
                bounds[op] = self.bound(value, where)
        if bounds:
            must.append(self.range(target, bounds, path))
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

    def bound(self, value: Any, path: str) -> float | datetime:
        if is_finite_number(value):
            return value
        if isinstance(value, str) and (date := parse_date(value)) is not None:
            return date
        raise self.fail(
            path,
            f"compares with a number within ±1.8e308 or an ISO 8601 date (2024-05-17), not {_shown(value)}.",
        )

    def range(self, target: str, bounds: dict[str, float | datetime], path: str) -> models.FieldCondition:
        dates = {isinstance(b, datetime) for b in bounds.values()}
        if len(dates) > 1:
            raise self.fail(path, "compares with numbers or with dates, not both at once.")
        if dates == {True}:
            self.hint(target, models.PayloadSchemaType.DATETIME)
            return models.FieldCondition(key=target, range=models.DatetimeRange(**bounds))
        self.hint(target, models.PayloadSchemaType.FLOAT)
        return models.FieldCondition(key=target, range=models.Range(**bounds))

    def equals(self, target: str, value: Scalar) -> models.Condition:
        if isinstance(value, bool):
            self.hint(target, models.PayloadSchemaType.BOOL)
            return _match(target, value)
        if isinstance(value, str):
            self.hint(target, models.PayloadSchemaType.KEYWORD)
            return _match(target, value)
        # Qdrant matches exact values of text, whole numbers and booleans only; a number, whole or
        # not, is equal when it lies in [value, value], which holds for integer and float payloads alike.
        self.hint(target, models.PayloadSchemaType.FLOAT)
        return models.FieldCondition(key=target, range=models.Range(gte=value, lte=value))

    def one_of(self, target: str, values: list[Scalar]) -> models.Condition:
        if all(isinstance(v, str) for v in values):
            self.hint(target, models.PayloadSchemaType.KEYWORD)
            return _any(target, values)
        return models.Filter(should=[self.equals(target, v) for v in values])

    def hint(self, payload_key: str, schema: models.PayloadSchemaType) -> None:
        # One index per field: the first use decides, so a key compared two ways keeps one index.
        self.hints.setdefault(payload_key, schema)


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


def compile_filter(spec: Any, *, path: str = "filter") -> CompiledFilter:
    """Check a filter's JSON and compile it; InvalidFilter names the first part at fault."""
    compiler = _Compiler()
    return CompiledFilter(filter=compiler.node(spec, path, 1), index_hints=compiler.hints)
