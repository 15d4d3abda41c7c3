"""Known-item search: a query that is text copied from a document (a sentence, its title) should find that
document first. Pseudo-queries only (``evals.pseudo_queries``: a seeded sample of documents, each giving its
title or one sentence of 8-40 words), the target being the source document; MRR@10 and success@1 per system
(dense, sparse, hybrid, the default hybrid + rerank), then where the default loses a target hybrid had at rank 1
and why (the reranker's gate open or closed, the rank fusion of the two orders).

    python -m benchmarks.known_item [--collections scifact sample] [--index-dir DIR] [--sentences 300] [--titles 300]

Indexing goes through the embedding cache (~/.cache/hybrid-rag); with ``--index-dir`` the collections are kept
and re-used.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import collection_dir, console, machine_info, print_machine, run_and_report, table

SYSTEMS = ("dense", "sparse", "hybrid", "hybrid+rerank")
DEFAULT = "hybrid+rerank"
SEED = 13


@dataclass
class KnownItems:
    """Known-item queries: text, source document and kind (``title`` or ``sentence``) per query id."""

    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    kinds: dict[str, str]


def known_items(docs: list, sentences: int = 300, titles: int = 300, seed: int = SEED) -> KnownItems:
    """Up to ``titles`` title queries and ``sentences`` sentence queries (8-40 words) from distinct documents of a
    seeded sample; a text that occurs in more than one document is left out (its target would be ambiguous)."""
    from evals.pseudo_queries import AdaptConfig, pseudo_queries

    config = AdaptConfig(min_words=8, max_words=40, seed=seed)
    order = sorted(docs, key=lambda d: d.id)
    random.Random(seed).shuffle(order)
    candidates = pseudo_queries(order, config)
    seen = Counter(" ".join(q.text.lower().split()) for q in candidates)
    wanted, used = {"title": titles, "sentence": sentences}, set()
    out = KnownItems({}, {}, {})
    for q in candidates:  # documents in sample order; each document gives one query at most
        if wanted[q.kind] <= 0 or q.doc_id in used or seen[" ".join(q.text.lower().split())] > 1:
            continue
        wanted[q.kind] -= 1
        used.add(q.doc_id)
        out.queries[q.qid], out.qrels[q.qid], out.kinds[q.qid] = q.text, {q.doc_id: 1}, q.kind
    return out


def target_rank(run: dict[str, float], target: str) -> int | None:
    """The rank of ``target`` in a run (document -> score, best first as a search returns it); None: absent."""
    for rank, doc in enumerate(sorted(run, key=lambda d: -run[d]), 1):
        if doc == target:
            return rank
    return None


def evaluate_collection(root: Path, index_dir: Path, sentences: int, titles: int) -> dict[str, Any]:
    """Per query: the target's rank in each system's run, its kind, and whether the reranker's gate was open."""
    from evals.collections import load_collection
    from evals.runner import evaluate_variants
    from retrieval import RetrievalSettings, RetrievalStack, read_documents

    coll = load_collection(root)
    docs, _ = read_documents(coll.corpus_path, "jsonl")
    items = known_items(docs, sentences, titles)
    stack = RetrievalStack(RetrievalSettings(qdrant_path=index_dir, collection=coll.name))
    stack.indexer().index(docs, progress=False)
    retriever = stack.retriever()
    results = evaluate_variants(retriever, items.queries, items.qrels, SYSTEMS, progress=False)
    gate_open = {}
    for qid, text in items.queries.items():  # the reranker leaves rerank_score None when its gate is closed
        hits = retriever.search(text, k=1, variant=DEFAULT)
        gate_open[qid] = bool(hits) and hits[0].rerank_score is not None
    stack.close()
    ranks = {
        qid: {s: target_rank(results[s].run.get(qid, {}), next(iter(items.qrels[qid]))) for s in SYSTEMS}
        for qid in items.queries
    }
    return {"kinds": items.kinds, "ranks": ranks, "gate_open": gate_open}


def mrr(ranks: list[int | None], k: int = 10) -> float:
    return sum(1 / r for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def success(ranks: list[int | None], k: int = 1) -> float:
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks) if ranks else 0.0


def run(collections: list[str], index_dir: Path | None, sentences: int, titles: int) -> dict[str, Any]:
    root = Path(index_dir or tempfile.mkdtemp(prefix="hybrid-rag-known-item-"))
    return {name: evaluate_collection(collection_dir(name), root, sentences, titles) for name in collections}


def report(results: dict[str, Any]) -> None:
    rows, moves = [], []
    for name, r in results.items():
        kinds = r["kinds"]
        for kind in ("title", "sentence", "all"):
            qids = [q for q in kinds if kind in ("all", kinds[q])]
            if not qids:
                continue
            cells = []
            for s in SYSTEMS:
                ranks = [r["ranks"][q][s] for q in qids]
                cells += [mrr(ranks), success(ranks)]
            rows.append([f"{name} {kind} ({len(qids)} q)", *cells])
        lost = [q for q in kinds if r["ranks"][q]["hybrid"] == 1 and r["ranks"][q][DEFAULT] != 1]
        won = [q for q in kinds if r["ranks"][q]["hybrid"] != 1 and r["ranks"][q][DEFAULT] == 1]
        below_channel = [
            q for q in kinds if r["ranks"][q]["hybrid"] != 1 and 1 in (r["ranks"][q]["dense"], r["ranks"][q]["sparse"])
        ]
        moves.append(
            [
                name,
                len(kinds),
                sum(r["gate_open"].values()),
                len(lost),
                sum(r["gate_open"][q] for q in lost),
                len(won),
                len(below_channel),
            ]
        )
    headers = [f"{s} {m}" for s in SYSTEMS for m in ("MRR@10", "S@1")]
    console.print(
        table("Known-item search: the source document of a copied title or sentence", ["set", *headers], rows)
    )
    console.print(
        table(
            "Where the default (hybrid + rerank) moves the source document",
            [
                "set",
                "queries",
                "gate open",
                "hybrid 1st -> default not",
                "of them gate open",
                "default 1st only",
                "a channel 1st, hybrid not",
            ],
            moves,
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.known_item", description=__doc__.splitlines()[0])
    parser.add_argument("--collections", nargs="+", default=["scifact", "sample"], help="names, folders or sample")
    parser.add_argument("--index-dir", type=Path, default=None, help="keep (and re-use) the collections here")
    parser.add_argument("--sentences", type=int, default=300, help="sentence queries per collection")
    parser.add_argument("--titles", type=int, default=300, help="title queries per collection")
    args = parser.parse_args(argv)
    print_machine(machine_info())
    return run_and_report(lambda: run(args.collections, args.index_dir, args.sentences, args.titles), report)


if __name__ == "__main__":
    main()
