"""Retrieval quality on SciFact (../shared/datasets/scifact): the figures users compare with BEIR's.

Indexing SciFact embeds ~10k chunks (minutes on a CPU); the vectors are shared through the on-disk
embedding cache (~/.cache/hybrid-rag), so later runs on the same machine only re-read them.
"""

from __future__ import annotations

import pytest

from evals.collections import load_collection
from evals.long_queries import long_queries
from evals.metrics import evaluate
from evals.reference import ReferenceRankings
from evals.runner import evaluate_variants
from evals.tuning import tune_reranker
from retrieval import RetrievalSettings, RetrievalStack, read_documents
from tests.conftest import SCIFACT

pytestmark = [
    pytest.mark.scifact,
    pytest.mark.slow,
    pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(), reason=f"{SCIFACT} is not present"),
]


@pytest.fixture(scope="module")
def scifact(tmp_path_factory, dense_encoder, sparse_encoder):
    root = tmp_path_factory.mktemp("scifact")
    settings = RetrievalSettings(qdrant_path=root / "index", collection="scifact", rerank=False)
    docs, _ = read_documents(SCIFACT)
    stack = RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder)
    report = stack.indexer().index(docs)
    yield load_collection(SCIFACT), stack.retriever(), report, root
    stack.close()


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
    assert test_results["hybrid"].metrics["recall@100"] >= 0.955  # on 100 documents (0.9577; 0.9510 on ~77)


def test_default_reranking_does_not_hurt(test_results):
    """Reranking is on by default without any training: it must not cost nDCG@10, and the default reaches 0.73."""
    ndcg = {v: r.metrics["ndcg@10"] for v, r in test_results.items()}
    assert ndcg["hybrid+rerank"] >= ndcg["hybrid"] - 0.002
    assert ndcg["hybrid+rerank"] >= 0.73  # issue 9 goal, without training (0.7314)


@pytest.fixture(scope="module")
def long_query_ndcg(scifact) -> dict[str, float]:
    """nDCG@10 on long queries: a 100-300 word abstract as the query, the other abstracts judged for the same
    claim as its relevant set; our channels, hybrid and the references."""
    coll, retriever, _, _ = scifact
    queries, qrels = long_queries(coll, "test")
    assert len(queries) >= 40
    docs, _ = read_documents(coll.corpus_path, "jsonl")
    results = evaluate_variants(retriever, queries, qrels, ["dense", "sparse", "hybrid"], progress=False)
    ndcg = {v: r.metrics["ndcg@10"] for v, r in results.items()}
    reference = ReferenceRankings(docs, retriever.store, retriever.dense).all(queries)
    ndcg |= {name: evaluate(qrels, run).mean["ndcg@10"] for name, run in reference.items()}
    print(f"SciFact long queries ({len(queries)}) nDCG@10:", {v: round(x, 4) for v, x in ndcg.items()})
    return ndcg


def test_long_queries_hybrid_is_not_far_below_a_channel(long_query_ndcg):
    ndcg = long_query_ndcg
    assert ndcg["hybrid"] >= max(ndcg["dense"], ndcg["sparse"]) - 0.01


@pytest.mark.xfail(
    strict=True,
    reason="issue 9, not met on these 48 queries: z-score fusion (chosen on SciFact train long queries, 0.618 -> "
    "0.635) gives hybrid 0.667 here vs sparse 0.674 and reference RRF 0.675; RRF k=10 alone gives 0.675",
)
def test_long_queries_hybrid_beats_the_reference_fusion_and_the_better_channel(long_query_ndcg):
    ndcg = long_query_ndcg
    assert ndcg["hybrid"] >= ndcg["ref rrf"] - 0.005
    assert ndcg["hybrid"] >= max(ndcg["dense"], ndcg["sparse"]) - 0.005


def test_trained_query_encoder_and_reranker_reach_the_goal_without_seeing_test(scifact, test_results, tmp_path):
    """E2Rank-style training on the train split only; hybrid + rerank must reach nDCG@10 >= 0.78 on test (0.786)."""
    coll, retriever, _, _ = scifact
    profile = tune_reranker(coll.train_view(), retriever, tmp_path / "reranker", epochs=4)
    assert profile.dev_first_stage > profile.dev_baseline and profile.dev_reranked >= profile.dev_first_stage
    stack = RetrievalStack(retriever.settings, store=retriever.store, dense=retriever.dense, sparse=retriever.sparse)
    tuned = stack.retriever(
        query_model=profile.query_model,
        rerank=True,
        rerank_weight=profile.config.weight,
        rerank_feedback_k=profile.config.feedback_k,
        rerank_feedback_beta=profile.config.beta,
    )
    results = evaluate_variants(tuned, coll.split_queries("test"), coll.qrels("test"), ["hybrid", "hybrid+rerank"])
    ndcg = {v: r.metrics["ndcg@10"] for v, r in results.items()}
    print(f"SciFact test nDCG@10 with the trained query encoder: {ndcg} ({profile.config})")
    assert ndcg["hybrid+rerank"] >= 0.78
    assert ndcg["hybrid+rerank"] >= test_results["hybrid"].metrics["ndcg@10"] + 0.02
