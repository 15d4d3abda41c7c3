"""First-stage fusion per document, per-channel scores on hits, and the reranker's agreement gate."""

import numpy as np
import pytest

from retrieval import HybridRetriever, Indexer, RetrievalSettings
from retrieval.fusion import document_ranks, fuse
from retrieval.rerank import EmbeddingReranker, RerankConfig
from retrieval.store import StoredHit
from tests.conftest import LEXICAL_QUERY, TINY_DOCS


def hits(*names: str) -> list[StoredHit]:
    """Chunks named '<doc><n>' (e.g. 'a1', 'a2'), best first, scores decreasing."""
    return [StoredHit(n, 1.0 - i / 10, {"doc_id": n[0]}) for i, n in enumerate(names)]


def test_ranks_count_documents_not_their_chunks():
    chunk_rank, doc_rank = document_ranks(hits("a1", "a2", "a3", "b1", "c1", "b2"))
    assert doc_rank == {"a": 1, "b": 2, "c": 3}
    assert chunk_rank == {"a1": 1, "a2": 2, "a3": 3, "b1": 2, "c1": 3, "b2": 3}


def test_a_document_found_by_different_chunks_in_each_channel_is_fused_as_one():
    # Chunk-level RRF would put a1 (dense 1) or c1 (sparse 1) first; document b is 2nd in both channels.
    fused = fuse({"dense": hits("a1", "b1", "a2"), "sparse": hits("c1", "b2", "c2")}, rrf_k=60)
    assert fused[0].doc_id == "b"
    assert {f.id: f.ranks for f in fused}["b1"] == {"dense": 2}
    assert fused[0].score == pytest.approx(2 / 62)
    chunk_level = {"a1": 1 / 61, "c1": 1 / 61, "b1": 1 / 62, "b2": 1 / 62}
    assert max(chunk_level.values()) < fused[0].score


def test_single_channel_keeps_its_order_and_raw_scores():
    fused = fuse({"dense": hits("a1", "b1", "a2")})
    assert [f.id for f in fused] == ["a1", "b1", "a2"] and [f.score for f in fused] == [1.0, 0.9, 0.8]


@pytest.fixture(scope="module")
def retriever(dense_encoder, sparse_encoder, tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    settings = RetrievalSettings(qdrant_path=root, cache_dir=root / "cache", collection="fusion")
    indexer = Indexer(settings, dense=dense_encoder, sparse=sparse_encoder)
    indexer.index(TINY_DOCS, progress=False)
    yield HybridRetriever(settings, store=indexer.store, dense=dense_encoder, sparse=sparse_encoder)
    indexer.store.close()


def test_hits_carry_each_channels_raw_score(retriever):
    query, expected = LEXICAL_QUERY
    top = retriever.search(query, k=8, rerank=False)
    assert top[0].doc_id == expected and top[0].sparse_score > 0
    vectors = retriever.store.dense_vectors([h.chunk_id for h in top])
    q = retriever.dense.encode_query(query)
    for hit in top:
        assert hit.dense_score == pytest.approx(float(vectors[hit.chunk_id] @ q), abs=1e-4)
    # a chunk without any query term is not in the sparse channel's list: no sparse score, no sparse rank
    missing = [h for h in top if h.sparse_rank is None]
    assert missing and all(h.sparse_score is None for h in missing)


def test_reranking_keeps_the_first_stage_when_the_channels_agree_on_nothing(dense_encoder):
    ranks = [(1, None), (None, 1), (3, 4), (2, 9)]  # (dense, sparse) rank of each candidate, first-stage order
    vectors = np.eye(4, dtype=np.float32)
    q = np.array([0.0, 0.0, 0.0, 1.0], dtype=np.float32)  # alone, the query would put the last candidate first
    gated = EmbeddingReranker(dense_encoder, RerankConfig(weight=1.0, agreement=3, feedback_k=2))
    assert gated.feedback_rows(ranks) == []
    assert gated.scores("q", q, [""] * 4, vectors, ranks) is None
    assert list(np.argsort(-gated.fuse(None, 4))) == [0, 1, 2, 3]
    wider = EmbeddingReranker(dense_encoder, RerankConfig(weight=1.0, agreement=10, feedback_k=2, beta=4.0))
    assert wider.feedback_rows(ranks) == [2, 3]
    scores = wider.scores("q", q, [""] * 4, vectors, ranks)
    assert scores is not None and set(np.argsort(-scores)[:2]) == {2, 3}
    no_gate = EmbeddingReranker(dense_encoder, RerankConfig(agreement=0, feedback_k=2))
    assert no_gate.feedback_rows(ranks) == [0, 1]
