"""Quality side by side: our channels, hybrid, the shipped default (hybrid + rerank) and the references
(rank-bm25 over whole documents, exact dense cosine, plain RRF k=60 of the two), nDCG@10 on SciFact test and
NFCorpus test, and on long queries built from each (``evals.long_queries``: a 100-300 word document as the
query, the other documents judged relevant to the same query as its relevant set). Below the table, paired
(randomization test, 95% bootstrap interval of the difference): the default against hybrid, and hybrid against
the better of its two channels. Nothing here is tuned; shipped settings only.

    python -m benchmarks.quality_table [--collections scifact nfcorpus] [--index-dir DIR] [--long-queries 300]

Indexing goes through the embedding cache (~/.cache/hybrid-rag); with ``--index-dir`` the collections are kept
and re-used (re-indexing unchanged documents writes nothing).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import collection_dir, console, machine_info, print_machine, table

SYSTEMS = ("dense", "sparse", "hybrid", "hybrid+rerank")
DEFAULT = "hybrid+rerank"


def evaluate_collection(root: Path, index_dir: Path, long_queries: int = 300) -> dict[str, Any]:
    """nDCG@10 per system on the test split and on long queries, with per-query values for the paired test."""
    from evals.collections import load_collection
    from evals.long_queries import long_queries as make_long_queries
    from evals.metrics import evaluate
    from evals.reference import ReferenceRankings
    from evals.runner import evaluate_variants
    from retrieval import RetrievalSettings, RetrievalStack, read_documents

    coll = load_collection(root)
    docs, _ = read_documents(coll.corpus_path, "jsonl")
    settings = RetrievalSettings(qdrant_path=index_dir, collection=coll.name)
    stack = RetrievalStack(settings)
    indexer = stack.indexer()
    indexer.index(docs, progress=False)
    retriever = stack.retriever()
    reference = ReferenceRankings(docs, indexer.store, indexer.dense)
    sets = {"test": (coll.split_queries("test"), coll.qrels("test"))}
    long = make_long_queries(coll, "test", max_queries=long_queries) if long_queries else ({}, {})
    if long[1]:  # a small collection may have no document of 100-300 words judged with another one
        sets["long"] = long
    out: dict[str, Any] = {}
    for name, (queries, qrels) in sets.items():
        results = evaluate_variants(retriever, queries, qrels, SYSTEMS, progress=False)
        per_query = {system: r.per_query for system, r in results.items()}
        for system, run in reference.all({q: t for q, t in queries.items() if q in qrels}).items():
            per_query[system] = evaluate(qrels, run).per_query
        out[name] = {"queries": len(qrels), "per_query": per_query}
    stack.close()
    return out


def run(collections: list[str], index_dir: Path | None = None, long_queries: int = 300) -> dict[str, Any]:
    root = Path(index_dir or tempfile.mkdtemp(prefix="hybrid-rag-quality-"))
    return {name: evaluate_collection(collection_dir(name), root, long_queries) for name in collections}


def report(results: dict[str, Any]) -> None:
    from evals.compare import loss_check
    from evals.runner import QUALITY_CHECKS

    columns = [(c, s) for c, sets in results.items() for s in sets]
    systems = list(next(iter(next(iter(results.values())).values()))["per_query"])
    rows = []
    for system in systems:
        label = f"{system} (default)" if system == DEFAULT else system
        cells = []
        for c, s in columns:
            pq = results[c][s]["per_query"][system]
            cells.append(sum(v["ndcg@10"] for v in pq.values()) / len(pq))
        rows.append([label, *cells])
    headers = [f"{c} {s} ({results[c][s]['queries']} q)" for c, s in columns]
    console.print(
        table("nDCG@10 (shipped settings; ref = rank-bm25 / exact dense / RRF k=60)", ["system", *headers], rows)
    )
    pairs = []
    for c, s in columns:
        pq = results[c][s]["per_query"]
        for baselines, candidate in QUALITY_CHECKS.values():  # hybrid vs its better channel, default vs hybrid
            cmp = loss_check(pq, baselines, candidate).comparison
            pairs.append(
                [
                    f"{c} {s}",
                    f"{candidate} vs {cmp.baseline}",
                    cmp.mean_diff,
                    cmp.ci_low,
                    cmp.ci_high,
                    f"{cmp.wins}/{cmp.losses}/{cmp.ties}",
                    cmp.p_randomization,
                ]
            )
    console.print(
        table(
            "Paired nDCG@10 differences",
            ["set", "comparison", "diff", "95% CI low", "95% CI high", "W/L/T", "p (randomization)"],
            pairs,
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality_table", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--collections",
        nargs="+",
        default=["scifact", "nfcorpus"],
        help="names under ../shared/datasets, folders, or sample",
    )
    parser.add_argument("--index-dir", type=Path, default=None, help="keep (and re-use) the collections here")
    parser.add_argument("--long-queries", type=int, default=300, help="long queries per collection (0: none)")
    args = parser.parse_args(argv)
    print_machine(machine_info())
    started = time.perf_counter()
    results = run(args.collections, args.index_dir, args.long_queries)
    report(results)
    console.print(f"[dim]took {time.perf_counter() - started:.0f} s[/dim]")
    return results


if __name__ == "__main__":
    main()
