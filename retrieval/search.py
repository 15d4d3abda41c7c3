"""Hybrid search: dense and sparse candidates fused inside Qdrant, then optionally reranked."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from retrieval.encoders import DenseEncoder
from retrieval.encoders.sparse import Bm25Encoder, SpladeEncoder
from retrieval.errors import EmptyQueryError, InvalidArgumentError, choice
from retrieval.indexer import build_encoders, collection_schema, encoder_lock
from retrieval.rerank import EmbeddingReranker, RerankConfig
from retrieval.settings import RetrievalSettings
from retrieval.store import QdrantStore, QueryPlan, SchemaMismatchError, StoredHit, open_store


class Variant(StrEnum):
    """Which channels answer a query."""

    DENSE = "dense"
    SPARSE = "sparse"
    HYBRID = "hybrid"
    HYBRID_RERANK = "hybrid+rerank"


class GroupBy(StrEnum):
    """What one hit stands for: a chunk (default), or a document (its best chunk)."""

    CHUNK = "chunk"
    DOC = "doc"


GROUP_OVERFETCH = 4  # group_by="doc" ranks max(GROUP_OVERFETCH * k, prefetch_k) chunks to fill k documents


@dataclass
class Hit:
    """One retrieved chunk with where it came from."""

    doc_id: str
    chunk_id: str
    text: str
    score: float
    chunk_index: int | None = None
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    dense_rank: int | None = None
    sparse_rank: int | None = None
    fused_rank: int | None = None
    rerank_score: float | None = None

    @classmethod
    def from_stored(cls, hit: StoredHit, score: float | None = None) -> Hit:
        p = hit.payload
        return cls(
            doc_id=str(p.get("doc_id", "")),
            chunk_id=hit.id,
            chunk_index=p.get("chunk_index"),
            text=p.get("text", ""),
            title=p.get("title", ""),
            metadata=p.get("metadata", {}) or {},
            score=hit.score if score is None else score,
        )


class HybridRetriever:
    """``search(query)`` -> ranked :class:`Hit` list; batched with ``search_batch``.

    Safe to share between threads. Each search first follows a rebuild of the collection (the embedded engine
    reopens the new version; a server resolves the alias itself) and checks the schema again after a switch.
    """

    def __init__(
        self,
        settings: RetrievalSettings | None = None,
        *,
        store: QdrantStore | None = None,
        dense: DenseEncoder | None = None,
        sparse: Bm25Encoder | SpladeEncoder | None = None,
        reranker: EmbeddingReranker | None = None,
    ):
        self.settings = settings or RetrievalSettings()
        default_dense, default_sparse = (None, None) if dense and sparse else build_encoders(self.settings)
        self.dense = dense or default_dense
        self.sparse = sparse or default_sparse
        self.store = store or open_store(self.settings)
        # Queries may have their own encoder, trained against the stored document vectors (E2Rank-style,
        # `hybrid-rag tune-reranker`); it serves the dense channel and the reranker's pseudo-queries.
        self.query_encoder = self.dense
        if self.settings.query_model:
            self.query_encoder = DenseEncoder(
                self.settings.query_model,
                device=self.dense.device,
                batch_size=self.dense.batch_size,
                query_prompt=self.dense.query_prompt,
            )
        self.reranker = reranker or EmbeddingReranker(
            self.dense, RerankConfig.from_settings(self.settings), query_encoder=self.query_encoder
        )
        self._checked = False
        self.last_timings: dict[str, float] = {}

    def check_schema(self) -> None:
        """Refuse to query a collection whose vectors came from other models."""
        if self._checked:
            return
        existing = self.store.schema()
        if existing is None:
            raise SchemaMismatchError(
                f"collection {self.store.collection!r} does not exist at {self.store.location}; index documents first"
            )
        problems = collection_schema(self.dense, self.sparse).differences(existing)
        if problems:
            raise SchemaMismatchError(
                f"collection {self.store.collection!r} was built with other models: " + "; ".join(problems)
            )
        self._checked = True

    def search(
        self,
        query: str,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        rerank: bool | None = None,
        variant: Variant | str = Variant.HYBRID,
        *,
        group_by: GroupBy | str = GroupBy.CHUNK,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """The ``k`` best hits for ``query``; see :meth:`search_batch` for the arguments."""
        return self.search_batch(
            [query],
            k=k,
            filter=filter,
            rerank=rerank,
            variant=variant,
            group_by=group_by,
            score_threshold=score_threshold,
        )[0]

    def search_batch(
        self,
        queries: Sequence[str],
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        rerank: bool | None = None,
        variant: Variant | str = Variant.HYBRID,
        *,
        group_by: GroupBy | str = GroupBy.CHUNK,
        score_threshold: float | None = None,
    ) -> list[list[Hit]]:
        """Search many queries with one encoder call per channel and one batched Qdrant request.

        ``k`` (default: settings) hits per query; ``filter``: metadata conditions (see
        :func:`~retrieval.store.base.filter_conditions`); ``rerank`` (default: settings); ``group_by="doc"``:
        one hit per document, its best chunk; ``score_threshold``: drop hits whose final ``score`` is lower.
        Empty queries, ``k < 1`` and unknown names raise :class:`~retrieval.errors.InvalidArgumentError`.
        """
        # -- arguments (checked before any work); group_by="doc" ranks more chunks to fill k documents
        requested_k, group_by = self._check_arguments(queries, k, group_by, score_threshold)
        variant = choice(Variant, variant, "variant")
        k = max(GROUP_OVERFETCH * requested_k, self.settings.prefetch_k) if group_by is GroupBy.DOC else requested_k
        # -- ranking
        if self.store.refresh():
            self._checked = False
        self.check_schema()
        if variant is Variant.HYBRID_RERANK:
            variant, rerank = Variant.HYBRID, True
        rerank = self.settings.rerank_enabled if rerank is None else rerank
        rerank = rerank and variant is Variant.HYBRID
        t0 = time.perf_counter()
        dense_q, sparse_q = None, None
        if variant is not Variant.SPARSE:
            with encoder_lock(self.query_encoder):
                dense_q = self.query_encoder.encode_queries(queries)
        if variant is not Variant.DENSE:
            with encoder_lock(self.sparse):
                sparse_q = self.sparse.encode_queries(queries)
        t1 = time.perf_counter()
        depth = max(k, self.reranker.config.depth) if rerank else k
        plans = []
        for i in range(len(queries)):
            plans.append(
                self.fused_plan(
                    dense_q[i] if dense_q is not None else None,
                    sparse_q[i] if sparse_q is not None else None,
                    depth,
                    filter,
                    with_vectors=rerank,
                )
            )
            if variant is Variant.HYBRID:  # the channels alone, for each hit's per-channel rank
                s = self.settings
                plans.append(QueryPlan(dense=dense_q[i], limit=s.prefetch_k, filter=filter, with_payload=False))
                plans.append(QueryPlan(sparse=sparse_q[i], limit=s.prefetch_k, filter=filter, with_payload=False))
        try:
            results = self.store.query_batch(plans)
        except Exception:
            self._checked = False  # was the collection rebuilt with other models meanwhile? Say so if it was.
            self.check_schema()
            raise
        t2 = time.perf_counter()
        step = 3 if variant is Variant.HYBRID else 1
        out = []
        for i, query in enumerate(queries):
            stored = sorted(results[i * step], key=lambda h: (-h.score, h.id))  # ties in a stable order
            hits = [Hit.from_stored(h) for h in stored]
            for rank, hit in enumerate(hits, start=1):
                hit.fused_rank = rank if variant is Variant.HYBRID else None
            if variant is Variant.HYBRID:
                dense_ranks = {h.id: r for r, h in enumerate(results[i * step + 1], start=1)}
                sparse_ranks = {h.id: r for r, h in enumerate(results[i * step + 2], start=1)}
                for hit in hits:
                    hit.dense_rank = dense_ranks.get(hit.chunk_id)
                    hit.sparse_rank = sparse_ranks.get(hit.chunk_id)
            elif variant is Variant.DENSE:
                for rank, hit in enumerate(hits, start=1):
                    hit.dense_rank = rank
            else:
                for rank, hit in enumerate(hits, start=1):
                    hit.sparse_rank = rank
            if rerank and hits:
                with encoder_lock(self.reranker.query_encoder):  # it may encode
                    hits = self._rerank(query, dense_q[i], stored, hits)
            out.append(hits[:k])
        t3 = time.perf_counter()
        self.last_timings = {"encode_s": t1 - t0, "qdrant_s": t2 - t1, "rerank_s": t3 - t2}
        # -- results: one hit per document, threshold, k
        return [_finish(hits, requested_k, group_by, score_threshold) for hits in out]

    def _check_arguments(
        self, queries: Sequence[str], k: int | None, group_by: GroupBy | str, score_threshold: float | None
    ) -> tuple[int, GroupBy]:
        if isinstance(queries, str):
            raise InvalidArgumentError("search_batch takes a list of queries, not one string (use search)")
        for position, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                where = "" if len(queries) == 1 else f" (queries[{position}])"
                raise EmptyQueryError(f"empty query{where}: give some text to search for")
        k = self.settings.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgumentError(f"k must be a positive integer, got {k!r}")
        if score_threshold is not None and not isinstance(score_threshold, int | float):
            raise InvalidArgumentError(f"score_threshold must be a number, got {score_threshold!r}")
        return k, choice(GroupBy, group_by, "group_by")

    def fused_plan(
        self, dense: np.ndarray | None, sparse, limit: int, filter: dict[str, Any] | None, with_vectors: bool
    ) -> QueryPlan:
        """The first-stage Qdrant request for one query: the channels given, fused as the settings say."""
        s = self.settings
        return QueryPlan(
            dense=dense,
            sparse=sparse,
            limit=limit,
            prefetch_k=max(s.prefetch_k, limit),
            fusion=s.fusion,
            rrf_k=s.rrf_k,
            weights=(s.dense_weight, s.sparse_weight),
            filter=filter,
            with_dense_vectors=with_vectors,
        )

    def _rerank(self, query: str, query_vector: np.ndarray, stored: list[StoredHit], hits: list[Hit]) -> list[Hit]:
        vectors = np.stack([h.dense_vector for h in stored])
        texts = [h.text for h in hits]
        rerank_scores = self.reranker.scores(query, query_vector, texts, vectors)
        final = self.reranker.fuse(rerank_scores)
        for hit, rs, fs in zip(hits, rerank_scores, final, strict=True):
            hit.rerank_score, hit.score = float(rs), float(fs)
        return sorted(hits, key=lambda h: (-h.score, h.chunk_id))

    def as_langchain(self, search_kwargs: dict[str, Any] | None = None, **kwargs: Any):
        """This retriever as a LangChain ``BaseRetriever``.

        ``search_kwargs`` (k, filter, rerank, variant, group_by, score_threshold) are the defaults of every call,
        as in LangChain's ``VectorStoreRetriever``; ``as_langchain(k=5)`` is short for
        ``as_langchain(search_kwargs={"k": 5})``; ``invoke(query, k=3)`` overrides them for one call.
        """
        from retrieval.langchain import LangChainRetriever

        return LangChainRetriever(retriever=self, search_kwargs={**(search_kwargs or {}), **kwargs})

    def as_llamaindex(self, **kwargs: Any):
        """This retriever as a LlamaIndex ``BaseRetriever`` (extra ``[llamaindex]``)."""
        from retrieval.llamaindex import LlamaIndexRetriever

        return LlamaIndexRetriever(self, **kwargs)

    def as_haystack(self, **kwargs: Any):
        """This retriever as a Haystack 2 component (extra ``[haystack]``)."""
        from retrieval.haystack import HaystackRetriever

        return HaystackRetriever(self, **kwargs)

    def close(self) -> None:
        self.store.close()


def _finish(hits: list[Hit], k: int, group_by: GroupBy, score_threshold: float | None) -> list[Hit]:
    """The final list: the best chunk of each document (``group_by="doc"``), scores >= threshold, at most k."""
    if group_by is GroupBy.DOC:
        seen: set[str] = set()
        hits = [h for h in hits if not (h.doc_id in seen or seen.add(h.doc_id))]
    if score_threshold is not None:
        hits = [h for h in hits if h.score >= score_threshold]
    return hits[:k]
