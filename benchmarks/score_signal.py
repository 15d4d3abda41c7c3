"""What a hit's scores say about relevance (README, "What a hit's score means"): on SciFact test, the default
hybrid search's ``score`` per rank (rank-based: the same few values for every query) and how well ``dense_score``
(the cosine of query and chunk) tells relevant hits from the others and from the hits of off-topic queries, with
the share of each a ``dense_score`` threshold keeps.

    python -m benchmarks.score_signal [--max-docs N] [--max-queries N] [--dir DIR]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks.common import console, eval_subset, machine_info, print_machine, require_scifact, table, workdir
from retrieval import RetrievalSettings, RetrievalStack

OFF_TOPIC = [  # queries no SciFact abstract answers
    "chocolate cake recipe with strawberries",
    "how do I change a flat tire on my bike",
    "best hiking trails in Colorado",
    "who won the football world cup in 2014",
    "zxqv blorp fnord",
    "python list comprehension syntax",
    "cheap flights to Paris in May",
    "how to knit a scarf",
    "lyrics of a famous Beatles song",
    "tax deadline for small businesses",
]
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6)


def run(max_docs: int | None = None, max_queries: int | None = None, root: str | None = None) -> dict[str, Any]:
    info = machine_info()
    data = eval_subset(require_scifact(), max_docs, max_queries)
    with workdir(root) as work:
        settings = RetrievalSettings(qdrant_path=work / "index", collection="scifact")
        with RetrievalStack(settings) as stack:
            stack.indexer().index(data.docs)  # vectors from the embedding cache after the first run
            retriever = stack.retriever()
            ids = sorted(data.queries)
            judged = retriever.search_batch([data.queries[q] for q in ids], k=10)
            off = retriever.search_batch(OFF_TOPIC, k=10)
    relevant, other, by_rank, without = [], [], {}, 0
    for qid, hits in zip(ids, judged, strict=True):
        for rank, hit in enumerate(hits, 1):
            by_rank.setdefault(rank, set()).add(round(hit.score, 6))
            if hit.dense_score is None:  # found by BM25 alone
                without += 1
            else:
                (relevant if data.qrels[qid].get(hit.doc_id, 0) > 0 else other).append(hit.dense_score)
    off_topic = [h.dense_score for hits in off for h in hits if h.dense_score is not None]
    rel, non = np.array(relevant), np.array(other)
    return {
        "machine": info,
        "queries": len(ids),
        "distinct_scores": {rank: len(values) for rank, values in sorted(by_rank.items())},
        "without_dense": without,
        "auc": float((rel[:, None] > non[None, :]).mean()) if len(rel) and len(non) else float("nan"),
        "min_relevant": float(rel.min()) if len(rel) else float("nan"),
        "max_off_topic": max(off_topic) if off_topic else float("nan"),
        "rows": [
            {
                "threshold": t,
                "relevant": float(np.mean(rel >= t)) if len(rel) else float("nan"),
                "other": float(np.mean(non >= t)) if len(non) else float("nan"),
                "off_topic": float(np.mean(np.array(off_topic) >= t)) if off_topic else float("nan"),
            }
            for t in THRESHOLDS
        ],
    }


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"])
    console.print(
        f"{result['queries']} queries, top 10 of the default hybrid search: distinct `score` values per rank "
        f"{result['distinct_scores']} (rank-based); hits without a dense_score (BM25 only): "
        f"{result['without_dense']}; dense_score AUC relevant vs other hits {result['auc']:.3f}, lowest relevant "
        f"{result['min_relevant']:.3f}, highest off-topic {result['max_off_topic']:.3f}",
        soft_wrap=True,
    )
    console.print(
        table(
            "Share of top-10 hits a dense_score threshold keeps (SciFact test)",
            ["dense_score >=", "relevant", "other judged-query hits", f"off-topic queries' hits ({len(OFF_TOPIC)})"],
            [(r["threshold"], r["relevant"], r["other"], r["off_topic"]) for r in result["rows"]],
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-docs", type=int, help="index the first N documents (with the queries they answer)")
    parser.add_argument("--max-queries", type=int, help="at most N test queries")
    parser.add_argument("--dir", help="work directory (kept); default: a temporary one")
    args = parser.parse_args(argv)
    report(run(args.max_docs, args.max_queries, args.dir))


if __name__ == "__main__":
    main()
