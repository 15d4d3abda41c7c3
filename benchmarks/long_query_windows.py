"""Long queries on the dense channel's query side (issue 9 study): a query longer than one window is embedded as
windows of word pieces (the length all-MiniLM-L6-v2 was trained on is 128), each window's normalized vector
averaged and renormalized, or searched once per window with each chunk's best cosine over the windows kept. A
query no longer than one window is embedded as before. nDCG@10 of dense, sparse, hybrid and the default (hybrid
+ rerank) through the retriever's own candidates, fusion and reranking, with paired differences against the
shipped query encoding. By default only SciFact train and its long queries (``evals.long_queries``), where a
choice may be made; ``--held-out`` adds the test splits (never choose on them). None is shipped (README,
Quality): on SciFact train long queries every variant leaves hybrid below the shipped encoding.

    python -m benchmarks.long_query_windows [--index-dir DIR] [--held-out] [--variants ...]
"""

from __future__ import annotations

import argparse
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import collection_dir, console, table

SYSTEMS = ("dense", "sparse", "hybrid", "default")
# name: (window, stride, pooling); "shipped" embeds the whole query, truncated at the model's max_seq_length (256)
VARIANTS: dict[str, tuple[int, int, str] | None] = {
    "shipped": None,
    "mean, 128/128": (128, 128, "mean"),
    "mean, 128/64": (128, 64, "mean"),
    "mean, 256/128": (256, 128, "mean"),
    "mean, 256/256": (256, 256, "mean"),
    "max-sim search, 128/64": (128, 64, "max"),
    "mean, 64/64": (64, 64, "mean"),
    "mean of the whole query and 128/128 windows": (128, 128, "whole+mean"),
    "mean of sentences, over 128": (128, 0, "sentences"),
    "max-sim search, 128/128": (128, 128, "max"),
}


def query_windows(tokenizer: Any, text: str, size: int, stride: int) -> list[str]:
    """``text`` cut into windows of ``size`` word pieces (special tokens not counted) starting every ``stride``,
    the last one ending at the text's end; ``[text]`` when it holds no more than ``size``."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= size:
        return [text]
    starts = [*range(0, len(offsets) - size, stride), len(offsets) - size]
    return [text[offsets[s][0] : offsets[s + size - 1][1]] for s in starts]


def sentence_windows(tokenizer: Any, text: str, size: int) -> list[str]:
    """``text``'s sentences when it holds more than ``size`` word pieces, else ``[text]``."""
    if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= size:
        return [text]
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def window_vectors(encoder: Any, texts: list[str], size: int, stride: int, pooling: str) -> list[np.ndarray]:
    """Each query's window vectors (one row per window), from one encoder call."""
    if pooling == "sentences":
        windows = [sentence_windows(encoder.tokenizer, t, size) for t in texts]
    else:
        windows = [query_windows(encoder.tokenizer, t, size, stride) for t in texts]
    if pooling == "whole+mean":
        windows = [[t, *ws] if len(ws) > 1 else ws for t, ws in zip(texts, windows, strict=True)]
    flat = encoder.encode_queries([w for ws in windows for w in ws])
    bounds = np.cumsum([0, *(len(ws) for ws in windows)])
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def mean_pooled(vectors: list[np.ndarray]) -> np.ndarray:
    """The mean of each query's window vectors, renormalized."""
    pooled = np.stack([v.mean(axis=0) for v in vectors])
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def max_sim_list(store: Any, vectors: np.ndarray, limit: int) -> list:
    """The dense list of one query searched once per window: each chunk at its best cosine over the windows."""
    from retrieval.store import QueryPlan

    best: dict[str, Any] = {}
    for hits in store.query_batch([QueryPlan(dense=v, limit=limit, with_payload=("doc_id",)) for v in vectors]):
        for h in hits:
            if h.id not in best or h.score > best[h.id].score:
                best[h.id] = h
    return sorted(best.values(), key=lambda h: (-h.score, h.id))[:limit]


def runs(retriever: Any, queries: dict[str, str], variant: tuple[int, int, str] | None) -> dict[str, dict]:
    """Each system's run for ``queries`` (100 hits, best chunk per document), as ``search`` would return them."""
    from evals.runs import best_chunk_per_document
    from retrieval.search import Hit

    qids, texts = list(queries), list(queries.values())
    encoder, store, depth = retriever.query_encoder, retriever.store, 100
    sparse_q = retriever.sparse.encode_queries(texts)
    if variant is None:
        dense_q = encoder.encode_queries(texts)
        windows = [v[None] for v in dense_q]
    else:
        windows = window_vectors(encoder, texts, *variant)
        dense_q = mean_pooled(windows)
    out: dict[str, dict] = {s: {} for s in SYSTEMS}
    out["windowed"] = {qid: {"ndcg@10": float(len(w) > 1)} for qid, w in zip(qids, windows, strict=True)}
    for i, qid in enumerate(qids):
        sparse = store.query_batch([_plan(sparse=sparse_q[i], limit=depth)])[0]
        if variant is not None and variant[2] == "max":
            dense = max_sim_list(store, windows[i], depth)
        else:
            dense = store.query_batch([_plan(dense=dense_q[i], limit=depth)])[0]
        fused = {
            "dense": retriever.fuse({"dense": dense}),
            "sparse": retriever.fuse({"sparse": sparse}),
            "hybrid": retriever.fuse({"dense": dense, "sparse": sparse})[:depth],
        }
        ids = sorted({f.id for f in fused["hybrid"]})
        points = store.points(ids, with_dense_vectors=True)
        hits = [Hit.from_fused(f, points[f.id], r) for r, f in enumerate(fused["hybrid"], 1)]
        reranked = retriever._rerank(texts[i], dense_q[i], hits)
        for system, ranked in fused.items():
            out[system][qid] = best_chunk_per_document((f.doc_id, f.score) for f in ranked[:depth])
        out["default"][qid] = best_chunk_per_document((h.doc_id, h.score) for h in reranked[:depth])
    return out


def _plan(**kwargs: Any):
    from retrieval.store import QueryPlan

    return QueryPlan(**kwargs, with_payload=("doc_id",))


def query_sets(root: Path, held_out: bool) -> dict[str, tuple[dict, dict]]:
    from evals.collections import load_collection
    from evals.long_queries import long_queries

    coll = load_collection(root)
    sets = {}
    for split in [s for s in coll.splits() if held_out or s != "test"]:
        queries, qrels = coll.split_queries(split), coll.qrels(split)
        sets[f"{coll.name} {split}"] = ({q: t for q, t in queries.items() if q in qrels}, qrels)
        long = long_queries(coll, split, max_queries=300)
        if long[1]:  # a small collection may have no document of 100-300 words judged with another one
            sets[f"{coll.name} {split} long"] = long
    return sets


def study(
    collections: list[str], index_dir: Path, held_out: bool, variants: list[str]
) -> dict[str, dict[str, dict[str, dict]]]:
    """Per query set and variant, each system's per-query nDCG@10."""
    from evals.collections import load_collection
    from evals.metrics import evaluate
    from retrieval import RetrievalSettings, RetrievalStack, read_documents

    results: dict[str, dict[str, dict[str, dict]]] = {}
    for name in collections:
        coll = load_collection(collection_dir(name))
        stack = RetrievalStack(RetrievalSettings(qdrant_path=index_dir, collection=coll.name))
        indexer = stack.indexer()
        indexer.index(read_documents(coll.corpus_path, "jsonl")[0], progress=False)  # unchanged: writes nothing
        retriever = stack.retriever()
        retriever.check_schema()
        for set_name, (queries, qrels) in query_sets(collection_dir(name), held_out).items():
            results[set_name] = {}
            for variant in variants:
                per_system = runs(retriever, queries, VARIANTS[variant])
                windowed = per_system.pop("windowed")
                results[set_name][variant] = {s: evaluate(qrels, r).per_query for s, r in per_system.items()}
                results[set_name][variant]["windowed"] = windowed
        stack.close()
    return results


def report(results: dict[str, dict[str, dict[str, dict]]], emit: Callable[[Any], None] = console.print) -> None:
    from evals.compare import compare_per_query, loss_check

    rows, pairs = [], []
    for set_name, by_variant in results.items():
        for variant, per_system in by_variant.items():
            means = [np.mean([v["ndcg@10"] for v in per_system[s].values()]) for s in SYSTEMS]
            windowed = int(sum(v["ndcg@10"] for v in per_system["windowed"].values()))
            rows.append([set_name, variant, f"{windowed}/{len(per_system['windowed'])}", *means])
            check = loss_check(per_system, ("dense", "sparse"), "hybrid").comparison
            rerank = compare_per_query(per_system["hybrid"], per_system["default"], names=("hybrid", "default"))
            cells = [_diff(check, f"vs {check.baseline}"), _diff(rerank)]
            if variant != "shipped" and "shipped" in by_variant:
                for s in ("hybrid", "default"):
                    c = compare_per_query(by_variant["shipped"][s], per_system[s], names=("shipped", variant))
                    cells.append(_diff(c))
            else:
                cells += ["", ""]
            pairs.append([set_name, variant, *cells])
    emit(table("nDCG@10 by query encoding (long queries only change)", ["set", "variant", "windowed", *SYSTEMS], rows))
    columns = ["hybrid - better channel", "default - hybrid", "hybrid - shipped hybrid", "default - shipped default"]
    emit(table("Paired differences: mean [95% bootstrap CI], p (randomization)", ["set", "variant", *columns], pairs))


def _diff(c: Any, label: str = "") -> str:
    prefix = f"{label} " if label else ""
    return f"{prefix}{c.mean_diff:+.4f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}], p {c.p_randomization:.2f}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, dict]]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.long_query_windows", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--collections", nargs="+", default=["scifact"], help="names under ../shared/datasets, folders, or sample"
    )
    parser.add_argument("--index-dir", type=Path, default=None, help="keep (and re-use) the collections here")
    parser.add_argument("--held-out", action="store_true", help="also the test splits (never choose on them)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    index_dir = args.index_dir or Path(tempfile.mkdtemp(prefix="hybrid-rag-windows-"))
    results = study(args.collections, index_dir, args.held_out, args.variants)
    report(results)
    return results


if __name__ == "__main__":
    main()
