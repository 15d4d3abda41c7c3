"""Retrieval quality on SciFact (../shared/datasets/scifact): the figures users compare with BEIR's.

Indexing SciFact embeds ~10k chunks (minutes on a CPU); the vectors are shared through the on-disk
embedding cache (~/.cache/hybrid-rag), so later runs on the same machine only re-read them.
"""

from __future__ import annotations

import pytest

from evals.collections import load_collection
from evals.metrics import evaluate
from evals.runner import evaluate_variants
from evals.tuning import first_stage_lists, rerank_run, tune_reranker
from retrieval import HybridRetriever, Indexer, RetrievalSettings, read_documents
from retrieval.rerank import EmbeddingReranker
from tests.conftest import SCIFACT

pytestmark = [
    pytest.mark.scifact,
    pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(), reason=f"{SCIFACT} is not present"),
]


@pytest.fixture(scope="module")
def scifact(tmp_path_factory, dense_encoder, sparse_encoder):
    root = tmp_path_factory.mktemp("scifact")
    settings = RetrievalSettings(qdrant_path=root / "index", collection="scifact", rerank=False)
    docs, _ = read_documents(SCIFACT)
    indexer = Indexer(settings, dense=dense_encoder, sparse=sparse_encoder)
    report = indexer.index(docs)
    retriever = HybridRetriever(settings, store=indexer.store, dense=dense_encoder, sparse=sparse_encoder)
    yield load_collection(SCIFACT), retriever, report, root
    indexer.store.close()


@pytest.fixture(scope="module")
def test_results(scifact):
    coll, retriever, _, _ = scifact
    return evaluate_variants(retriever, coll.split_queries("test"), coll.qrels("test"), progress=False)


def test_every_document_is_indexed(scifact):
    _, _, report, _ = scifact
    assert report.documents == 5183
    assert report.points == report.chunks >= 5183


def test_channels_match_published_figures(test_results):
    ndcg = {v: r.metrics["ndcg@10"] for v, r in test_results.items()}
    print("SciFact test nDCG@10:", {v: round(x, 4) for v, x in ndcg.items()})
    assert ndcg["dense"] >= 0.63  # MTEB all-MiniLM-L6-v2: 0.645
    assert ndcg["sparse"] >= 0.66  # BM25 (bm25s, stemming): 0.686
    assert ndcg["hybrid"] >= 0.70  # RRF of the two: 0.717
    assert ndcg["hybrid"] > max(ndcg["dense"], ndcg["sparse"])
    assert test_results["hybrid"].metrics["recall@100"] >= 0.93


def test_tuned_and_trained_reranker_beats_hybrid_without_seeing_test(scifact, test_results, tmp_path):
    coll, retriever, _, _ = scifact
    profile = tune_reranker(coll.train_view(), retriever, tmp_path / "reranker", epochs=4)
    assert profile.dev_reranked >= profile.dev_first_stage
    reranker = EmbeddingReranker(retriever.dense, profile.config)
    lists = first_stage_lists(retriever, coll.split_queries("test"))
    first = evaluate(coll.qrels("test"), rerank_run(lists, None)).mean["ndcg@10"]
    reranked = evaluate(coll.qrels("test"), rerank_run(lists, reranker)).mean["ndcg@10"]
    print(f"SciFact test nDCG@10: first stage {first:.4f}, tuned+trained rerank {reranked:.4f} ({profile.config})")
    assert reranked >= first + 0.005
