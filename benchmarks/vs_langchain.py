"""Our stack vs LangChain's ``QdrantVectorStore`` (hybrid mode) on SciFact, same machine, same run.

LangChain side, as a user would run it without a server: ``QdrantVectorStore.from_documents`` on
qdrant-client's local mode (``path=...``), ``RetrievalMode.HYBRID`` with the same SentenceTransformer (a small
``Embeddings`` wrapper) and BM25 sparse vectors from the same ``qdrant_edge.Bm25`` (a ``SparseEmbeddings``
wrapper; ``FastEmbedSparse`` would download its model) with the IDF modifier that BM25 needs. Both sides get
the same chunks (our chunker's output), so they embed the same texts.

Our side: ``Indexer`` into the embedded engine (Qdrant Edge) and ``HybridRetriever.search`` with the default
settings (RRF over 100 candidates per channel, embedding reranking).

Dense document vectors come from the embedding cache on both sides by default (``--no-cache`` embeds them
afresh on both sides): indexing time then compares everything but the document encoder. Figures: indexing
time, search p50/p95 at k=10 (queries alternate between the two stacks), nDCG@10 from runs at depth 100.

    python -m benchmarks.vs_langchain [--max-docs 0] [--queries 300] [--no-cache] [--rrf-k K]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from benchmarks.common import (
    console,
    eval_subset,
    goal,
    machine_info,
    percentiles,
    print_machine,
    require_scifact,
    run_and_report,
    table,
    timed_ms,
    workdir,
)

DEPTH = 100
K = 10
SPEED_GOAL = 2.0


def langchain_classes():
    from langchain_core.embeddings import Embeddings
    from langchain_qdrant.sparse_embeddings import SparseEmbeddings, SparseVector

    class SentenceTransformerEmbeddings(Embeddings):
        """LangChain ``Embeddings`` over our DenseEncoder's SentenceTransformer, optionally through a cache."""

        def __init__(self, dense, cache=None):
            self.dense, self.cache = dense, cache

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            if self.cache is not None:
                vectors, _ = self.cache.encode_through(self.dense.cache_key, texts, self.dense.encode_documents)
            else:
                vectors = self.dense.encode_documents(texts)
            return np.asarray(vectors).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.dense.encode_query(text).tolist()

    class Bm25SparseEmbeddings(SparseEmbeddings):
        """LangChain ``SparseEmbeddings`` over the same ``qdrant_edge.Bm25`` our BM25 encoder uses."""

        def __init__(self, bm25):
            self.bm25 = bm25

        def embed_documents(self, texts: list[str]) -> list[SparseVector]:
            return [SparseVector(indices=v.indices, values=v.values) for v in self.bm25.encode_documents(texts)]

        def embed_query(self, text: str) -> SparseVector:
            v = self.bm25.encode_query(text)
            return SparseVector(indices=v.indices, values=v.values)

    return SentenceTransformerEmbeddings, Bm25SparseEmbeddings


def run(
    max_docs: int | None = None,
    queries: int = 300,
    use_cache: bool = True,
    data: str | None = None,
    cache_dir: str | None = None,
    rrf_k: int | None = None,
) -> dict[str, Any]:
    from langchain_core.documents import Document as LCDocument
    from langchain_qdrant import QdrantVectorStore, RetrievalMode
    from qdrant_client import models

    from evals.metrics import evaluate
    from evals.runs import best_chunk_per_document
    from retrieval import RetrievalSettings, RetrievalStack
    from retrieval.embedding_cache import EmbeddingCache

    root = require_scifact(data)
    subset = eval_subset(root, max_docs, max_queries=queries)
    out: dict[str, Any] = {"docs": len(subset.docs), "queries": len(subset.queries), "cache": use_cache}
    out["rrf_k"] = rrf_k
    with workdir() as tmp:
        extra: dict[str, Any] = {"cache_dir": cache_dir} if cache_dir else {}
        if rrf_k:
            extra["rrf_k"] = rrf_k
        settings = RetrievalSettings(qdrant_path=tmp / "ours", collection="scifact", embedding_cache=use_cache, **extra)
        stack = RetrievalStack(settings)
        indexer = stack.indexer()
        dense, sparse = indexer.dense, indexer.sparse
        dense.encode_documents(["warm-up"])
        out["machine"] = machine_info(device=dense.runs_on)
        chunks = indexer.chunk(subset.docs)
        out["chunks"] = len(chunks)

        # -- ours ------------------------------------------------------------------------------------
        started = time.perf_counter()
        report = indexer.sync(chunks, progress=False, documents=len(subset.docs))
        out["ours_index_s"] = time.perf_counter() - started
        out["ours_points"] = report.points
        out["rrf_k"] = settings.rrf_k
        retriever = stack.retriever()

        # -- LangChain -------------------------------------------------------------------------------
        st_embeddings, bm25_embeddings = langchain_classes()
        cache = EmbeddingCache(settings.cache_dir / "embeddings.sqlite") if use_cache else None
        documents = [
            LCDocument(page_content=c.embed_text, metadata={"doc_id": c.doc_id, "chunk_index": c.chunk_index})
            for c in chunks
        ]
        started = time.perf_counter()
        theirs = QdrantVectorStore.from_documents(
            documents,
            embedding=st_embeddings(dense, cache),
            sparse_embedding=bm25_embeddings(sparse),
            retrieval_mode=RetrievalMode.HYBRID,
            path=str(tmp / "langchain"),
            collection_name="scifact",
            sparse_vector_params={"modifier": models.Modifier.IDF},
            batch_size=settings.dense_batch_size,
        )
        out["theirs_index_s"] = time.perf_counter() - started
        out["theirs_points"] = theirs.client.count("scifact").count

        # -- quality: runs at depth 100 --------------------------------------------------------------
        ids = list(subset.queries)
        texts = [subset.queries[q] for q in ids]
        for q in texts[:5]:  # warm-up both
            retriever.search(q, k=K)
            theirs.similarity_search_with_score(q, k=K)
        ours_run, theirs_run = {}, {}
        for qid, text in zip(ids, texts, strict=True):
            hits = retriever.search(text, k=DEPTH)
            ours_run[qid] = best_chunk_per_document((h.doc_id, h.score) for h in hits)
            found = theirs.similarity_search_with_score(text, k=DEPTH)
            theirs_run[qid] = best_chunk_per_document((d.metadata["doc_id"], s) for d, s in found)
        out["ours_ndcg"] = evaluate(subset.qrels, ours_run).mean["ndcg@10"]
        out["theirs_ndcg"] = evaluate(subset.qrels, theirs_run).mean["ndcg@10"]

        # -- latency at k=10, alternating ------------------------------------------------------------
        ours_ms, theirs_ms = [], []
        for text in texts:
            ours_ms.append(timed_ms(lambda t=text: retriever.search(t, k=K))[1])
            theirs_ms.append(timed_ms(lambda t=text: theirs.similarity_search_with_score(t, k=K))[1])
        out["ours_ms"], out["theirs_ms"] = percentiles(ours_ms), percentiles(theirs_ms)
        theirs.client.close()
        stack.close()
    out["load_after"] = os.getloadavg()[0]
    out["speedup"] = out["theirs_ms"]["p50"] / out["ours_ms"]["p50"]
    out["goal_quality"] = out["ours_ndcg"] >= out["theirs_ndcg"]
    out["goal_speed"] = out["speedup"] >= SPEED_GOAL
    return out


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"], result["load_after"])
    rows = [
        [
            f"hybrid-rag (Qdrant Edge, RRF k={result['rrf_k']} over 100+100, rerank)",
            result["ours_index_s"],
            result["ours_points"],
            result["ours_ms"]["p50"],
            result["ours_ms"]["p95"],
            result["ours_ndcg"],
        ],
        [
            "LangChain QdrantVectorStore HYBRID (local mode, RRF k=2 over k+k)",
            result["theirs_index_s"],
            result["theirs_points"],
            result["theirs_ms"]["p50"],
            result["theirs_ms"]["p95"],
            result["theirs_ndcg"],
        ],
    ]
    cache = "dense document vectors from the embedding cache on both sides" if result["cache"] else "no cache"
    console.print(
        table(
            f"vs LangChain on SciFact: {result['docs']:,} docs -> {result['chunks']:,} chunks, "
            f"{result['queries']} test queries, same dense model and BM25",
            ["stack", "index s", "points", f"search p50 ms (k={K})", "search p95 ms", "nDCG@10"],
            rows,
            caption=(
                f"{cache}; search speed-up {result['speedup']:.1f}x (goal ≥ {SPEED_GOAL:.0f}x: "
                f"{goal(result['goal_speed'])}); nDCG@10 ours ≥ theirs: {goal(result['goal_quality'])}"
            ),
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from retrieval.settings import RetrievalSettings

    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_langchain", description=__doc__.splitlines()[0])
    parser.add_argument("--max-docs", type=int, default=0, help="SciFact docs (0: the whole corpus)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-cache", action="store_true", help="embed documents afresh on both sides (slow)")
    parser.add_argument("--data", default=None, help="SciFact directory (BEIR layout)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache directory (default: settings)")
    rrf_k = RetrievalSettings.model_fields["rrf_k"].default
    parser.add_argument("--rrf-k", type=int, default=None, help=f"our RRF constant (default: settings, {rrf_k})")
    args = parser.parse_args(argv)
    return run_and_report(
        lambda: run(args.max_docs or None, args.queries, not args.no_cache, args.data, args.cache_dir, args.rrf_k),
        report,
    )


if __name__ == "__main__":
    main()
