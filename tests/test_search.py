"""Hybrid search on a tiny designed corpus, on both backends."""

import pytest

from retrieval import Document
from retrieval.indexer import DocumentChunk
from retrieval.rerank import EmbeddingReranker, RerankConfig
from retrieval.search import Hit
from retrieval.settings import RerankMode
from tests.conftest import LEXICAL_QUERY, SEMANTIC_QUERY


@pytest.fixture(params=["edge", "server"], scope="module")
def retriever(request, indexed_stack):
    stack = indexed_stack(request.param, rerank=False)
    yield stack.retriever()
    stack.close()


def test_lexical_query_is_found_by_the_sparse_channel(retriever):
    query, expected = LEXICAL_QUERY
    hits = retriever.search(query, k=3)
    assert hits[0].doc_id == expected
    assert hits[0].sparse_rank == 1
    assert retriever.search(query, k=1, variant="sparse")[0].doc_id == expected


def test_semantic_query_is_found_by_the_dense_channel(retriever):
    query, expected = SEMANTIC_QUERY
    assert (
        retriever.search(query, k=1, variant="sparse") == []
        or retriever.search(query, k=1, variant="sparse")[0].doc_id != expected
    )
    hits = retriever.search(query, k=3)
    assert hits[0].doc_id == expected and hits[0].dense_rank == 1


def test_hits_carry_payload_and_ranks(retriever):
    hit = retriever.search(LEXICAL_QUERY[0], k=1)[0]
    assert hit.title == "Boiler manual" and "ZX-4471" in hit.text
    assert hit.metadata == {"topic": "home", "year": 2019}
    assert hit.fused_rank == 1 and hit.chunk_id


def test_filters_pass_through(retriever):
    hits = retriever.search("science facts", k=10, filter={"topic": "science"})
    assert {h.doc_id for h in hits} == {"moon", "bees"}
    hits = retriever.search("anything at all", k=10, filter={"year": {"gte": 2020, "lte": 2022}})
    assert {h.doc_id for h in hits} == {"pasta", "python", "bees"}


def test_batch_equals_single(retriever):
    queries = [LEXICAL_QUERY[0], SEMANTIC_QUERY[0], "inflation and interest rates"]
    batch = retriever.search_batch(queries, k=5)
    for q, hits in zip(queries, batch, strict=True):
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in retriever.search(q, k=5)]


@pytest.mark.parametrize("mode", [RerankMode.FEEDBACK, RerankMode.PROMPT])
def test_reranker_modes_reorder_with_stored_vectors(retriever, mode):
    reranker = EmbeddingReranker(retriever.dense, RerankConfig(mode=mode, weight=1.0, feedback_k=2))
    first = retriever.search("blood pressure and the heart", k=8, rerank=False)
    original, retriever.reranker = retriever.reranker, reranker
    try:
        reranked = retriever.search("blood pressure and the heart", k=8, rerank=True)
    finally:
        retriever.reranker = original
    assert {h.chunk_id for h in reranked} == {h.chunk_id for h in first}
    assert all(h.rerank_score is not None for h in reranked)
    assert reranked[0].doc_id == "heart"
    # weight=1: the order is exactly the pseudo-query cosine order
    scores = [h.rerank_score for h in reranked]
    assert scores == sorted(scores, reverse=True)


def test_zero_weight_rerank_keeps_first_stage_order(retriever):
    reranker = EmbeddingReranker(retriever.dense, RerankConfig(weight=0.0))
    original, retriever.reranker = retriever.reranker, reranker
    try:
        reranked = retriever.search("roman history", k=8, rerank=True)
    finally:
        retriever.reranker = original
    assert [h.chunk_id for h in reranked] == [h.chunk_id for h in retriever.search("roman history", k=8, rerank=False)]


FILLERS = ["apple", "river", "stone", "cloud", "piano", "tiger", "lemon", "candle"]
# the same BM25 terms and length for "aspirin trial" (every one ties in the sparse channel), other dense vectors
TIED_DOCS = [Document(f"d{i}", f"aspirin trial {w} {w} {w}") for i, w in enumerate(FILLERS)] + [
    Document(f"x{i}", text)
    for i, text in enumerate(["statins lower cholesterol", "exercise improves mood", "bone density in women"])
]


@pytest.mark.parametrize("backend", ["edge", "server"])
def test_ties_at_the_channel_cut_give_the_same_hits_whatever_the_build(backend, indexed_stack):
    """Eight chunks tie in the sparse channel, cut at 3 (PREFETCH_K): the same documents indexed in either order
    give the same hits for every variant, grouping and batch, and a tied list's top 3 are its top 5's first 3."""
    answers = []
    for name, docs in (("fwd", TIED_DOCS), ("rev", TIED_DOCS[::-1])):
        stack = indexed_stack(backend, docs, collection=f"ties-{name}", prefetch_k=3, rerank=False)
        r, query = stack.retriever(), "aspirin trial"
        searches = [r.search(query, k=5), r.search(query, k=5, group_by="doc"), r.search_batch([query, "trial"])[0]]
        searches += [r.search(query, k=k, variant=v) for v in ("sparse", "dense") for k in (3, 5)]
        assert [h.chunk_id for h in searches[3]] == [h.chunk_id for h in searches[4]][:3]
        answers.append([[(h.chunk_id, h.score, h.dense_rank, h.sparse_rank) for h in hits] for hits in searches])
        stack.close()
    assert answers[0] == answers[1]


def test_reprs_of_hits_chunks_and_documents_show_the_heads_of_their_texts():
    """A REPL or notebook listing 10 hits showed every chunk's whole text (256 tokens each, and a document's whole
    metadata): the repr shows the head of each long string and its length; ``str``, fields and equality are as
    before."""
    text = "Pasta needs plenty of salted boiling water and a stir in the first minute. " * 20
    metadata = {"abstract": text, "year": 2024, **{f"tag{i}": i for i in range(10)}}
    hit = Hit("pasta", "c-1", text, 0.03, chunk_index=2, title="Cooking", metadata=metadata, dense_rank=1)
    shown = repr(hit)
    assert len(shown) < 500 < len(text) and str(hit) == shown
    assert "text='Pasta needs plenty of salted boiling water and a stir in the…' (1,500 chars)" in shown
    assert "'abstract': 'Pasta" in shown and "... 7 more}" in shown and "dense_rank=1" in shown
    assert hit == Hit("pasta", "c-1", text, 0.03, chunk_index=2, title="Cooking", metadata=dict(metadata), dense_rank=1)
    assert hit.text == text and hit.metadata == metadata
    for other in (Document("pasta", text, metadata=metadata), DocumentChunk("pasta", 0, text, doc_hash="h")):
        assert len(repr(other)) < 500 and "(1,500 chars)" in repr(other)
