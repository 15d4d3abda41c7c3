"""Metadata filters (bool, numbers, null, ISO datetimes, dotted keys) on both backends; bad filters name their field."""

import datetime as dt

import numpy as np
import pytest

from retrieval.errors import FilterError
from retrieval.store import CollectionSchema, QueryPlan
from retrieval.store.base import filter_misses
from tests.test_store_contract import put, unit

SCHEMA = CollectionSchema(dense_model="toy", dense_dim=4, sparse_model="bm25", sparse_idf=True)
ROWS = [
    ("a", 0, (1, 0, 0, 0), {1: 1.0}, {"published": True, "score": 0.5, "at": "2021-03-04T05:06:07Z", "note": None}),
    ("b", 0, (0, 1, 0, 0), {2: 1.0}, {"published": False, "score": 1.5, "at": "2019-12-31T23:00:00+00:00"}),
    ("c", 0, (0, 0, 1, 0), {3: 1.0}, {"published": True, "score": 2.0, "at": "2024-06-01", "note": "x"}),
]
DEEP: dict = {"gte": 1}
for _ in range(3000):  # deeper than Python's recursion limit: refused without recursing
    DEEP = {"gte": DEEP}


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
        ({"topic": ["a", 2]}, r"filter on 'topic': a list must hold strings or numbers"),
        ({"hash": 2**64 - 59}, r"filter on 'hash': 18446744073709551557 is outside the 64-bit integer range"),
        ({"hash": [1, -(2**63) - 1]}, r"filter on 'hash': -9223372036854775809 is outside the 64-bit integer"),
        ({"score": float("nan")}, r"filter on 'score': NaN matches nothing"),
        ({"score": {"lt": 10**5000}}, r"filter on 'score': an integer of 16610 bits is too large for a 64-bit float"),
        ({"doc_id": 6}, r"filter on 'doc_id': the field holds strings \(a document id written as 6 is stored as '6'\)"),
        ({"doc_id": ["a", 6]}, r"filter on 'doc_id': the field holds strings"),
        ({"title": 2024}, r"filter on 'title': the field holds strings"),
        ({'say "hi"': "x"}, r"filter on 'say \"hi\"': a key with a double quote or a backslash cannot be filtered"),
        # Qdrant's paths quote such a key without escapes: the embedded engine refused it with a bare ValueError
        ({"C:\\share": "yes"}, r"filter on 'C:\\\\share': a key with a double quote or a backslash cannot be"),
        ({"topic": {"a": object()}}, r"filter on 'topic'"),
        ({"topic": object()}, r"filter on 'topic': unsupported value"),
        # 'metadata.' keys (a payload path) are checked like the others, not handed to the engine as they are
        ({"metadata.": "x"}, r"filter on 'metadata.': after 'metadata.' comes a path of keys"),
        ({'metadata.a"b': "x"}, r"filter on 'metadata.a\"b': after 'metadata.' comes a path"),
        ({"metadata.a..b": 1}, r"filter on 'metadata.a..b'"),
        ({"metadata.a b": 1}, r"filter on 'metadata.a b'.*filter on the key itself \(without 'metadata.'\)"),
        ({"a": DEEP}, r"the filter nests dicts and lists deeper than 64 levels"),
    ],
)
def test_bad_filters_name_the_field(filled, flt, message):
    with pytest.raises(FilterError, match=message):
        filled.count(flt)


NUMBERS = [
    ("f", 0, (1, 0, 0, 0), {1: 1.0}, {"stars": 4.0, "big": 2**53 + 1}),  # 4.0: as pandas or JSON write it
    ("i", 0, (0, 1, 0, 0), {2: 1.0}, {"stars": 4, "big": 2**53}),
    ("t", 0, (0, 0, 1, 0), {3: 1.0}, {"stars": 3}),
    ("l", 0, (0, 0, 0, 1), {4: 1.0}, {"stars": [3.0, 5]}),
    ("h", 1, (1, 1, 0, 0), {5: 1.0}, {"hash": 2**64 - 59}),  # an older collection may hold an unsigned 64-bit hash
]


def test_a_number_matches_whether_stored_as_integer_or_float(store):
    store.ensure(SCHEMA)
    put(store, NUMBERS)
    for four in (4, 4.0, [4], [4.0], (4, 4.0), np.int64(4), [np.float32(4.0)]):  # numpy's too, as pandas gives
        assert docs(store, {"stars": four}) == {"f", "i"}, four
    assert docs(store, {"stars": 3}) == docs(store, {"stars": 3.0}) == {"t", "l"}
    assert docs(store, {"stars": [5, 4]}) == {"f", "i", "l"}
    assert docs(store, {"stars": {"gte": 4, "lte": 4}}) == {"f", "i"}
    assert docs(store, {"big": 2**53}) == {"i"}  # exact beyond a float's 53 bits: 2**53 + 1 is another number
    assert docs(store, {"big": 2**53 + 1}) == {"f"}
    assert docs(store, {"chunk_index": 1}) == docs(store, {"chunk_index": 1.0}) == {"h"}
    with pytest.raises(FilterError, match="filter on 'hash': 18446744073709551557 is outside the 64-bit"):
        store.query(QueryPlan(dense=unit(1, 1, 1, 1), limit=10, filter={"hash": 2**64 - 59}))


def test_a_key_with_dots_matches_the_key_as_written_or_a_nested_field(store):
    store.ensure(SCHEMA)
    put(
        store,
        [
            ("a", 0, (1, 0, 0, 0), {1: 1.0}, {"dc.creator": "Ann", "a b": 1, "x[0]": "y"}),
            ("b", 0, (0, 1, 0, 0), {2: 1.0}, {"dc": {"creator": "Bob"}, "links": [{"to": "c"}, {"to": "d"}]}),
            ("c", 0, (0, 0, 1, 0), {3: 1.0}, {"dc": {"title": "T"}}),
        ],
    )
    assert docs(store, {"dc.creator": "Ann"}) == {"a"}
    assert docs(store, {"dc.creator": "Bob"}) == {"b"}
    assert docs(store, {"dc.creator": ["Ann", "Bob", "Cy"]}) == {"a", "b"}
    assert docs(store, {"dc.creator": None}) == {"c"}  # missing under both readings
    assert docs(store, {"a b": 1}) == {"a"}
    assert docs(store, {"x[0]": "y"}) == {"a"}
    assert docs(store, {"links[].to": "d"}) == {"b"}
    assert docs(store, {"metadata.dc.creator": "Bob"}) == {"b"}  # a payload path into the metadata
    assert docs(store, {"metadata.links[1].to": "d"}) == {"b"}


def test_none_matches_a_missing_null_or_empty_field(store):
    store.ensure(SCHEMA)
    put(
        store,
        [
            ("missing", 0, (1, 0, 0, 0), {1: 1.0}, {}),
            ("null", 0, (0, 1, 0, 0), {2: 1.0}, {"tags": None}),
            ("empty", 0, (0, 0, 1, 0), {3: 1.0}, {"tags": []}),
            ("tagged", 0, (0, 0, 0, 1), {4: 1.0}, {"tags": ["x"]}),
            ("blank", 0, (1, 1, 0, 0), {5: 1.0}, {"tags": ""}),
        ],
    )
    assert docs(store, {"tags": None}) == {"missing", "null", "empty"}  # Qdrant's IsEmpty, as the README says


def test_a_string_matches_as_stored_composed_or_decomposed(store):
    """An e with an acute accent, one character or two, is one document id (index and delete treat it so) and one
    value: a filter in either form finds what is stored in the other, written by this release or an earlier one."""
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    store.ensure(SCHEMA)
    put(
        store,
        [
            (composed, 0, (1, 0, 0, 0), {1: 1.0}, {"tenant": composed}),
            ("x", 0, (0, 1, 0, 0), {2: 1.0}, {"tenant": decomposed, "tags": ["A\u030angstro\u0308m", "b"]}),
            ("y", 0, (0, 0, 1, 0), {3: 1.0}, {"tenant": "cafe", "tags": ["b"]}),
        ],
    )
    assert docs(store, {"doc_id": decomposed}) == docs(store, {"doc_id": composed}) == {composed}
    assert docs(store, {"doc_id": [decomposed, "y"]}) == {composed, "y"}
    assert docs(store, {"tenant": composed}) == docs(store, {"tenant": decomposed}) == {composed, "x"}
    assert docs(store, {"tags": "\u00c5ngstr\u00f6m"}) == docs(store, {"tags": ["\u00c5ngstr\u00f6m"]}) == {"x"}
    assert docs(store, {"tenant": "cafe"}) == {"y"}  # an accent is no normalization: another value


def test_a_value_of_another_type_matches_nothing_and_filter_misses_says_why(store):
    """A string never matches a stored number, nor a number a stored string, nor a range of numbers ISO dates:
    valid filters (a key may hold numbers in one collection, strings in another) that find nothing, so
    filter_misses (what the CLI prints for a filter with no hits) names the type the key holds."""
    store.ensure(SCHEMA)
    put(
        store,
        [
            ("a", 0, (1, 0, 0, 0), {1: 1.0}, {"year": 2020, "at": "2021-02-03", "code": "7", "n": 1, "tag": "x"}),
            ("b", 0, (0, 1, 0, 0), {2: 1.0}, {"year": 2019, "at": "2020-01-01", "code": "8", "n": 2, "tag": "y"}),
        ],
    )
    for wrong in ({"year": "2020"}, {"year": ["2020"]}, {"code": 7}, {"at": {"gte": 2021}}):
        assert docs(store, wrong) == set(), wrong
    with pytest.raises(FilterError, match=r"'2000' is not an ISO 8601 date or datetime \(a range of numbers takes"):
        store.count({"n": {"gte": "2000"}})  # a string bound must be an ISO date: refused, not read as a number
    assert docs(store, {"year": 2020.0}) == docs(store, {"code": "7"}) == {"a"}
    assert filter_misses(store, {"year": 2020.0}) == []
    assert filter_misses(store, {"year": "2020"}) == [
        "'year' holds numbers: {\"year\": 2020} matches 1 point (a string never matches a number)"
    ]
    assert filter_misses(store, {"year": ["2019", "2020.0"], "tag": "x"}) == [
        "'year' holds numbers: {\"year\": [2019, 2020]} matches 2 points (a string never matches a number)"
    ]
    assert filter_misses(store, {"code": [7.0, 8.5]}) == [
        '\'code\' holds strings: {"code": ["7", "8.5"]} matches 1 point (a number never matches a string)'
    ]
    assert filter_misses(store, {"at": {"gte": 2021}}) == [
        "'at' holds ISO dates on 2 points: a range of numbers never matches one (give ISO dates)"
    ]
    assert filter_misses(store, {"n": {"lt": dt.date(2000, 1, 1)}}) == [
        "'n' holds numbers on 2 points: a range of dates never matches one (give numbers)"
    ]
    assert filter_misses(store, {"tag": "z", "nokey": "x", "year": 2020}) == [
        "'tag' is on 2 points, none matching \"z\"",
        "no point has 'nokey'",
    ]
    assert filter_misses(store, {"year": 2019, "tag": "x"}) == [
        "each condition matches some points, but no point matches all of them"
    ]
