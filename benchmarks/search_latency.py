"""Search latency: ``HybridRetriever.search`` end to end on SciFact, the Qdrant hybrid query alone, and the
same hybrid query alone on synthetic points at 100k.

* end to end: ``retriever.search(query)`` with the default settings (query encoding, the dense and sparse
  channel lists in one request, fusion per document, payloads, embedding reranking), one query at a time, and
  the same with ``group_by="doc"`` (channel lists deepened until they hold 100 documents);
* the Qdrant part of a search (``retriever.candidates``, k=10, no rerank) from precomputed query vectors;
* Qdrant hybrid alone: ``store.query(QueryPlan(dense, sparse))`` with precomputed query vectors (prefetch
  100 per channel, RRF, top 10 with payload);
* the same plan on ``--synthetic-points`` synthetic points (see ``benchmarks.synthetic``) after optimize.

The SciFact collection is built in a temporary directory through the embedding cache (this benchmark does
not time the encoder's indexing throughput).

    python -m benchmarks.search_latency [--max-docs 0] [--queries 300] [--synthetic-points 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from benchmarks.common import (
    console,
    eval_subset,
    goal,
    machine_info,
    optimize_store,
    percentiles,
    print_machine,
    require_scifact,
    run_and_report,
    table,
    timed_ms,
    workdir,
)

E2E_GOAL_MS = 30.0
SYNTHETIC_GOAL_MS = 5.0
WARMUP = 10


def run(
    max_docs: int | None = None,
    queries: int = 300,
    synthetic_points: int = 100_000,
    data: str | None = None,
    backend: str = "torch",
    cache_dir: str | None = None,
) -> dict[str, Any]:
    from retrieval import RetrievalSettings, RetrievalStack
    from retrieval.store import QueryPlan

    root = require_scifact(data)
    subset = eval_subset(root, max_docs, max_queries=queries)
    texts = list(subset.queries.values())
    out: dict[str, Any] = {"docs": len(subset.docs), "queries": len(texts)}
    with workdir() as tmp:
        extra = {"cache_dir": cache_dir} if cache_dir else {}
        settings = RetrievalSettings(qdrant_path=tmp, collection="scifact", dense_backend="torch", **extra)
        dense = None
        if backend != "torch":
            from retrieval.encoders import DenseEncoder

            dense = DenseEncoder(settings.dense_model, batch_size=settings.dense_batch_size, backend=backend)
        stack = RetrievalStack(settings, dense=dense)
        indexer = stack.indexer()
        started = time.perf_counter()
        report = indexer.index(subset.docs, progress=False)
        out["index_s"], out["points"] = time.perf_counter() - started, report.points
        out["optimize_s"] = optimize_store(indexer.store)
        retriever = stack.retriever()
        out["machine"] = machine_info(device=indexer.dense.runs_on)
        for q in texts[:WARMUP]:
            retriever.search(q)
            retriever.search(q, group_by="doc")
        e2e, e2e_doc, doc_qdrant, parts = [], [], [], {"encode_s": [], "qdrant_s": [], "rerank_s": []}
        for q in texts:
            e2e.append(timed_ms(lambda q=q: retriever.search(q))[1])
            for key in parts:
                parts[key].append(retriever.last_timings.get(key, 0.0) * 1000)
            e2e_doc.append(timed_ms(lambda q=q: retriever.search(q, group_by="doc"))[1])
            doc_qdrant.append(retriever.last_timings.get("qdrant_s", 0.0) * 1000)
        out["e2e"], out["e2e_doc"] = percentiles(e2e), percentiles(e2e_doc)
        out["e2e_parts"] = {k: statistics.median(v) for k, v in parts.items()}
        out["e2e_doc_qdrant"] = statistics.median(doc_qdrant)
        dense_q = indexer.dense.encode_queries(texts)
        sparse_q = indexer.sparse.encode_queries(texts)
        plans = [QueryPlan(dense=d, sparse=s, limit=10, prefetch_k=100) for d, s in zip(dense_q, sparse_q, strict=True)]
        out["hybrid"] = _time_plans(indexer.store, plans)
        out["engine"] = _time_engine_part(retriever, dense_q, sparse_q)
        stack.close()
        if synthetic_points:
            from benchmarks.synthetic import SyntheticData, build

            store, _, spent = build(tmp / "synthetic", synthetic_points)
            out["synthetic_upsert_s"] = spent["upsert_s"]
            out["synthetic_optimize_s"] = optimize_store(store)
            out["synthetic"] = _time_plans(store, SyntheticData(seed=1).queries(queries))
            out["synthetic_points"] = store.count()
            store.close()
    out["load_after"] = os.getloadavg()[0]
    out["goal_e2e"] = out["e2e"]["p50"] <= E2E_GOAL_MS
    out["goal_synthetic"] = out["synthetic"]["p50"] <= SYNTHETIC_GOAL_MS if synthetic_points else None
    return out


def _time_engine_part(retriever, dense_q, sparse_q) -> dict[str, float]:
    """The Qdrant part of ``HybridRetriever.search`` (k=10, no rerank) from precomputed query vectors: the two
    channel lists in one batched request, fusion, and the payloads of the 10 hits kept."""

    def one(i: int) -> None:
        retriever.candidates(dense_q[i : i + 1], sparse_q[i : i + 1], 10)

    for i in range(min(WARMUP, len(sparse_q))):
        one(i)
    return percentiles([timed_ms(lambda i=i: one(i))[1] for i in range(len(sparse_q))])


def _time_plans(store, plans) -> dict[str, float]:
    for plan in plans[:WARMUP]:
        store.query(plan)
    return percentiles([timed_ms(lambda p=plan: store.query(p))[1] for plan in plans])


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"], result["load_after"])
    parts = result["e2e_parts"]
    rows = [
        [
            f"HybridRetriever.search (SciFact, {result['points']:,} points)",
            result["e2e"]["p50"],
            result["e2e"]["p95"],
            result["e2e"]["n"],
            f"≤ {E2E_GOAL_MS:.0f} ms: {goal(result['goal_e2e'])}",
        ],
        ["  of which: query encoding (median)", parts["encode_s"], None, None, None],
        ["  of which: Qdrant, 2 channel lists + payloads/vectors (median)", parts["qdrant_s"], None, None, None],
        ["  of which: rerank + hits (median)", parts["rerank_s"], None, None, None],
        [
            'the same, group_by="doc" (one hit per document)',
            result["e2e_doc"]["p50"],
            result["e2e_doc"]["p95"],
            result["e2e_doc"]["n"],
            None,
        ],
        ["  of which: Qdrant (median)", result["e2e_doc_qdrant"], None, None, None],
        [
            f"Qdrant hybrid query alone (SciFact, {result['points']:,} points)",
            result["hybrid"]["p50"],
            result["hybrid"]["p95"],
            result["hybrid"]["n"],
            None,
        ],
        [
            "Qdrant part of a search, k=10 (channel lists, fusion here, payloads of 10)",
            result["engine"]["p50"],
            result["engine"]["p95"],
            result["engine"]["n"],
            f"≤ 1.5x the bare fused query: {goal(result['engine']['p50'] <= 1.5 * result['hybrid']['p50'])}",
        ],
    ]
    if result.get("synthetic"):
        rows.append(
            [
                f"Qdrant hybrid query alone (synthetic, {result['synthetic_points']:,} points)",
                result["synthetic"]["p50"],
                result["synthetic"]["p95"],
                result["synthetic"]["n"],
                f"≤ {SYNTHETIC_GOAL_MS:.0f} ms: {goal(result['goal_synthetic'])}",
            ]
        )
    caption = (
        f"SciFact: {result['docs']:,} docs indexed in {result['index_s']:.0f} s (embedding cache on), optimize "
        f"{result['optimize_s']:.1f} s"
    )
    if result.get("synthetic"):
        caption += (
            f"; synthetic: upsert {result['synthetic_upsert_s']:.0f} s, optimize {result['synthetic_optimize_s']:.0f} s"
        )
    console.print(
        table(
            "Search latency, one query at a time (ms); hybrid = dense + BM25 prefetch 100 each, RRF, top 10",
            ["what", "p50 ms", "p95 ms", "queries", "goal"],
            rows,
            caption=caption,
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--max-docs", type=int, default=0, help="SciFact docs to index (0: the whole corpus)")
    parser.add_argument("--queries", type=int, default=300, help="SciFact test queries (and synthetic queries)")
    parser.add_argument("--synthetic-points", type=int, default=100_000, help="0 skips the synthetic part")
    parser.add_argument("--backend", default="torch", help="dense backend for query encoding")
    parser.add_argument("--data", default=None, help="SciFact directory (BEIR layout)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache directory (default: settings)")
    args = parser.parse_args(argv)
    return run_and_report(
        lambda: run(
            args.max_docs or None, args.queries, args.synthetic_points, args.data, args.backend, args.cache_dir
        ),
        report,
    )


if __name__ == "__main__":
    main()
