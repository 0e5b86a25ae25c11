"""Translate between qdrant-client's `models` and the objects of the Qdrant Edge engine (`qdrant_edge`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import numpy as np
import qdrant_edge as edge
from qdrant_client.http import models

# qdrant-client and the server both default RRF's k to 2 when the query does not say.
DEFAULT_RRF_K = 2

_DISTANCES = {
    models.Distance.COSINE: edge.Distance.Cosine,
    models.Distance.DOT: edge.Distance.Dot,
    models.Distance.EUCLID: edge.Distance.Euclid,
    models.Distance.MANHATTAN: edge.Distance.Manhattan,
}

_SCHEMA_TYPES = {
    models.PayloadSchemaType.KEYWORD: edge.PayloadSchemaType.Keyword,
    models.PayloadSchemaType.INTEGER: edge.PayloadSchemaType.Integer,
    models.PayloadSchemaType.FLOAT: edge.PayloadSchemaType.Float,
    models.PayloadSchemaType.GEO: edge.PayloadSchemaType.Geo,
    models.PayloadSchemaType.TEXT: edge.PayloadSchemaType.Text,
    models.PayloadSchemaType.BOOL: edge.PayloadSchemaType.Bool,
    models.PayloadSchemaType.DATETIME: edge.PayloadSchemaType.Datetime,
    models.PayloadSchemaType.UUID: edge.PayloadSchemaType.Uuid,
}
_SCHEMA_TYPES_BACK = {
    # Edge's enum members hash by identity, not by value: key them by their text.
    str(edge_type): model_type
    for model_type, edge_type in _SCHEMA_TYPES.items()
}

# models.*IndexParams -> (Edge class, the fields both sides share and we pass through).
_INDEX_PARAMS = {
    models.KeywordIndexParams: (edge.KeywordIndexParams, ("is_tenant", "on_disk", "enable_hnsw", "prefix")),
    models.IntegerIndexParams: (
        edge.IntegerIndexParams,
        ("lookup", "range", "is_principal", "on_disk", "enable_hnsw"),
    ),
    models.FloatIndexParams: (edge.FloatIndexParams, ("is_principal", "on_disk", "enable_hnsw")),
    models.BoolIndexParams: (edge.BoolIndexParams, ("on_disk", "enable_hnsw")),
    models.DatetimeIndexParams: (edge.DatetimeIndexParams, ("is_principal", "on_disk", "enable_hnsw")),
    models.UuidIndexParams: (edge.UuidIndexParams, ("is_tenant", "on_disk", "enable_hnsw")),
    models.GeoIndexParams: (edge.GeoIndexParams, ("on_disk", "enable_hnsw")),
}

_TOKENIZERS = {
    models.TokenizerType.PREFIX: edge.TokenizerType.Prefix,
    models.TokenizerType.WHITESPACE: edge.TokenizerType.Whitespace,
    models.TokenizerType.WORD: edge.TokenizerType.Word,
    models.TokenizerType.MULTILINGUAL: edge.TokenizerType.Multilingual,
    models.TokenizerType.CODE: edge.TokenizerType.Code,
}


# --- collection configuration ---------------------------------------------------------------


def distance_to_edge(distance: models.Distance) -> edge.Distance:
    try:
        return _DISTANCES[models.Distance(distance)]
    except (KeyError, ValueError):
        raise NotImplementedError(f"Distance {distance!r} is not supported by the Edge store") from None


def vector_params_to_edge(params: models.VectorParams) -> edge.EdgeVectorParams:
    if params.multivector_config is not None:
        raise NotImplementedError(
            "Multivectors (VectorParams.multivector_config) are not supported by the Edge store"
        )
    return edge.EdgeVectorParams(
        size=params.size,
        distance=distance_to_edge(params.distance),
        on_disk=params.on_disk,
        hnsw_config=hnsw_config_to_edge(params.hnsw_config),
    )


def hnsw_config_to_edge(config: models.HnswConfigDiff | None) -> edge.HnswIndexConfig | None:
    if config is None:
        return None
    defaults = models.HnswConfig(m=16, ef_construct=100, full_scan_threshold=10_000)
    return edge.HnswIndexConfig(
        m=config.m if config.m is not None else defaults.m,
        ef_construct=config.ef_construct if config.ef_construct is not None else defaults.ef_construct,
        full_scan_threshold=(
            config.full_scan_threshold
            if config.full_scan_threshold is not None
            else defaults.full_scan_threshold
        ),
        max_indexing_threads=config.max_indexing_threads or 0,
        on_disk=config.on_disk,
        payload_m=config.payload_m,
    )


def dense_vectors_to_edge(
    vectors: models.VectorParams | Mapping[str, models.VectorParams] | None,
) -> edge.EdgeVectorParams | dict[str, edge.EdgeVectorParams] | None:
    if vectors is None:
        return None
    if isinstance(vectors, models.VectorParams):
        return vector_params_to_edge(vectors)
    return {name: vector_params_to_edge(params) for name, params in vectors.items()}


def sparse_vector_params_to_edge(params: models.SparseVectorParams) -> edge.EdgeSparseVectorParams:
    modifier = params.modifier
    if modifier not in (None, models.Modifier.NONE, models.Modifier.IDF):
        raise NotImplementedError(f"Sparse vector modifier {modifier!r} is not supported by the Edge store")
    index = params.index
    return edge.EdgeSparseVectorParams(
        full_scan_threshold=index.full_scan_threshold if index is not None else None,
        on_disk=index.on_disk if index is not None else None,
        modifier=edge.Modifier.Idf if modifier == models.Modifier.IDF else None,
    )


def sparse_vectors_to_edge(
    vectors: Mapping[str, models.SparseVectorParams] | None,
) -> dict[str, edge.EdgeSparseVectorParams] | None:
    if not vectors:
        return None
    return {name: sparse_vector_params_to_edge(params) for name, params in vectors.items()}


def payload_schema_to_edge(schema: models.PayloadFieldSchema) -> Any:
    """A PayloadSchemaType or one of the *IndexParams forms, as Edge's create_field_index takes it."""
    if isinstance(schema, (str, models.PayloadSchemaType)):
        try:
            return _SCHEMA_TYPES[models.PayloadSchemaType(schema)]
        except (KeyError, ValueError):
            raise NotImplementedError(
                f"Payload index type {schema!r} is not supported by the Edge store"
            ) from None
    if isinstance(schema, models.TextIndexParams):
        return text_index_params_to_edge(schema)
    for model_class, (edge_class, fields) in _INDEX_PARAMS.items():
        if isinstance(schema, model_class):
            return edge_class(**{field: getattr(schema, field) for field in fields})
    raise NotImplementedError(
        f"Payload index schema {type(schema).__name__} is not supported by the Edge store"
    )


def text_index_params_to_edge(params: models.TextIndexParams) -> edge.TextIndexParams:
    if params.stopwords is not None or params.stemmer is not None:
        raise NotImplementedError(
            "Text index stopwords and stemmer settings are not supported by the Edge store"
        )
    return edge.TextIndexParams(
        tokenizer=_TOKENIZERS[params.tokenizer] if params.tokenizer is not None else None,
        min_token_len=params.min_token_len,
        max_token_len=params.max_token_len,
        lowercase=params.lowercase,
        ascii_folding=params.ascii_folding,
        phrase_matching=params.phrase_matching,
        on_disk=params.on_disk,
        enable_hnsw=params.enable_hnsw,
    )


def payload_index_info_from_edge(info: Any) -> models.PayloadIndexInfo:
    data_type = _SCHEMA_TYPES_BACK[str(info.data_type)]
    params = None
    if data_type == models.PayloadSchemaType.KEYWORD and info.params is not None and info.params.is_tenant:
        params = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True)
    return models.PayloadIndexInfo(data_type=data_type, params=params, points=info.points)


# --- points ---------------------------------------------------------------------------------


def point_id_to_edge(point_id: models.ExtendedPointId | uuid.UUID) -> int | str:
    if isinstance(point_id, bool):
        raise ValueError(f"Point id {point_id!r} is neither an unsigned integer nor a UUID")
    if isinstance(point_id, int):
        return point_id
    return str(uuid.UUID(str(point_id)))


def point_id_from_edge(point_id: Any) -> models.ExtendedPointId:
    """Edge hands UUID ids back as uuid.UUID; the remote and local clients give strings."""
    if isinstance(point_id, uuid.UUID):
        return str(point_id)
    return point_id


def point_ids_to_edge(point_ids: Sequence[models.ExtendedPointId]) -> list[int | str]:
    return [point_id_to_edge(point_id) for point_id in point_ids]


def _dense_or_sparse_to_edge(vector: Any) -> list[float] | edge.SparseVector:
    if isinstance(vector, models.SparseVector):
        return edge.SparseVector(indices=list(vector.indices), values=list(map(float, vector.values)))
    if isinstance(vector, np.ndarray):
        return vector.astype(float).tolist()
    if isinstance(vector, (models.Document, models.Image, models.InferenceObject)):
        raise NotImplementedError("Inference objects must be embedded before they reach the Edge store")
    if vector and isinstance(vector[0], (list, np.ndarray)):
        raise NotImplementedError("Multivectors are not supported by the Edge store")
    return list(map(float, vector))


def vector_to_edge(vector: models.VectorStruct) -> Any:
    """A point's vector: a plain list for the unnamed vector, or a dict name -> dense or sparse."""
    if isinstance(vector, Mapping):
        return {name: _dense_or_sparse_to_edge(value) for name, value in vector.items()}
    return _dense_or_sparse_to_edge(vector)


def vector_from_edge(vector: Any) -> models.VectorStructOutput | None:
    if vector is None:
        return None
    if isinstance(vector, edge.SparseVector):
        return models.SparseVector(indices=list(vector.indices), values=list(vector.values))
    if isinstance(vector, Mapping):
        if not vector:
            return {}
        return {name: vector_from_edge(value) for name, value in vector.items()}
    return list(vector)


def point_to_edge(point: models.PointStruct) -> edge.Point:
    return edge.Point(point_id_to_edge(point.id), vector_to_edge(point.vector), point.payload)


def batch_to_edge(batch: models.Batch) -> list[edge.Point]:
    count = len(batch.ids)
    if isinstance(batch.vectors, Mapping):
        vectors = [{name: values[i] for name, values in batch.vectors.items()} for i in range(count)]
    else:
        vectors = list(batch.vectors)
    payloads = batch.payloads if batch.payloads is not None else [None] * count
    return [
        edge.Point(point_id_to_edge(point_id), vector_to_edge(vector), payload)
        for point_id, vector, payload in zip(batch.ids, vectors, payloads, strict=True)
    ]


def points_to_edge(points: models.Batch | Sequence[models.PointStruct]) -> list[edge.Point]:
    if isinstance(points, models.Batch):
        return batch_to_edge(points)
    return [point_to_edge(point) for point in points]


def scored_point_from_edge(point: Any) -> models.ScoredPoint:
    """A search hit as qdrant-client's model, every field set as `ScoredPoint.model_construct` sets them.

    Edge's values already have the model's types: validating them again (copying each payload) was
    most of this conversion's cost, which every search hit pays on the event loop. `model_construct`
    still walked the model's fields for defaults (3 µs a hit); where the model allows it, the
    instance's slots are filled directly instead (1 µs).
    """
    values = {
        "id": point_id_from_edge(point.id),
        "version": point.version,
        "score": point.score,
        "payload": point.payload,
        "vector": vector_from_edge(point.vector),
        "shard_key": None,
        "order_value": point.order_value,
    }
    if not _FILL_SCORED_POINTS:
        return models.ScoredPoint.model_construct(_fields_set=set(_SCORED_POINT_SET), **values)
    hit = _new_instance(models.ScoredPoint)
    _set_slot(hit, "__dict__", values)
    _set_slot(hit, "__pydantic_fields_set__", set(_SCORED_POINT_SET))
    _set_slot(hit, "__pydantic_extra__", None)
    _set_slot(hit, "__pydantic_private__", None)
    return hit


def _slots_fillable(model: type[models.BaseModel], fields: set[str]) -> bool:
    """Whether an instance of `model` is whole with `fields` in its `__dict__` and the three other slots
    `scored_point_from_edge` fills: no other field or slot, no extras, no private attributes, no
    `__new__` of its own, nothing done after construction. A qdrant-client or pydantic release that
    changes ScoredPoint or BaseModel so makes `scored_point_from_edge` go back to `model_construct`."""
    slots = [slot for cls in model.__mro__ for slot in _declared_slots(cls)]
    return (
        set(model.model_fields) == fields
        and slots == list(_FILLED_SLOTS)
        and model.__new__ is object.__new__
        and model.model_config.get("extra") in (None, "ignore", "forbid")
        and not model.__private_attributes__
        and model.model_post_init is models.BaseModel.model_post_init
        and getattr(model, "__pydantic_post_init__", None) is None
    )


def _declared_slots(cls: type) -> tuple[str, ...]:
    slots = cls.__dict__.get("__slots__", ())
    return (slots,) if isinstance(slots, str) else tuple(slots)


# What pydantic's BaseModel keeps on an instance; `scored_point_from_edge` sets each of them.
_FILLED_SLOTS = ("__dict__", "__pydantic_fields_set__", "__pydantic_extra__", "__pydantic_private__")


# The fields a hit sets: all but `shard_key`, which stays at its default (None), as model_construct leaves it.
_SCORED_POINT_SET = frozenset({"id", "version", "score", "payload", "vector", "order_value"})
_FILL_SCORED_POINTS = _slots_fillable(models.ScoredPoint, {*_SCORED_POINT_SET, "shard_key"})
_new_instance = object.__new__
_set_slot = object.__setattr__


def record_from_edge(record: Any) -> models.Record:
    return models.Record(
        id=point_id_from_edge(record.id),
        payload=record.payload,
        vector=vector_from_edge(record.vector),
        order_value=record.order_value,
    )


def with_payload_to_edge(with_payload: models.WithPayloadInterface | None) -> Any:
    if with_payload is None or isinstance(with_payload, bool):
        return bool(with_payload)
    if isinstance(with_payload, models.PayloadSelectorInclude):
        return edge.PayloadSelector.Include(list(with_payload.include))
    if isinstance(with_payload, models.PayloadSelectorExclude):
        return edge.PayloadSelector.Exclude(list(with_payload.exclude))
    return edge.PayloadSelector.Include(list(with_payload))


def with_vectors_to_edge(with_vectors: models.WithVector | None) -> bool | list[str]:
    if with_vectors is None or isinstance(with_vectors, bool):
        return bool(with_vectors)
    return list(with_vectors)


# --- filters --------------------------------------------------------------------------------


def _match_value_to_edge(value: Any) -> Any:
    # Edge reads a Python bool as the integer 1 or 0 (bool subclasses int) and then never matches
    # a boolean payload value; numpy's bool is not an int, so it arrives as a real boolean.
    if isinstance(value, bool):
        return np.bool_(value)
    return value


def match_to_edge(match: models.Match) -> Any:
    if isinstance(match, models.MatchValue):
        return edge.MatchValue(_match_value_to_edge(match.value))
    if isinstance(match, models.MatchAny):
        return edge.MatchAny(list(match.any))
    if isinstance(match, models.MatchExcept):
        return edge.MatchExcept(list(match.except_))
    if isinstance(match, models.MatchText):
        return edge.MatchText(match.text)
    if isinstance(match, models.MatchTextAny):
        return edge.MatchTextAny(match.text_any)
    if isinstance(match, models.MatchPhrase):
        return edge.MatchPhrase(match.phrase)
    if isinstance(match, models.MatchPrefix):
        return edge.MatchPrefix(match.prefix)
    if isinstance(match, models.MatchSubstring):
        return edge.MatchSubstring(match.substring)
    raise NotImplementedError(f"Match condition {type(match).__name__} is not supported by the Edge store")


def _datetime_bound(value: datetime | date | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


def range_to_edge(range_: models.RangeInterface) -> edge.RangeFloat | edge.RangeDateTime:
    if isinstance(range_, models.DatetimeRange):
        return edge.RangeDateTime(
            gte=_datetime_bound(range_.gte),
            gt=_datetime_bound(range_.gt),
            lte=_datetime_bound(range_.lte),
            lt=_datetime_bound(range_.lt),
        )
    if isinstance(range_, models.Range):
        return edge.RangeFloat(gte=range_.gte, gt=range_.gt, lte=range_.lte, lt=range_.lt)
    raise NotImplementedError(f"Range {type(range_).__name__} is not supported by the Edge store")


def _geo_point_to_edge(point: models.GeoPoint) -> edge.GeoPoint:
    return edge.GeoPoint(lon=point.lon, lat=point.lat)


def field_condition_to_edge(condition: models.FieldCondition) -> edge.FieldCondition:
    values_count = condition.values_count
    return edge.FieldCondition(
        condition.key,
        match=match_to_edge(condition.match) if condition.match is not None else None,
        range=range_to_edge(condition.range) if condition.range is not None else None,
        geo_bounding_box=(
            edge.GeoBoundingBox(
                _geo_point_to_edge(condition.geo_bounding_box.top_left),
                _geo_point_to_edge(condition.geo_bounding_box.bottom_right),
            )
            if condition.geo_bounding_box is not None
            else None
        ),
        geo_radius=(
            edge.GeoRadius(_geo_point_to_edge(condition.geo_radius.center), condition.geo_radius.radius)
            if condition.geo_radius is not None
            else None
        ),
        geo_polygon=(
            edge.GeoPolygon(
                [_geo_point_to_edge(p) for p in condition.geo_polygon.exterior.points],
                [[_geo_point_to_edge(p) for p in ring.points] for ring in condition.geo_polygon.interiors]
                if condition.geo_polygon.interiors
                else None,
            )
            if condition.geo_polygon is not None
            else None
        ),
        values_count=(
            edge.ValuesCount(
                lt=values_count.lt, gt=values_count.gt, lte=values_count.lte, gte=values_count.gte
            )
            if values_count is not None
            else None
        ),
        is_empty=condition.is_empty,
        is_null=condition.is_null,
    )


def condition_to_edge(condition: models.Condition) -> Any:
    if isinstance(condition, models.FieldCondition):
        return field_condition_to_edge(condition)
    if isinstance(condition, models.Filter):
        return filter_to_edge(condition)
    if isinstance(condition, models.IsEmptyCondition):
        return edge.IsEmptyCondition(condition.is_empty.key)
    if isinstance(condition, models.IsNullCondition):
        return edge.IsNullCondition(condition.is_null.key)
    if isinstance(condition, models.HasIdCondition):
        return edge.HasIdCondition(set(point_ids_to_edge(condition.has_id)))
    if isinstance(condition, models.HasVectorCondition):
        return edge.HasVectorCondition(condition.has_vector)
    if isinstance(condition, models.NestedCondition):
        return edge.NestedCondition(condition.nested.key, filter_to_edge(condition.nested.filter))
    if isinstance(condition, models.SliceCondition):
        return edge.SliceCondition(condition.slice.total, condition.slice.index)
    raise NotImplementedError(
        f"Filter condition {type(condition).__name__} is not supported by the Edge store"
    )


def _conditions_to_edge(conditions: models.Condition | Sequence[models.Condition] | None) -> list[Any] | None:
    if conditions is None:
        return None
    if not isinstance(conditions, Sequence):
        conditions = [conditions]
    return [condition_to_edge(condition) for condition in conditions]


def filter_to_edge(filter_: models.Filter | None) -> edge.Filter | None:
    if filter_ is None:
        return None
    min_should = filter_.min_should
    return edge.Filter(
        must=_conditions_to_edge(filter_.must),
        should=_conditions_to_edge(filter_.should),
        must_not=_conditions_to_edge(filter_.must_not),
        min_should=(
            edge.MinShould(_conditions_to_edge(min_should.conditions), min_should.min_count)
            if min_should is not None
            else None
        ),
    )


# --- queries --------------------------------------------------------------------------------


def search_params_to_edge(params: models.SearchParams | None) -> edge.SearchParams | None:
    if params is None:
        return None
    quantization = params.quantization
    return edge.SearchParams(
        hnsw_ef=params.hnsw_ef,
        exact=bool(params.exact),
        quantization=(
            edge.QuantizationSearchParams(
                ignore=bool(quantization.ignore),
                rescore=quantization.rescore,
                oversampling=quantization.oversampling,
            )
            if quantization is not None
            else None
        ),
        indexed_only=bool(params.indexed_only),
    )


def order_by_to_edge(order_by: str | models.OrderBy) -> edge.OrderBy:
    if isinstance(order_by, str):
        return edge.OrderBy(order_by)
    direction = None
    if order_by.direction is not None:
        direction = edge.Direction.Desc if order_by.direction == models.Direction.DESC else edge.Direction.Asc
    start_from = order_by.start_from
    if isinstance(start_from, (datetime, date)):
        start_from = start_from.isoformat()
    return edge.OrderBy(order_by.key, direction=direction, start_from=start_from)


def _rrf_to_edge(rrf: models.Rrf) -> Any:
    return edge.Fusion.Rrf(k=rrf.k if rrf.k is not None else DEFAULT_RRF_K, weights=rrf.weights)


def query_to_edge(query: Any, using: str | None) -> Any:
    """A resolved models.Query (or the raw vector a Prefetch may still carry) as an Edge scoring query."""
    if query is None:
        return None
    if isinstance(query, models.NearestQuery):
        if query.mmr is not None:
            raise NotImplementedError("NearestQuery with mmr is not supported by the Edge store")
        query = query.nearest
    if isinstance(query, (list, np.ndarray, models.SparseVector)):
        return edge.Query.Nearest(_dense_or_sparse_to_edge(query), using=using)
    if isinstance(query, models.FusionQuery):
        if query.fusion == models.Fusion.DBSF:
            return edge.Fusion.Dbsf()
        return edge.Fusion.Rrf(k=DEFAULT_RRF_K)
    if isinstance(query, models.RrfQuery):
        return _rrf_to_edge(query.rrf)
    if isinstance(query, models.OrderByQuery):
        return order_by_to_edge(query.order_by)
    if isinstance(query, (int, str, uuid.UUID)):
        raise NotImplementedError("Querying by point id is not supported by the Edge store; pass the vector")
    raise NotImplementedError(f"Query {type(query).__name__} is not supported by the Edge store")


def _shared_filter_to_edge(filter_: models.Filter | None, converted: dict[int, Any]) -> edge.Filter | None:
    """`filter_to_edge`, once per filter object of a request: a hybrid search's prefetches share one filter,
    whose knowledge-base keys (one per readable KB) make it the dearest part of the request to convert."""
    if filter_ is None:
        return None
    if id(filter_) not in converted:
        converted[id(filter_)] = filter_to_edge(filter_)
    return converted[id(filter_)]


def prefetch_to_edge(prefetch: models.Prefetch, converted: dict[int, Any] | None = None) -> edge.Prefetch:
    if prefetch.lookup_from is not None:
        raise NotImplementedError("Prefetch.lookup_from is not supported by the Edge store")
    converted = {} if converted is None else converted
    return edge.Prefetch(
        limit=prefetch.limit if prefetch.limit is not None else 10,
        query=query_to_edge(prefetch.query, prefetch.using),
        prefetches=prefetches_to_edge(prefetch.prefetch, converted),
        params=search_params_to_edge(prefetch.params),
        filter=_shared_filter_to_edge(prefetch.filter, converted),
        score_threshold=prefetch.score_threshold,
    )


def prefetches_to_edge(
    prefetch: models.Prefetch | Sequence[models.Prefetch] | None,
    converted: dict[int, Any] | None = None,
) -> list[edge.Prefetch] | None:
    """The prefetches; `converted` holds the filters this request has converted already, by object."""
    if prefetch is None:
        return None
    if isinstance(prefetch, models.Prefetch):
        prefetch = [prefetch]
    converted = {} if converted is None else converted
    return [prefetch_to_edge(item, converted) for item in prefetch]


def query_request_to_edge(
    *,
    query: Any,
    using: str | None,
    prefetch: models.Prefetch | Sequence[models.Prefetch] | None,
    query_filter: models.Filter | None,
    search_params: models.SearchParams | None,
    limit: int,
    offset: int | None,
    with_payload: models.WithPayloadInterface | None,
    with_vectors: models.WithVector | None,
    score_threshold: float | None,
    lookup_from: models.LookupLocation | None,
) -> edge.QueryRequest:
    if lookup_from is not None:
        raise NotImplementedError("lookup_from is not supported by the Edge store")
    if limit < 1:
        raise ValueError(f"limit value {limit} is invalid. Must be 1 or larger.")
    if offset is not None and offset < 0:
        raise ValueError(f"offset value {offset} is invalid. Must be 0 or larger.")
    converted: dict[int, Any] = {}
    return edge.QueryRequest(
        limit=limit,
        offset=offset,
        query=query_to_edge(query, using),
        prefetches=prefetches_to_edge(prefetch, converted),
        with_vector=with_vectors_to_edge(with_vectors),
        with_payload=with_payload_to_edge(with_payload),
        filter=_shared_filter_to_edge(query_filter, converted),
        score_threshold=score_threshold,
        params=search_params_to_edge(search_params),
    )
