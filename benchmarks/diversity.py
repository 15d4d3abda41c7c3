"""What ``diversity`` (maximal marginal relevance, README "Diverse results") costs and buys on SciFact **train**:
for the default search (hybrid, reranked) and with diversity at a few values and candidate depths, the nDCG@10 of
the top 10 hits (a document's first hit counts, a repeat takes a slot and gains nothing, as in an LLM's context),
and how redundant those 10 hits are: the mean cosine between two of them, the share of pairs that are near
duplicates (cosine >= 0.9), the distinct documents among them, and what picking them took per query.

    python -m benchmarks.diversity [--max-docs N] [--max-queries N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import numpy as np

from benchmarks.common import (
    console,
    eval_subset,
    machine_info,
    print_machine,
    require_scifact,
    run_and_report,
    table,
    workdir,
)
from retrieval import RetrievalSettings, RetrievalStack

K = 10
NEAR_DUPLICATE = 0.9  # cosine of two hits' stored vectors
BATCH = 64
# (diversity, diversity_depth): None is off, a depth of None the default (RERANK_DEPTH)
SETTINGS = [(None, None), (0.1, None), (0.2, None), (0.3, None), (0.5, None), (0.3, 20)]


def run(max_docs: int | None = None, max_queries: int | None = None, root: str | None = None) -> dict[str, Any]:
    from evals.metrics import evaluate

    info = machine_info()
    data = eval_subset(require_scifact(), max_docs, max_queries, split="train")
    qids = sorted(data.queries)
    texts = [data.queries[q] for q in qids]
    rows = []
    with workdir(root) as work:
        settings = RetrievalSettings(qdrant_path=work / "index", collection="scifact")
        with RetrievalStack(settings) as stack:
            stack.indexer().index(data.docs, progress=False)  # vectors from the embedding cache after the first run
            retriever = stack.retriever()
            encoded = [retriever.encode(texts[i : i + BATCH]) for i in range(0, len(texts), BATCH)]
            for diversity, depth in SETTINGS:
                hits, seconds = [], 0.0
                for i, vectors in enumerate(encoded):
                    batch = texts[i * BATCH : (i + 1) * BATCH]
                    found = retriever.search_batch(
                        batch, k=K, diversity=diversity, diversity_depth=depth, encoded=vectors
                    )
                    seconds += retriever.last_timings.get("diversity_s", 0.0)
                    hits += found
                ndcg = evaluate(data.qrels, _run(qids, hits), k_values=[K]).mean[f"ndcg@{K}"]
                stored = retriever.store.dense_vectors(sorted({h.chunk_id for hs in hits for h in hs}))
                cosines = [_pairwise(np.stack([stored[h.chunk_id] for h in hs])) for hs in hits if len(hs) > 1]
                rows.append(
                    {
                        "diversity": diversity,
                        "depth": None if diversity is None else depth or settings.rerank_depth,
                        "ndcg": ndcg,
                        "mean_cosine": float(np.mean([c.mean() for c in cosines])),
                        "near_duplicates": float(np.mean(np.concatenate(cosines) >= NEAR_DUPLICATE)),
                        "documents": float(np.mean([len({h.doc_id for h in hs}) for hs in hits])),
                        "ms_per_query": seconds * 1000 / len(qids),
                    }
                )
    return {"machine": info, "queries": len(qids), "docs": len(data.docs), "rows": rows}


def _run(qids: list[str], hits: list[list]) -> dict[str, dict[str, float]]:
    """Each query's documents scored by the rank of their first hit (a later hit of one adds nothing)."""
    run: dict[str, dict[str, float]] = {}
    for qid, found in zip(qids, hits, strict=True):
        docs = run.setdefault(qid, {})
        for rank, hit in enumerate(found):
            docs.setdefault(hit.doc_id, float(K - rank))
    return run


def _pairwise(vectors: np.ndarray) -> np.ndarray:
    """The cosines of every pair of rows."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = unit @ unit.T
    return np.array([sim[i, j] for i, j in itertools.combinations(range(len(unit)), 2)])


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"])
    base = result["rows"][0]
    console.print(
        table(
            f"Diversity on SciFact train ({result['queries']} queries, {result['docs']:,} documents): top {K} hits "
            "of the default search (hybrid, reranked)",
            ["diversity", "depth", "nDCG@10", "Δ", "mean cosine", f"pairs ≥ {NEAR_DUPLICATE}", "documents", "ms"],
            [
                [
                    "off" if r["diversity"] is None else r["diversity"],
                    r["depth"],
                    r["ndcg"],
                    r["ndcg"] - base["ndcg"],
                    r["mean_cosine"],
                    r["near_duplicates"],
                    r["documents"],
                    r["ms_per_query"],
                ]
                for r in result["rows"]
            ],
            caption="nDCG@10: of the documents of the 10 hits (a repeated document gains nothing); mean cosine and "
            "pairs: between two of the 10 hits' stored vectors; documents: distinct among the 10; ms: picking them",
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-docs", type=int, default=None, help="Corpus subset (default: all)")
    p.add_argument("--max-queries", type=int, default=None, help="Train queries (default: all)")
    p.add_argument("--dir", default=None, help="Keep the index here (default: a temporary folder)")
    args = p.parse_args(argv)
    return run_and_report(lambda: run(args.max_docs, args.max_queries, args.dir), report)


if __name__ == "__main__":
    main()
