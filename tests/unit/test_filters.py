"""search.filters: filter JSON checked against the declared fields and compiled to each operator's Qdrant filter; refusals name the bad part."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any

import pytest
from qdrant_client import models

from search.errors import InvalidFilter
from search.filters import MAX_CONDITIONS, MAX_DEPTH, SearchedFields
from search.filters import compile_filter as compile_with_fields

pytestmark = [pytest.mark.unit]

DECLARED = {
    "status": "text",
    "note": "text",
    "ok": "bool",
    "reviewed": "bool",
    "year": "number",
    "a": "number",
    "published": "date",
}


def compile_filter(spec: Any, fields: dict[str, str] = DECLARED):
    return compile_with_fields(spec, fields=SearchedFields({"Notes": fields}))


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
        ({"key": "status", "eq": "final"}, models.Filter(must=[value("meta_text.status", "final")])),
        ({"key": "ok", "eq": True}, models.Filter(must=[value("meta_bool.ok", True)])),
        (
            {"key": "year", "eq": 2020},
            models.Filter(must=[field("meta_number.year", range=models.Range(gte=2020, lte=2020))]),
        ),
        ({"key": "status", "ne": "draft"}, models.Filter(must_not=[value("meta_text.status", "draft")])),
        (
            {"key": "status", "in": ["a", "b"]},
            models.Filter(must=[field("meta_text.status", match=models.MatchAny(any=["a", "b"]))]),
        ),
        (
            {"key": "year", "not_in": [1, 2.5]},
            models.Filter(
                must_not=[
                    models.Filter(
                        should=[
                            field("meta_number.year", range=models.Range(gte=1, lte=1)),
                            field("meta_number.year", range=models.Range(gte=2.5, lte=2.5)),
                        ]
                    )
                ]
            ),
        ),
        (
            {"key": "year", "gt": 1, "gte": 2, "lt": 9, "lte": 8.5},
            models.Filter(must=[field("meta_number.year", range=models.Range(gt=1, gte=2, lt=9, lte=8.5))]),
        ),
        (
            {"key": "published", "gte": "2024-05-17", "lt": "2024-06-01T12:00:00+02:00"},
            models.Filter(
                must=[
                    field(
                        "meta_date.published",
                        range=models.DatetimeRange(
                            gte=datetime(2024, 5, 17, tzinfo=UTC), lt=datetime(2024, 6, 1, 10, tzinfo=UTC)
                        ),
                    )
                ]
            ),
        ),
        ({"key": "note", "exists": True}, models.Filter(must_not=[empty("meta_text.note")])),
        ({"key": "note", "exists": False}, models.Filter(must=[empty("meta_text.note")])),
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
    assert compiled.must[2] == models.Filter(must_not=[empty("meta_bool.reviewed")])


def test_a_date_equals_the_instant_it_names() -> None:
    day = datetime(2024, 5, 17, tzinfo=UTC)

    assert compile_filter({"key": "published", "eq": "2024-05-17"}).filter == models.Filter(
        must=[field("meta_date.published", range=models.DatetimeRange(gte=day, lte=day))]
    )


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"key": "colour", "eq": "red"}, "filter.key"),
        ({"key": "year", "eq": "2020"}, "filter.eq"),
        ({"key": "year", "in": [2020, "2021"]}, "filter.in[1]"),
        ({"key": "status", "eq": 1}, "filter.eq"),
        ({"key": "status", "gte": "a"}, "filter.gte"),
        ({"key": "ok", "eq": "true"}, "filter.eq"),
        ({"key": "ok", "lt": True}, "filter.lt"),
        ({"key": "published", "eq": 2024}, "filter.eq"),
        ({"key": "published", "gte": "last week"}, "filter.gte"),
        ({"and": [{"tag": {"any": ["a"]}}, {"key": "missing", "exists": False}]}, "filter.and[1].key"),
    ],
)
def test_an_undeclared_key_or_a_value_of_another_type_is_refused_listing_the_declared_fields(
    spec, path
) -> None:
    with pytest.raises(InvalidFilter) as raised:
        compile_filter(spec, {"status": "text", "year": "number", "ok": "bool", "published": "date"})

    assert raised.value.detail == {
        "path": path,
        "fields": {"ok": "bool", "published": "date", "status": "text", "year": "number"},
    }
    assert raised.value.message.startswith(f"{path}: ")
    assert (
        "'Notes' declares: ok (bool), published (date), status (text), year (number)." in raised.value.message
    )


def test_a_knowledge_base_that_declares_nothing_says_so() -> None:
    with pytest.raises(InvalidFilter, match="'Notes' declares: none.") as raised:
        compile_filter({"key": "year", "eq": 1}, {})

    assert raised.value.detail == {"path": "filter.key", "fields": {}}


def test_across_knowledge_bases_a_key_must_be_declared_with_one_type_in_each() -> None:
    fields = SearchedFields(
        {
            "Handbook": {"year": "number", "status": "text", "team": "text"},
            "Policies": {"year": "number", "status": "date"},
        }
    )

    compiled = compile_with_fields({"key": "year", "gte": 2020}, fields=fields)
    with pytest.raises(InvalidFilter) as status:
        compile_with_fields({"key": "status", "eq": "final"}, fields=fields)
    with pytest.raises(InvalidFilter) as team:
        compile_with_fields({"key": "team", "eq": "hr"}, fields=fields)

    assert compiled.filter == models.Filter(must=[field("meta_number.year", range=models.Range(gte=2020))])
    assert "'status' is declared in 'Handbook' as text, 'Policies' as date;" in status.value.message
    assert "'team' is declared in 'Handbook' as text and not in 'Policies';" in team.value.message
    assert status.value.detail["fields"] == {"year": "number"}
    assert "all declare: year (number)." in team.value.message


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
        ({"key": "year", "gt": 1, "lt": "2024-01-01"}, "filter.lt"),
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

    assert raised.value.detail["path"] == path
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

    assert compiled.filter == models.Filter(must=[field("meta_number.year", range=models.Range(lte=largest))])
