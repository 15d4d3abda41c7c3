"""Metadata filters (bool, float, null, ISO datetimes) on both backends; bad filters name their field."""

import datetime as dt

import pytest

from retrieval.errors import FilterError
from retrieval.store import CollectionSchema, QueryPlan
from tests.test_store_contract import put, unit

SCHEMA = CollectionSchema(dense_model="toy", dense_dim=4, sparse_model="bm25", sparse_idf=True)
ROWS = [
    ("a", 0, (1, 0, 0, 0), {1: 1.0}, {"published": True, "score": 0.5, "at": "2021-03-04T05:06:07Z", "note": None}),
    ("b", 0, (0, 1, 0, 0), {2: 1.0}, {"published": False, "score": 1.5, "at": "2019-12-31T23:00:00+00:00"}),
    ("c", 0, (0, 0, 1, 0), {3: 1.0}, {"published": True, "score": 2.0, "at": "2024-06-01", "note": "x"}),
]


def docs(store, flt) -> set[str]:
    n = store.count(flt)
    hits = store.query(QueryPlan(dense=unit(1, 1, 1, 1), limit=10, filter=flt))
    assert len(hits) == n  # count and query agree
    return {h.payload["doc_id"] for h in hits}


@pytest.fixture
def filled(store):
    store.ensure(SCHEMA)
    put(store, ROWS)
    return store


def test_bool_float_null_and_datetime_filters(filled):
    assert docs(filled, {"published": True}) == {"a", "c"}
    assert docs(filled, {"published": False}) == {"b"}
    assert docs(filled, {"score": 0.5}) == {"a"}
    assert docs(filled, {"score": {"gt": 0.7, "lte": 2.0}}) == {"b", "c"}
    assert docs(filled, {"note": None}) == {"a", "b"}  # null or missing
    assert docs(filled, {"at": {"gte": "2020-01-01"}}) == {"a", "c"}
    assert docs(filled, {"at": {"lte": dt.datetime(2020, 1, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))}}) == {"b"}
    assert docs(filled, {"at": {"gte": dt.date(2024, 1, 1)}, "published": True}) == {"c"}


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ({"at": {"gte": "last tuesday"}}, r"filter on 'at': 'last tuesday' is not an ISO 8601"),
        ({"score": {"above": 1}}, r"filter on 'score': unknown range operators \['above'\]"),
        ({"score": {"gte": 1, "lt": "2020-01-01"}}, r"filter on 'score': range bounds must be all numbers"),
        ({"topic": [1.5, 2.5]}, r"filter on 'topic': a list must hold strings or integers"),
        ({"topic": {"a": object()}}, r"filter on 'topic'"),
        ({"topic": object()}, r"filter on 'topic': unsupported value"),
    ],
)
def test_bad_filters_name_the_field(filled, flt, message):
    with pytest.raises(FilterError, match=message):
        filled.count(flt)
