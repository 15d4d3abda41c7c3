"""Where an evaluation's time goes: ``evaluate_collection`` (what ``hybrid-rag eval`` and the Dagster evaluation
run) of the four variants on a collection's test split, each part timed in wall and CPU seconds: the query
encoding pass, dense and BM25 query encoding, the per-query searches, the engine's channel lists, payloads and
stored vectors, fusion, reranking, the document-level top-up, the metrics and the coverage checks.

The parts are timed by wrapping the library's functions in this process; a part called inside another counts in
both (``in top-up`` rows: the share of the top-up). Wall seconds follow the machine's load; CPU seconds (this
process, all threads) much less.

    python -m benchmarks.eval_cost [--collections scifact nfcorpus] [--index-dir DIR]

Indexing goes through the embedding cache (~/.cache/hybrid-rag); with ``--index-dir`` the collections are kept
and re-used. ``sample`` names the bundled sample collection.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.common import collection_dir, console, machine_info, print_machine, run_and_report, table, workdir

TOP_UP = "top-up (deepen_runs)"


def _parts() -> list[tuple[Any, str, str]]:
    """(owner, attribute, label) of every timed part."""
    from evals import runner
    from retrieval.encoders.dense import DenseEncoder
    from retrieval.encoders.sparse import Bm25Encoder
    from retrieval.search import HybridRetriever
    from retrieval.store.base import QdrantStore
    from retrieval.store.edge import EdgeStore

    return [
        (runner.EncodedQueries, "of", "query encoding pass"),
        (DenseEncoder, "encode_queries", "dense query encoding"),
        (Bm25Encoder, "encode_queries", "BM25 query encoding"),
        (runner, "search_run", "per-query searches"),
        (QdrantStore, "query_batch", "engine: channel lists"),  # the engine's answer and the tie-complete cut
        (EdgeStore, "points", "engine: payloads"),
        (EdgeStore, "dense_vectors", "engine: stored vectors"),
        (HybridRetriever, "fuse", "fusion"),
        (HybridRetriever, "_rerank_batch", "reranking"),
        (runner, "deepen_runs", TOP_UP),
        (runner, "evaluate", "metrics (pytrec_eval)"),
        (runner, "judged_coverage", "coverage checks"),
    ]


class PartTimer:
    """Wall and CPU seconds and calls per part (outermost call only; also per part inside the top-up)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._open: list[str] = []

    def wrap(self, fn: Any, label: str) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            outer = label not in self._open
            self._open.append(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self._open.pop()
                if outer:
                    names = [label] + ([f"  in top-up: {label}"] if TOP_UP in self._open else [])
                    for name in names:
                        self.wall[name] += time.perf_counter() - wall
                        self.cpu[name] += time.process_time() - cpu
                        self.calls[name] += 1

        return timed

    @contextmanager
    def installed(self) -> Iterator[PartTimer]:
        saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in _parts()]
        try:
            for owner, name, label in _parts():
                setattr(owner, name, self.wrap(getattr(owner, name), label))
            yield self
        finally:
            for owner, name, original in saved:
                setattr(owner, name, original)


def evaluate_one(name: str, index_dir: Path) -> dict[str, Any]:
    """One evaluation of ``name``'s test split, its parts timed."""
    from evals.collections import load_collection
    from evals.runner import evaluate_collection
    from retrieval import RetrievalSettings, RetrievalStack, read_documents

    coll = load_collection(collection_dir(name))
    with RetrievalStack(RetrievalSettings(qdrant_path=index_dir, collection=coll.name)) as stack:
        docs, _ = read_documents(coll.corpus_path, "jsonl")
        stack.indexer().index(docs, progress=False)  # unchanged documents: nothing written
        retriever = stack.retriever()
        retriever.search("load the models first", k=1)
        with PartTimer().installed() as timer:
            wall, cpu = time.perf_counter(), time.process_time()
            report = evaluate_collection(retriever, coll, "test", progress=False)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "queries": report.n_queries,
        "parts": {k: (timer.wall[k], timer.cpu[k], timer.calls[k]) for k in timer.wall},
        "total": (wall, cpu),
        "ndcg@10": {v: r.metrics["ndcg@10"] for v, r in report.variants.items()},
    }


def run(collections: list[str], index_dir: str | None = None) -> dict[str, Any]:
    info = machine_info()
    with workdir(index_dir, prefix="hybrid-rag-eval-cost-") as root:
        results = {name: evaluate_one(name, root) for name in collections}
    return {"machine": info, "load_after": machine_info()["load_1m"], "collections": results}


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"], result["load_after"])
    for name, r in result["collections"].items():
        rows = [[part, w, c, n] for part, (w, c, n) in sorted(r["parts"].items(), key=lambda kv: -kv[1][0])]
        rows.append(["evaluate_collection, whole", *r["total"], 1])
        console.print(
            table(
                f"Where an evaluation's time goes: {name} test, {r['queries']} queries x 4 variants",
                ["part", "wall s", "CPU s", "calls"],
                rows,
                caption="nDCG@10 " + ", ".join(f"{v} {x:.4f}" for v, x in r["ndcg@10"].items()),
            )
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", nargs="+", default=["scifact", "nfcorpus"])
    parser.add_argument("--index-dir", default=None, help="keep the collections here (default: a temporary dir)")
    args = parser.parse_args(argv)
    return run_and_report(lambda: run(args.collections, args.index_dir), report)


if __name__ == "__main__":
    main()
