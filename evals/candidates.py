"""First-stage candidate lists of a collection's queries (what the reranker sees), and runs from them.

Shared by reranker tuning (:mod:`evals.tuning`) and pseudo-query encoder training (:mod:`evals.training`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evals.runs import best_chunk_per_document
from retrieval.rerank import EmbeddingReranker
from retrieval.search import HybridRetriever, agreement_ranks


@dataclass
class CandidateList:
    """One query's first-stage candidates (best first) with their stored dense vectors."""

    qid: str
    query: str
    query_vector: np.ndarray
    doc_ids: list[str]
    texts: list[str]
    vectors: np.ndarray
    ranks: list[tuple[int | None, int | None]] | None = None  # each candidate's (dense, sparse) rank, for the gate


def first_stage_lists(
    retriever: HybridRetriever, queries: dict[str, str], depth: int = 100, batch: int = 64
) -> list[CandidateList]:
    """The hybrid first stage for every query, with the candidates' stored vectors (what the reranker sees)."""
    qids = list(queries)
    out: list[CandidateList] = []
    for start in range(0, len(qids), batch):
        part = qids[start : start + batch]
        texts = [queries[q] for q in part]
        dense, candidates = retriever.first_stage(texts, "hybrid", depth, with_vectors=True)
        for i, hits in enumerate(candidates):
            out.append(
                CandidateList(
                    qid=part[i],
                    query=texts[i],
                    query_vector=dense[i],
                    doc_ids=[h.doc_id for h in hits],
                    texts=[h.text for h in hits],
                    vectors=np.stack([h.dense_vector for h in hits]) if hits else np.zeros((0, dense.shape[1])),
                    ranks=agreement_ranks(hits),
                )
            )
    return out


def rerank_run(lists: Sequence[CandidateList], reranker: EmbeddingReranker | None) -> dict[str, dict[str, float]]:
    """A run (best chunk per document) from candidate lists, reranked when ``reranker`` is given."""
    run: dict[str, dict[str, float]] = {}
    for cl in lists:
        n = len(cl.doc_ids)
        if reranker is None or n == 0:
            final = 1.0 / (np.arange(n) + 1.0)
        else:
            final = reranker.fuse(reranker.scores(cl.query, cl.query_vector, cl.texts, cl.vectors, cl.ranks), n)
        order = np.argsort(-final, kind="stable")
        run[cl.qid] = best_chunk_per_document((cl.doc_ids[pos], float(final[pos])) for pos in order)
    return run
