"""Memory of adaptation's sampling step (``hybrid-rag adapt``, the Dagster ``query_encoder`` asset): drawing the
pseudo-queries' documents and the ``max_negatives`` pool from a store of N synthetic chunks, as shipped (seeded
bottom-k samples while scrolling the ids) and as the previous release did it (every point id and document id
held, then sampled), in the same process. Python heap peak by tracemalloc; the store's own memory is not in it.

    python -m benchmarks.adapt_memory [--chunks 20000 80000 320000] [--max-negatives 1000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import console, machine_info, print_machine, run_and_report, table, workdir
from evals.pseudo_queries import AdaptConfig, _held_out, adaptation_documents, candidate_pool
from retrieval.chunking import Chunk
from retrieval.encoders.sparse import SparseVec
from retrieval.store import CollectionSchema, EdgeStore, QdrantStore


def build(path, chunks: int, per_doc: int = 2) -> EdgeStore:
    """An embedded store of ``chunks`` synthetic chunks, ``per_doc`` a document, 4-d vectors."""
    store = EdgeStore(path, "synthetic")
    store.ensure(CollectionSchema(dense_model="toy", dense_dim=4, sparse_model="bm25", sparse_idf=True))
    rng = np.random.default_rng(0)
    for start in range(0, chunks, 5000):
        rows = range(start, min(chunks, start + 5000))
        batch = [Chunk(f"doc-{i // per_doc:08d}", i % per_doc, f"Sentence {i} of a synthetic document.") for i in rows]
        store.upsert(batch, rng.normal(size=(len(batch), 4)).astype(np.float32), [SparseVec([1], [1.0])] * len(batch))
    return store


def shipped(store: QdrantStore, config: AdaptConfig) -> list[tuple[str, str]]:
    """The pool as :func:`evals.pseudo_queries.stored_corpus` draws it: two scrolls, only the samples kept."""
    train, held = adaptation_documents((owner for _, owner in store.stored_owners()), config)
    return candidate_pool(store.stored_owners(), set(train) | set(held), config)


def every_id(store: QdrantStore, config: AdaptConfig) -> list[tuple[str, str]]:
    """The previous release's sampling step: every point id and document id held (``stored_hashes``), then
    shuffled samples of the documents and of the other chunks' rows."""
    stored = store.stored_hashes()
    ids = sorted(stored)
    owners = np.array([stored[pid][0] for pid in ids], dtype=object)
    del stored
    docs = sorted(set(owners))
    train = [d for d in docs if not _held_out(d, config)]
    held = [d for d in docs if _held_out(d, config)]
    rng = random.Random(config.seed)
    rng.shuffle(train)
    rng.shuffle(held)
    targets = set(train[: config.max_queries]) | set(held[: config.max_holdout])
    own = np.fromiter((o in targets for o in owners), dtype=bool, count=len(owners))
    others = np.flatnonzero(~own)
    if len(others) > config.max_negatives:
        others = np.random.default_rng(config.seed).choice(others, config.max_negatives, replace=False)
    rows = np.sort(np.concatenate([np.flatnonzero(own), others]))
    return [(ids[r], owners[r]) for r in rows]


def measure(step: Callable[[QdrantStore, AdaptConfig], list], store: QdrantStore, config: AdaptConfig) -> dict:
    started = time.perf_counter()
    step(store, config)
    seconds = time.perf_counter() - started  # untraced: tracemalloc slows allocation-heavy code
    tracemalloc.start()
    try:
        pool = step(store, config)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return {"peak_mb": peak / 1e6, "seconds": seconds, "pool": len(pool)}


def run(chunks: list[int], config: AdaptConfig, directory: str | None = None) -> dict[str, Any]:
    info = machine_info()
    rows = []
    with workdir(directory) as root:
        for n in chunks:
            store = build(root / f"n{n}", n)
            try:
                rows.append(
                    {
                        "chunks": n,
                        "shipped": measure(shipped, store, config),
                        "every_id": measure(every_id, store, config),
                    }
                )
            finally:
                store.close()
    return {"machine": info, "config": config, "rows": rows}


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"])
    c = result["config"]
    rows = [
        (
            r["chunks"],
            r["every_id"]["peak_mb"],
            r["shipped"]["peak_mb"],
            r["every_id"]["seconds"],
            r["shipped"]["seconds"],
            r["shipped"]["pool"],
        )
        for r in result["rows"]
    ]
    console.print(
        table(
            "Adaptation's sampling step: Python heap peak (tracemalloc) and time",
            ["chunks", "every id held: MB", "shipped: MB", "every id: s", "shipped: s", "pool"],
            rows,
            caption=f"max_queries {c.max_queries}, max_holdout {c.max_holdout}, max_negatives {c.max_negatives}; "
            "synthetic chunks, 2 a document, embedded engine",
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[20_000, 80_000, 320_000])
    parser.add_argument("--max-queries", type=int, default=AdaptConfig.max_queries)
    parser.add_argument("--max-negatives", type=int, default=1000, help="small, so that the id lists show")
    parser.add_argument("--dir", help="keep the synthetic stores here (default: a temporary folder)")
    args = parser.parse_args(argv)
    config = AdaptConfig(max_queries=args.max_queries, max_negatives=args.max_negatives)
    run_and_report(lambda: run(args.chunks, config, args.dir), report)


if __name__ == "__main__":
    main()
