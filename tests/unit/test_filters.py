"""search.filters: filter JSON compiled to each operator's Qdrant filter; refusals name the bad part."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from qdrant_client import models

from search.errors import InvalidFilter
from search.filters import MAX_CONDITIONS, MAX_DEPTH, compile_filter

pytestmark = [pytest.mark.unit]


def field(key: str, **kwargs: Any) -> models.FieldCondition:
    return models.FieldCondition(key=key, **kwargs)


def value(key: str, v: Any) -> models.FieldCondition:
    return field(key, match=models.MatchValue(value=v))


def empty(key: str) -> models.IsEmptyCondition:
    return models.IsEmptyCondition(is_empty=models.PayloadField(key=key))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {"tag": {"any": ["a", "b"]}},
            models.Filter(must=[field("tags", match=models.MatchAny(any=["a", "b"]))]),
        ),
        ({"tag": {"all": ["a", "b"]}}, models.Filter(must=[value("tags", "a"), value("tags", "b")])),
        ({"tag": {"none": ["a"]}}, models.Filter(must_not=[field("tags", match=models.MatchAny(any=["a"]))])),
        ({"key": "status", "eq": "final"}, models.Filter(must=[value("meta.status", "final")])),
        ({"key": "ok", "eq": True}, models.Filter(must=[value("meta.ok", True)])),
        (
            {"key": "year", "eq": 2020},
            models.Filter(must=[field("meta.year", range=models.Range(gte=2020, lte=2020))]),
        ),
        ({"key": "status", "ne": "draft"}, models.Filter(must_not=[value("meta.status", "draft")])),
        (
            {"key": "status", "in": ["a", "b"]},
            models.Filter(must=[field("meta.status", match=models.MatchAny(any=["a", "b"]))]),
        ),
        (
            {"key": "year", "not_in": [1, 2.5]},
            models.Filter(
                must_not=[
                    models.Filter(
                        should=[
                            field("meta.year", range=models.Range(gte=1, lte=1)),
                            field("meta.year", range=models.Range(gte=2.5, lte=2.5)),
                        ]
                    )
                ]
            ),
        ),
        (
            {"key": "year", "gt": 1, "gte": 2, "lt": 9, "lte": 8.5},
            models.Filter(must=[field("meta.year", range=models.Range(gt=1, gte=2, lt=9, lte=8.5))]),
        ),
        (
            {"key": "published", "gte": "2024-05-17", "lt": "2024-06-01T12:00:00+02:00"},
            models.Filter(
                must=[
                    field(
                        "meta.published",
                        range=models.DatetimeRange(
                            gte=datetime(2024, 5, 17, tzinfo=UTC), lt=datetime(2024, 6, 1, 10, tzinfo=UTC)
                        ),
                    )
                ]
            ),
        ),
        ({"key": "note", "exists": True}, models.Filter(must_not=[empty("meta.note")])),
        ({"key": "note", "exists": False}, models.Filter(must=[empty("meta.note")])),
    ],
)
def test_each_operator_compiles_to_its_qdrant_condition(spec, expected) -> None:
    assert compile_filter(spec).filter == expected


def test_and_or_nest_as_must_and_should() -> None:
    spec = {
        "and": [
            {"tag": {"any": ["a"]}},
            {"or": [{"key": "year", "gte": 2020}, {"key": "status", "in": ["draft", "final"]}]},
            {"key": "reviewed", "exists": True},
        ]
    }

    compiled = compile_filter(spec).filter

    assert [type(part) for part in compiled.must] == [models.Filter] * 3
    assert [type(part) for part in compiled.must[1].should] == [models.Filter] * 2
    assert compiled.must[2] == models.Filter(must_not=[empty("meta.reviewed")])


def test_index_hints_follow_the_type_each_key_is_compared_as() -> None:
    spec = {
        "and": [
            {"tag": {"all": ["a"]}},
            {"key": "year", "gte": 2020},
            {"key": "year", "eq": "twenty"},  # the first use decides
            {"key": "published", "lt": "2024-01-01"},
            {"key": "ok", "eq": False},
            {"key": "status", "in": ["x"]},
            {"key": "note", "exists": True},
        ]
    }

    assert compile_filter(spec).index_hints == {
        "tags": models.PayloadSchemaType.KEYWORD,
        "meta.year": models.PayloadSchemaType.FLOAT,
        "meta.published": models.PayloadSchemaType.DATETIME,
        "meta.ok": models.PayloadSchemaType.BOOL,
        "meta.status": models.PayloadSchemaType.KEYWORD,
    }


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ([], "filter"),
        ({}, "filter"),
        ({"and": [], "or": []}, "filter"),
        ({"and": []}, "filter.and"),
        ({"and": [{"or": [{"key": "year", "gte": "soon"}]}]}, "filter.and[0].or[0].gte"),
        ({"or": [{"tag": {"any": ["a"]}}, {"tag": {"some": ["a"]}}]}, "filter.or[1].tag.some"),
        ({"tag": {"any": [1]}}, "filter.tag.any[0]"),
        ({"tag": {"any": []}}, "filter.tag.any"),
        ({"key": "a.b", "eq": 1}, "filter.key"),
        ({"key": "year"}, "filter"),
        ({"key": "year", "equals": 1}, "filter.equals"),
        ({"key": "year", "eq": None}, "filter.eq"),
        ({"key": "year", "eq": float("nan")}, "filter.eq"),
        ({"key": "year", "in": "2020"}, "filter.in"),
        ({"key": "year", "not_in": [{"x": 1}]}, "filter.not_in[0]"),
        ({"key": "year", "gt": True}, "filter.gt"),
        ({"key": "year", "gt": 1, "lt": "2024-01-01"}, "filter"),
        ({"key": "year", "exists": "yes"}, "filter.exists"),
        ({"key": "year", "eq": 1, "tag": {"any": ["a"]}}, "filter"),
        # Past a double's range: Python reads the JSON as an int that math.isfinite cannot take.
        ({"key": "year", "eq": 10**400}, "filter.eq"),
        ({"key": "year", "gte": -(10**309)}, "filter.gte"),
        ({"key": "year", "in": [1, 10**400]}, "filter.in[1]"),
        ({"key": "status", "eq": "dr\ud800aft"}, "filter.eq"),
        ({"tag": {"any": ["ok", "\udfff"]}}, "filter.tag.any[1]"),
    ],
)
def test_an_invalid_filter_is_refused_naming_the_bad_part(spec, path) -> None:
    with pytest.raises(InvalidFilter) as raised:
        compile_filter(spec)

    assert raised.value.detail == {"path": path}
    assert raised.value.message.startswith(f"{path}: ")


def test_filters_are_bounded_in_depth_and_size() -> None:
    deep: dict[str, Any] = {"key": "a", "eq": 1}
    for _ in range(MAX_DEPTH):
        deep = {"and": [deep]}
    many = {"or": [{"key": "a", "eq": i} for i in range(MAX_CONDITIONS + 1)]}

    for spec in (deep, many):
        with pytest.raises(InvalidFilter, match="at most"):
            compile_filter(spec)
    compile_filter({"or": [{"key": "a", "eq": i} for i in range(MAX_CONDITIONS)]})


def test_numbers_up_to_a_doubles_range_are_compared() -> None:
    largest = int(sys.float_info.max)

    compiled = compile_filter({"key": "year", "lte": largest})

    assert compiled.filter == models.Filter(must=[field("meta.year", range=models.Range(lte=largest))])
