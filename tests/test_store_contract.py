"""One contract, two backends: the embedded engine (Qdrant Edge) and the server API (qdrant-client local mode)."""

from types import SimpleNamespace

import numpy as np
import pytest

from retrieval import Chunk
from retrieval.encoders.sparse import SparseVec
from retrieval.store import CollectionSchema, QdrantStore, QueryPlan, SchemaMismatchError
from tests.conftest import BACKENDS, make_store

SCHEMA = CollectionSchema(dense_model="toy", dense_dim=4, sparse_model="bm25", sparse_idf=True)


def unit(*xs):
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def put(store, rows):
    """rows: (doc_id, chunk_index, dense, {term: weight}, metadata)"""
    chunks = [Chunk(d, i, f"text of {d}/{i}", "", meta) for d, i, _, _, meta in rows]
    dense = np.stack([unit(*v) for _, _, v, _, _ in rows])
    sparse = [SparseVec(list(t.keys()), list(t.values())) for _, _, _, t, _ in rows]
    store.upsert(chunks, dense, sparse)
    return chunks


ROWS = [
    ("a", 0, (1, 0, 0, 0), {1: 1.0, 2: 0.5}, {"topic": "x", "year": 2001}),
    ("a", 1, (1, 1, 0, 0), {2: 1.0}, {"topic": "x", "year": 2001}),
    ("b", 0, (0, 1, 0, 0), {3: 1.0}, {"topic": "y", "year": 2010}),
    ("c", 0, (0, 0, 1, 0), {4: 1.0, 1: 0.2}, {"topic": "z", "year": 2020}),
]


def test_create_then_refuse_other_models(store):
    assert store.schema() is None
    store.ensure(SCHEMA)
    assert store.schema() == SCHEMA
    store.ensure(SCHEMA)  # same models: fine
    with pytest.raises(SchemaMismatchError, match="dense_dim"):
        store.ensure(CollectionSchema("other", 8, "bm25", True))


def test_upsert_is_idempotent_and_counts(store):
    store.ensure(SCHEMA)
    chunks = put(store, ROWS)
    put(store, ROWS)
    assert store.count() == 4
    hashes = store.stored_hashes()
    assert hashes == {c.id: (c.doc_id, c.content_hash) for c in chunks}


def test_delete_by_document_and_by_id(store):
    store.ensure(SCHEMA)
    chunks = put(store, ROWS)
    store.delete_documents(["a"])
    assert store.count() == 2
    store.delete_ids([chunks[2].id])
    assert {d for d, _ in store.stored_hashes().values()} == {"c"}


def test_dense_sparse_and_fused_queries(store):
    store.ensure(SCHEMA)
    chunks = put(store, ROWS)
    by_id = {c.id: c for c in chunks}
    dense = store.query(QueryPlan(dense=unit(0, 0, 1, 0), limit=2))
    assert by_id[dense[0].id].doc_id == "c"
    sparse = store.query(QueryPlan(sparse=SparseVec([3], [1.0]), limit=2))
    assert [by_id[h.id].doc_id for h in sparse] == ["b"]
    fused = store.query(
        QueryPlan(dense=unit(0, 0, 1, 0), sparse=SparseVec([3], [1.0]), limit=4, with_dense_vectors=True)
    )
    top2 = {by_id[h.id].doc_id for h in fused[:2]}
    assert top2 == {"b", "c"}  # each channel's winner
    assert fused[0].payload["doc_id"] in {"b", "c"} and fused[0].dense_vector is not None
    dbsf = store.query(QueryPlan(dense=unit(0, 0, 1, 0), sparse=SparseVec([3], [1.0]), limit=4, fusion="dbsf"))
    assert {by_id[h.id].doc_id for h in dbsf[:2]} == {"b", "c"}


def test_filters_equality_any_and_range(store):
    store.ensure(SCHEMA)
    put(store, ROWS)
    q = unit(1, 1, 1, 1)
    assert {h.payload["doc_id"] for h in store.query(QueryPlan(dense=q, limit=10, filter={"topic": "y"}))} == {"b"}
    hits = store.query(QueryPlan(dense=q, limit=10, filter={"topic": ["y", "z"]}))
    assert {h.payload["doc_id"] for h in hits} == {"b", "c"}
    hits = store.query(QueryPlan(dense=q, sparse=SparseVec([1], [1.0]), limit=10, filter={"year": {"gte": 2005}}))
    assert {h.payload["doc_id"] for h in hits} == {"b", "c"}
    assert store.count({"doc_id": "a"}) == 2


def test_stored_vectors_come_back(store):
    store.ensure(SCHEMA)
    chunks = put(store, ROWS)
    vectors = store.dense_vectors([chunks[0].id, chunks[2].id])
    np.testing.assert_allclose(vectors[chunks[0].id], unit(1, 0, 0, 0), atol=1e-6)
    np.testing.assert_allclose(vectors[chunks[2].id], unit(0, 1, 0, 0), atol=1e-6)
    both = store.stored_vectors([chunks[0].id, chunks[3].id, "00000000-0000-0000-0000-000000000000"])
    assert set(both) == {chunks[0].id, chunks[3].id}  # an id not stored is left out
    dense, sparse = both[chunks[3].id]
    np.testing.assert_allclose(dense, unit(0, 0, 1, 0), atol=1e-6)
    assert dict(zip(sparse.indices, sparse.values, strict=True)) == pytest.approx({4: 1.0, 1: 0.2})


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_scores_at_the_cut_are_taken_by_id_whatever_the_insertion_order(backend, tmp_path):
    """20 chunks tie exactly in both channels: a list cut inside the tie keeps the smallest ids, in id order, for
    a store built in either order (the engine's order of ties follows internal offsets that differ per build),
    and a shorter list is a prefix of a longer one. 20 ties outrun the read-ahead past the cut: it deepens."""
    rows = [(f"d{i:02}", 0, (1, 1, 0, 0), {7: 1.0}, {}) for i in range(20)] + [("x", 0, (0, 0, 1, 0), {8: 1.0}, {})]
    answers = []
    for order, rows_in in (("fwd", rows), ("rev", rows[::-1])):
        store = make_store(backend, tmp_path / order)
        store.ensure(SCHEMA)
        chunks = [c for row in rows_in for c in put(store, [row])]  # one point per write: offsets follow the order
        ids = sorted(c.id for c in chunks if c.doc_id != "x")
        plans = [QueryPlan(dense=unit(1, 1, 0, 0), limit=k, with_payload=False) for k in (3, 5)]
        plans += [QueryPlan(sparse=SparseVec([7], [1.0]), limit=k, with_payload=False) for k in (3, 5)]
        lists = [[h.id for h in hits] for hits in store.query_batch(plans)]
        assert lists == [ids[:3], ids[:5]] * 2
        answers.append(lists)
        store.close()
    assert answers[0] == answers[1]


def test_documents_counts_distinct_doc_ids_through_deletions(store):
    """`collections`' documents: the doc_id index's counts, which must not count a deleted document."""
    store.ensure(SCHEMA)
    assert store.documents() == 0
    put(store, ROWS)
    assert (store.documents(), store.count()) == (3, 4)
    store.delete_documents(["b"])
    store.delete_ids([Chunk("a", 0, "").id])  # a document keeps counting while one of its points is left
    assert store.documents() == 2 == QdrantStore.documents(store)  # the scroll of a version without the index
    store.delete_documents(["a", "c"])
    assert store.documents() == 0


def test_documents_falls_back_to_exact_counts_when_the_index_counts_do_not_add_up(store):
    """Index counts that add up to more than the points (a value counted from deleted points) are not trusted."""
    asked = []

    def facet(counts: dict[bool, list[int]]):
        def answer(limit: int, exact: bool) -> list[SimpleNamespace]:
            asked.append(exact)
            return [SimpleNamespace(count=c) for c in counts[exact]]

        return answer

    assert store._documents_by_facet(facet({False: [2, 1], True: [2, 0]}), 2) == 1 and asked == [False, True]
    asked.clear()
    assert store._documents_by_facet(facet({False: [1, 1], True: [2, 0]}), 2) == 2 and asked == [False]
