"""The encode/upsert pipeline batches chunks by length yet keeps every vector with its own chunk."""

import numpy as np
import pytest

from retrieval import Document
from retrieval.store import QueryPlan
from tests.conftest import BACKENDS, TINY_DOCS

# lengths from a few words to several chunks, in no particular order
MIXED_DOCS = [
    *TINY_DOCS,
    Document("long", " ".join(f"Sentence {i} on gaskets, valves and boiler pressure." for i in range(90))),
    Document("short", "Valves."),
    Document("medium", "Pressure relief valves open when the boiler pressure exceeds its rating. " * 4),
]


@pytest.fixture(params=BACKENDS)
def indexer(request, indexed_stack):
    stack = indexed_stack(request.param, [], embedding_cache=False, upsert_batch_size=4)
    yield stack.indexer()
    stack.close()


@pytest.mark.parametrize("indexer", ["edge"], indirect=True)  # encoding does not involve the store
def test_encode_dense_returns_rows_in_input_order(indexer, dense_encoder):
    chunks = indexer.chunk(MIXED_DOCS)
    lengths = [len(c.embed_text) for c in chunks]
    assert lengths != sorted(lengths, reverse=True)  # the pipeline has to reorder them
    vectors, reused = indexer.encode_dense(chunks)
    one_by_one = np.stack([dense_encoder.encode_documents([c.embed_text])[0] for c in chunks])
    assert reused == 0
    assert np.min(np.sum(vectors * one_by_one, axis=1)) > 0.9999


def test_given_vectors_stay_with_their_chunks(indexer, monkeypatch):
    import retrieval.indexer as indexer_module

    monkeypatch.setattr(indexer_module, "ENCODE_BLOCK", 8)  # several blocks, several upserts each
    chunks = indexer.chunk(MIXED_DOCS)
    rng = np.random.default_rng(7)
    dense = rng.normal(size=(len(chunks), indexer.dense.dimension)).astype(np.float32)
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    sparse = indexer.encode_sparse(chunks)
    report = indexer.sync(chunks, vectors=(dense, sparse), progress=False)
    assert report.points == len(chunks) > 8
    found = indexer.store.query_batch([QueryPlan(dense=v, limit=1, with_payload=False) for v in dense])
    assert [hits[0].id for hits in found] == [c.id for c in chunks]
