"""Synthetic points for the engine benchmarks: 384-d unit vectors and BM25-like sparse vectors.

Sparse terms follow a Zipf-like law (rank ``r`` has weight ``1 / r**1.07``) over a 30k vocabulary, about 60
distinct terms per point; weights are BM25-saturated term frequencies. Queries draw about 6 terms from the
same law but skip the 100 most frequent ranks (the stopwords a real BM25 tokenizer removes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from retrieval.chunking import Chunk
from retrieval.encoders.sparse import SparseVec
from retrieval.store import CollectionSchema, EdgeStore, QueryPlan

DIM = 384
VOCAB = 30_000
TERMS_PER_DOC = 60
QUERY_TERMS = 6
STOPWORD_RANKS = 100
SCHEMA = CollectionSchema(dense_model="synthetic", dense_dim=DIM, sparse_model="bm25", sparse_idf=True)


@dataclass
class SyntheticData:
    seed: int = 0
    vocab: int = VOCAB
    zipf_s: float = 1.07

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        weights = 1.0 / np.arange(1, self.vocab + 1) ** self.zipf_s
        self.p = weights / weights.sum()
        tail = weights.copy()
        tail[:STOPWORD_RANKS] = 0
        self.query_p = tail / tail.sum()

    def dense(self, n: int) -> np.ndarray:
        v = self.rng.standard_normal((n, DIM), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def sparse(self, n: int) -> list[SparseVec]:
        # about 1.35 draws per distinct term at this law and length: 80 draws give ~60 distinct terms
        draws = self.rng.choice(self.vocab, size=(n, int(TERMS_PER_DOC * 1.35)), p=self.p)
        out = []
        for row in draws:
            terms, tf = np.unique(row, return_counts=True)
            out.append(SparseVec(terms.tolist(), (tf * 2.2 / (tf + 1.2)).tolist()))
        return out

    def chunks(self, start: int, n: int) -> list[Chunk]:
        return [Chunk(f"syn-{i}", 0, f"synthetic point {i}", "", {"group": i % 100}) for i in range(start, start + n)]

    def batches(self, start: int, stop: int, batch: int = 1000) -> Iterator[tuple[list[Chunk], np.ndarray, list]]:
        for s in range(start, stop, batch):
            n = min(batch, stop - s)
            yield self.chunks(s, n), self.dense(n), self.sparse(n)

    def queries(self, n: int, limit: int = 10, prefetch_k: int = 100) -> list[QueryPlan]:
        plans = []
        for q in self.dense(n):
            terms = np.unique(self.rng.choice(self.vocab, size=QUERY_TERMS, p=self.query_p))
            sparse = SparseVec(terms.tolist(), [1.0] * len(terms))
            plans.append(QueryPlan(dense=q, sparse=sparse, limit=limit, prefetch_k=prefetch_k))
        return plans


def fill(store: EdgeStore, data: SyntheticData, start: int, stop: int, batch: int = 1000) -> dict[str, float]:
    """Upsert points ``start..stop``; returns seconds spent generating and upserting (kept apart)."""
    generate = upsert = 0.0
    batches = data.batches(start, stop, batch)
    while True:
        t0 = time.perf_counter()
        item = next(batches, None)
        t1 = time.perf_counter()
        generate += t1 - t0
        if item is None:
            break
        store.upsert(*item)
        upsert += time.perf_counter() - t1
    t0 = time.perf_counter()
    store.flush()
    upsert += time.perf_counter() - t0
    return {"generate_s": generate, "upsert_s": upsert}


def build(root, n: int, collection: str = "synthetic", seed: int = 0) -> tuple[EdgeStore, SyntheticData, dict]:
    """A fresh embedded collection with ``n`` synthetic points (not yet optimized)."""
    store = EdgeStore(root, collection)
    store.ensure(SCHEMA)
    data = SyntheticData(seed=seed)
    return store, data, fill(store, data, 0, n)
