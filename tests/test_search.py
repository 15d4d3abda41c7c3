"""Hybrid search on a tiny designed corpus, on both backends."""

import json
import pickle

import pytest

from retrieval import Document
from retrieval.errors import InvalidArgumentError
from retrieval.indexer import DocumentChunk
from retrieval.rerank import EmbeddingReranker, RerankConfig
from retrieval.search import Hit
from retrieval.settings import RerankMode
from tests.conftest import BACKENDS, DUPLICATED, LEXICAL_QUERY, MOON_QUERY, SEMANTIC_QUERY


@pytest.fixture(params=BACKENDS, scope="module")
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


@pytest.mark.parametrize("backend", BACKENDS)
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


def test_a_notebook_shows_a_searchs_hits_as_a_table_of_the_same_list(retriever):
    """A notebook showed a list of hits as a wall of reprs: it shows a table (rank, score, id, title, the head of the
    text); callers still get a list of the same hits (equality, slicing, JSON, pickling)."""
    hits = retriever.search(LEXICAL_QUERY[0], k=3)
    table = hits._repr_html_()
    assert table.startswith("<table><caption>3 hits</caption><thead><tr><th>rank</th><th>score</th><th>doc_id</th>")
    first = hits[0]
    assert f'<td style="text-align: right">1</td><td style="text-align: right">{first.score:.4f}</td>' in table
    assert f">{first.doc_id}</td>" in table and f">{first.title}</td>" in table and first.text[:40] in table
    assert isinstance(hits, list) and hits == list(hits) and hits[:1] == [first] and type(hits[:1]) is list
    assert repr(hits) == repr(list(hits)) and json.dumps(hits, default=vars) == json.dumps(list(hits), default=vars)
    assert pickle.loads(pickle.dumps(hits)) == hits and retriever.search_batch([LEXICAL_QUERY[0]], k=3) == [hits]
    assert "<caption>0 hits</caption>" in type(hits)()._repr_html_()
    long = type(hits)([Hit("d", "c", "<b>" + "word " * 100, 0.5, title="A & B")])._repr_html_()
    assert "&lt;b&gt;word word" in long and ">A &amp; B</td>" in long  # escaped
    assert "…</td>" in long and "word " * 40 not in long  # the head of a long text


# -- diversity (maximal marginal relevance) -------------------------------------------------------------------------
@pytest.fixture(params=BACKENDS, scope="module")
def duplicated(request, indexed_stack):
    stack = indexed_stack(request.param, DUPLICATED, collection="dup")
    yield stack.retriever()
    stack.close()


@pytest.mark.parametrize("rerank", [True, False])
def test_diversity_drops_a_duplicate_that_the_default_ranking_keeps(duplicated, rerank):
    default = [h.doc_id for h in duplicated.search(MOON_QUERY, k=3, rerank=rerank)]
    assert {"moon", "moon-copy"} <= set(default[:2])
    diverse = duplicated.search(MOON_QUERY, k=3, rerank=rerank, diversity=0.5)
    assert len(diverse) == 3 and diverse[0].doc_id == default[0]  # the best hit first, then unlike ones
    assert len({"moon", "moon-copy"} & {h.doc_id for h in diverse}) == 1
    assert all(h.text and h.dense_vector is None for h in diverse)  # payloads read, vectors dropped
    assert "diversity_s" in duplicated.last_timings
    batch = duplicated.search_batch([MOON_QUERY, LEXICAL_QUERY[0]], k=3, rerank=rerank, diversity=0.5)
    assert batch[0] == diverse and batch[1] == duplicated.search(LEXICAL_QUERY[0], k=3, rerank=rerank, diversity=0.5)


def test_diversity_works_with_filters_group_by_doc_thresholds_and_variants(duplicated):
    science = duplicated.search(MOON_QUERY, k=2, filter={"topic": "science"}, group_by="doc", diversity=0.5)
    assert [h.doc_id for h in science][1:] == ["bees"]  # one of the two moons, then the other science document
    hits = duplicated.search(MOON_QUERY, k=3, variant="dense", diversity=0.5)
    assert len({"moon", "moon-copy"} & {h.doc_id for h in hits}) == 1
    only_moons = duplicated.search(MOON_QUERY, k=3, variant="sparse", diversity=0.5)  # no other document matches
    assert sorted(h.doc_id for h in only_moons) == ["moon", "moon-copy"]
    scores = [h.score for h in duplicated.search(MOON_QUERY, k=10, rerank=False, variant="dense")]
    cut = scores[3]
    kept = duplicated.search(MOON_QUERY, k=10, variant="dense", diversity=0.9, score_threshold=cut)
    assert len(kept) == 4 and min(h.score for h in kept) >= cut


def test_diversity_off_or_zero_gives_the_same_hits(duplicated):
    for kwargs in ({}, {"rerank": False}, {"variant": "sparse"}, {"group_by": "doc"}):
        default = duplicated.search(MOON_QUERY, k=5, **kwargs)
        assert duplicated.search(MOON_QUERY, k=5, diversity=None, **kwargs) == default
        assert duplicated.search(MOON_QUERY, k=5, diversity=0, diversity_depth=3, **kwargs) == default


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_diversity_outside_0_to_1_is_refused(duplicated, value):
    with pytest.raises(InvalidArgumentError, match=r"diversity must be a number from 0 .* to 1 .* got"):
        duplicated.search(MOON_QUERY, diversity=value)
    with pytest.raises(InvalidArgumentError, match="diversity_depth must be a positive integer, got 0"):
        duplicated.check_arguments(diversity=0.5, diversity_depth=0)
