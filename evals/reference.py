"""Reference rankings the retriever is held to: Okapi BM25 (rank-bm25) over whole documents, exact dense
cosine over the collection's stored chunk vectors (best chunk per document), and plain RRF (k=60) of the two.

They share nothing with the retriever's query path (no Qdrant query, no BM25 of ours), so a gap between a
channel and its reference points at that channel.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property

import numpy as np

from evals.runs import Run, best_chunk_per_document
from retrieval.documents import Document
from retrieval.encoders import DenseEncoder
from retrieval.store import QdrantStore

# Lowercased, English stopwords dropped, Snowball-stemmed: as bm25s / Pyserini do for BEIR.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
    ]
)
_WORD = re.compile(r"[a-z0-9]+")


def bm25_tokens(text: str) -> list[str]:
    import snowballstemmer

    stemmer = snowballstemmer.stemmer("english")
    return stemmer.stemWords([w for w in _WORD.findall(text.lower()) if w not in STOPWORDS])


class ReferenceRankings:
    """Reference runs over one collection: ``bm25``, ``dense`` (exact), ``rrf`` (of the two, k=60)."""

    def __init__(self, docs: Sequence[Document], store: QdrantStore, dense: DenseEncoder, depth: int = 100):
        self.docs, self.store, self.dense, self.depth = list(docs), store, dense, depth

    @cached_property
    def _bm25(self):
        from rank_bm25 import BM25Okapi

        return BM25Okapi([bm25_tokens(f"{d.title}\n{d.text}") for d in self.docs])

    @cached_property
    def _chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """(doc id of every stored chunk, their dense vectors) in one fixed order."""
        owners = self.store.stored_hashes()
        ids = sorted(owners)
        vectors = self.store.dense_vectors(ids)
        return np.array([owners[i][0] for i in ids]), np.stack([vectors[i] for i in ids])

    def bm25(self, queries: dict[str, str]) -> Run:
        ids = [d.id for d in self.docs]
        run: Run = {}
        for qid, text in queries.items():
            scores = self._bm25.get_scores(bm25_tokens(text))
            top = np.argsort(-scores, kind="stable")[: self.depth]
            run[qid] = {ids[i]: float(scores[i]) for i in top if scores[i] > 0}
        return run

    def dense_exact(self, queries: dict[str, str]) -> Run:
        owners, vectors = self._chunks
        q = self.dense.encode_queries(list(queries.values()))
        run: Run = {}
        for qid, scores in zip(queries, q @ vectors.T, strict=True):
            order = np.argsort(-scores, kind="stable")
            run[qid] = best_chunk_per_document(((str(owners[i]), float(scores[i])) for i in order), self.depth)
        return run

    def all(self, queries: dict[str, str], k: int = 60) -> dict[str, Run]:
        bm25, dense = self.bm25(queries), self.dense_exact(queries)
        return {"ref bm25": bm25, "ref dense (exact)": dense, "ref rrf": rrf([bm25, dense], k)}


def rrf(runs: Sequence[Run], k: int = 60) -> Run:
    """Plain reciprocal rank fusion of document runs: sum of 1 / (k + rank)."""
    out: Run = {}
    for run in runs:
        for qid, ranking in run.items():
            fused = out.setdefault(qid, {})
            for rank, doc in enumerate(sorted(ranking, key=lambda d: -ranking[d]), start=1):
                fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    return out
