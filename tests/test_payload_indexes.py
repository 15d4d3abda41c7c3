"""PAYLOAD_INDEXES: payload indexes on the metadata keys a deployment filters on, as the engine reports them."""

from __future__ import annotations

import logging

import pytest
from qdrant_client import models as qm

from retrieval import RetrievalSettings
from retrieval.errors import FilterError, InvalidArgumentError
from retrieval.settings import parse_payload_indexes
from retrieval.store import CollectionSchema
from retrieval.store.base import filter_misses
from retrieval.store.server import payload_index_schema
from tests.conftest import BACKENDS, TINY_DOCS, make_store
from tests.test_filters import docs
from tests.test_store_contract import put

INDEXES = "topic:tenant, year:integer"
WANTED = {"topic": "tenant", "year": "integer"}
FILTERS = [{"topic": "cooking"}, {"topic": ["home", "science"]}, {"year": 2019}, {"year": {"gte": 2020}}]


def test_setting_is_parsed_and_normalized():
    settings = RetrievalSettings(payload_indexes=" year:INTEGER,topic:tenant , published:datetime ")
    assert settings.payload_indexes == "published:datetime,topic:tenant,year:integer"
    assert parse_payload_indexes(settings.payload_indexes) == {
        "published": "datetime",
        "topic": "tenant",
        "year": "integer",
    }
    assert RetrievalSettings(payload_indexes="").payload_indexes is None
    assert parse_payload_indexes("author.name:keyword") == {"author.name": "keyword"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("topic", "is not key:type"),
        ("topic:text", "unknown index type 'text'; valid: keyword, tenant"),
        ("topic:keyword,topic:tenant", "'topic' is listed twice"),
        ("a b:keyword", "is not key:type"),
    ],
)
def test_bad_setting_is_one_line_naming_the_item(text, reason):
    with pytest.raises(InvalidArgumentError, match=f"payload_indexes: .*{reason}"):
        RetrievalSettings(payload_indexes=text)


def test_edge_engine_reports_the_indexes_created(tmp_path):
    store = make_store("edge", tmp_path)
    try:
        store.ensure(_schema())
        assert store.payload_indexes() == {}  # doc_id's own index is not a metadata key's
        kinds = {"k": "keyword", "t": "tenant", "i": "integer", "f": "float", "d": "datetime", "b": "bool"}
        assert store.index_payload(kinds) == kinds
        assert store.payload_indexes() == kinds
        assert store.index_payload(kinds) == {}  # nothing to do the second time
        assert store.index_payload({"i": "float"}) == {"i": "float"}  # another type replaces the index
        assert store.payload_indexes()["i"] == "float"
    finally:
        store.close()


def test_server_requests_are_accepted_and_local_mode_says_it_keeps_none(tmp_path):
    """qdrant-client's local mode keeps no payload indexes (a real server is not available here): the requests the
    server path sends must still be valid qdrant-client calls, and the store must not pretend to have indexes."""
    assert payload_index_schema("tenant") == qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
    assert payload_index_schema("datetime") is qm.PayloadSchemaType.DATETIME
    store = make_store("server", tmp_path)
    try:
        store.ensure(_schema())
        for key, kind in {"k": "keyword", "t": "tenant", "i": "integer", "f": "float", "d": "datetime"}.items():
            store._create_payload_index(key, kind)
        assert store.payload_indexes() is None
        assert store.missing_payload_indexes(WANTED) == {}  # nothing a write could add
    finally:
        store.close()


def test_indexes_exist_after_creation_and_results_are_unchanged(indexed_stack):
    plain = indexed_stack("edge").retriever(rerank=False)
    indexed_stack_ = indexed_stack("edge", payload_indexes=INDEXES)
    assert indexed_stack_.store().payload_indexes() == WANTED
    indexed = indexed_stack_.retriever(rerank=False)
    for spec in FILTERS:
        expected = [(h.chunk_id, h.score) for h in plain.search("water and leaks", k=10, filter=spec)]
        assert expected  # every filter keeps something
        assert [(h.chunk_id, h.score) for h in indexed.search("water and leaks", k=10, filter=spec)] == expected


def test_next_write_adds_the_indexes_to_an_existing_collection(indexed_stack, caplog):
    stack = indexed_stack("edge")
    before = stack.store().current_version()
    wanting = stack.derive(payload_indexes=INDEXES)
    try:
        with caplog.at_level(logging.WARNING, logger="retrieval.search"):
            wanting.retriever().search("valve", filter={"topic": "home"})
        assert "has no payload index for topic:tenant, year:integer (PAYLOAD_INDEXES)" in caplog.text
        report = wanting.indexer().index(TINY_DOCS, progress=False)  # nothing changed but the indexes
        assert report.written == 0 and wanting.store().current_version() == before + 1
        assert wanting.store().payload_indexes() == WANTED
        assert wanting.indexer().index(TINY_DOCS, progress=False).version == before + 1  # now nothing to do
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="retrieval.search"):
            hits = wanting.retriever().search("valve", filter={"topic": "home"})
        assert [h.doc_id for h in hits] == ["valve"] and "PAYLOAD_INDEXES" not in caplog.text
    finally:
        wanting.close()


def test_an_erasing_rewrite_keeps_the_indexes(indexed_stack):
    """A delete rewrites the version from its live points (no trace of the deleted text): with its indexes."""
    stack = indexed_stack("edge", payload_indexes=INDEXES)
    stack.indexer().delete_documents(["pasta"])
    assert stack.store().payload_indexes() == WANTED
    assert [h.doc_id for h in stack.retriever().search("noodles", filter={"topic": "cooking"})] == []


DATED = [
    ("a", 0, (1, 0, 0, 0), {1: 1.0}, {"year": 2020, "date": "2021-02-03"}),
    ("b", 0, (0, 1, 0, 0), {2: 1.0}, {"year": 2019, "date": "2020-01-01T10:00:00Z"}),
]
DATED_INDEXES = {"year": "integer", "date": "datetime"}


def _dated(backend, root, indexes):
    store = make_store(backend, root)
    store.ensure(_schema())
    store.index_payload(indexes)
    put(store, DATED)
    return store


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_filter_finds_the_same_points_with_and_without_an_index_or_is_refused(tmp_path, backend):
    """An integer or datetime index reads a bound of the other type as a Unix timestamp (a number range on dates
    matched every point, an ISO range on years too, where the same filter without the index matches none): such a
    filter is refused on an indexed key, naming the key, its index and the form to give; others find the same."""
    plain, indexed = _dated(backend, tmp_path / "plain", {}), _dated(backend, tmp_path / "indexed", DATED_INDEXES)
    try:
        has_indexes = indexed.payload_indexes() is not None  # qdrant-client's local mode keeps none
        same = [{"year": {"gte": 2020}}, {"year": 2019.0}, {"year": {"gte": 2030}}, {"date": {"gte": "2020-06-01"}}]
        for spec in [*same, {"date": {"lt": "2020-01-02"}}, {"date": {"gte": "2030-01-01"}}, {"year": "2020"}]:
            assert docs(indexed, spec) == docs(plain, spec), spec
        for spec, given in [
            ({"date": {"gte": 2021}}, "a number, but the key has a datetime payload index .*give ISO dates"),
            ({"date": {"lt": 2021}}, "a number, but the key has a datetime"),
            ({"date": [2021, 2020]}, "a number, but the key has a datetime"),
            ({"year": {"lt": "2030-01-01"}}, "an ISO date, but the key has an integer payload index .*give numbers"),
            ({"year": {"gte": "1960-01-01"}}, "an ISO date, but the key has an integer payload index"),
        ]:
            assert docs(plain, spec) == set(), spec
            key = next(iter(spec))
            if not has_indexes:
                assert docs(indexed, spec) == set(), spec
                continue
            with pytest.raises(FilterError, match=f"filter on '{key}': {given}"):
                indexed.count(spec)
            with pytest.raises(FilterError, match=f"filter on '{key}': {given}"):
                docs(indexed, spec)
    finally:
        plain.close()
        indexed.close()


def test_filter_misses_names_the_type_an_indexed_key_holds(tmp_path):
    """On an indexed key, filter_misses looks for values of the index's type only (the index would convert
    the others): a number range beyond every year is no 'holds ISO dates', an ISO range no 'holds numbers'."""
    plain, indexed = _dated("edge", tmp_path / "plain", {}), _dated("edge", tmp_path / "indexed", DATED_INDEXES)
    try:
        for spec, note in [
            ({"year": {"gte": 2030}}, "'year' is on 2 points, none matching {\"gte\": 2030}"),
            ({"date": {"gte": "2030-01-01"}}, '\'date\' is on 2 points, none matching {"gte": "2030-01-01"}'),
            ({"date": "2021"}, "'date' is on 2 points, none matching \"2021\""),
            (
                {"year": "2020"},
                "'year' holds numbers: {\"year\": 2020} matches 1 point (a string never matches a number)",
            ),
        ]:
            assert filter_misses(indexed, spec) == filter_misses(plain, spec) == [note], spec
    finally:
        plain.close()
        indexed.close()


def _schema() -> CollectionSchema:
    return CollectionSchema(dense_model="synthetic", dense_dim=4, sparse_model="bm25", sparse_idf=True)


def test_a_missing_index_is_warned_once_not_per_retriever(indexed_stack, caplog):
    # README: "a retriever per request, closed after it, costs nothing"; each one logged the warning again
    wanting = indexed_stack("edge").derive(payload_indexes=INDEXES)
    try:
        with caplog.at_level(logging.WARNING, logger="retrieval.search"):
            for _ in range(3):
                retriever = wanting.retriever(k=3)
                retriever.search("valve", filter={"topic": "home"})
                retriever.close()
        assert caplog.text.count("has no payload index for topic:tenant, year:integer") == 1
    finally:
        wanting.close()
