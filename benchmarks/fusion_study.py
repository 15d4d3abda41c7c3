"""How the two channel lists are fused, compared on the same lists: RRF (k 10/60, channel weights), DBSF,
z-scores, and z-scores gated by how far the sparse list's best hit stands out (what ships); also alternatives
that were not shipped (min-max CombSUM, z-scores with a missing chunk at the list's minimum, RRF of the RRF and
z-score lists, robust z-scores (median and MAD), z-scores without each list's best hit in its mean and sd,
z-scores over documents instead of chunks, a pairwise linear ranker fitted on SciFact train). nDCG@10 of the
best chunk per document, BEIR conventions. By default only train splits (the queries and the long queries built
from them, ``evals.long_queries``), which is where the shipped choice was made; ``--held-out`` adds the test
splits.

    python -m benchmarks.fusion_study [--collections scifact] [--index-dir DIR] [--held-out]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import collection_dir, console, table
from retrieval.fusion import top_z

DEPTH = 100  # hits asked of each channel (the shipped PREFETCH_K): a shorter sparse list ran out
Lists = dict[str, list]


def channel_lists(root: Path, index_dir: Path, held_out: bool) -> dict[str, tuple[dict[str, Lists], dict, dict]]:
    """Per query set: each query's dense and sparse lists (top 100, one batched request per 64 queries), the
    qrels and the query texts."""
    from evals.collections import load_collection
    from evals.long_queries import long_queries
    from retrieval import RetrievalSettings, RetrievalStack, read_documents
    from retrieval.store import QueryPlan

    coll = load_collection(root)
    docs, _ = read_documents(coll.corpus_path, "jsonl")
    stack = RetrievalStack(RetrievalSettings(qdrant_path=index_dir, collection=coll.name))
    indexer = stack.indexer()
    indexer.index(docs, progress=False)
    splits = [s for s in coll.splits() if held_out or s != "test"]
    sets = {}
    for split in splits:
        sets[f"{coll.name} {split}"] = (coll.split_queries(split), coll.qrels(split))
        long = long_queries(coll, split, max_queries=300)
        if long[1]:  # a small collection may have no document of 100-300 words judged with another one
            sets[f"{coll.name} {split} long"] = long
    out = {}
    for name, (queries, qrels) in sets.items():
        qids = [q for q in queries if q in qrels]
        texts = [queries[q] for q in qids]
        dense, sparse = indexer.dense.encode_queries(texts), indexer.sparse.encode_queries(texts)
        lists: dict[str, Lists] = {}
        for start in range(0, len(qids), 64):
            part = range(start, min(start + 64, len(qids)))
            plans = [QueryPlan(dense=dense[i], limit=DEPTH, with_payload=("doc_id",)) for i in part]
            plans += [QueryPlan(sparse=sparse[i], limit=DEPTH, with_payload=("doc_id",)) for i in part]
            results = indexer.store.query_batch(plans)
            for j, i in enumerate(part):
                lists[qids[i]] = {"dense": results[j], "sparse": results[len(part) + j]}
        out[name] = (lists, {q: qrels[q] for q in qids}, {q: queries[q] for q in qids})
    stack.close()
    return out


def variants() -> dict[str, Callable[[Lists], list]]:
    from retrieval.fusion import fuse

    out: dict[str, Callable[[Lists], list]] = {
        "dense": lambda c: fuse({"dense": c["dense"]}),
        "sparse": lambda c: fuse({"sparse": c["sparse"]}),
        "RRF k=60": lambda c: fuse(c, rrf_k=60),
        "RRF k=10": lambda c: fuse(c, rrf_k=10),
        "DBSF": lambda c: fuse(c, method="dbsf"),
        "z-scores": lambda c: fuse(c, method="zscore"),
    }
    for w in (0.7, 1.5):
        out[f"RRF k=10, dense weight {w}"] = lambda c, w=w: fuse(c, rrf_k=10, weights={"dense": w})
    for t in (1.5, 2.5, 3.5):
        label = f"z-scores if sparse top z > {t}, else RRF k=10" + (" (shipped)" if t == 2.5 else "")
        out[label] = lambda c, t=t: gated(c, t, DEPTH)
    out["the same (2.5), a short sparse list not padded with zeros (previous release)"] = lambda c: gated(c, 2.5, None)
    out["min-max CombSUM (not shipped)"] = lambda c: combsum(c, _min_max)
    out["z-scores, missing chunk at the list's minimum (not shipped)"] = lambda c: combsum(c, _z, missing_at_min=True)
    out["RRF of the RRF k=10 and z-score lists (not shipped)"] = lambda c: _rrf_of(
        [fuse(c, rrf_k=10), fuse(c, method="zscore")]
    )
    out["robust z-scores: median and MAD (not shipped)"] = lambda c: combsum(c, _robust_z)
    out["z-scores, each list's best hit left out of its mean and sd, gated (not shipped)"] = lambda c: (
        combsum(c, _z_without_best) if top_z(c["sparse"]) > 2.5 else fuse(c, rrf_k=10)
    )
    out["z-scores over documents (a document's best chunk per list), gated (not shipped)"] = lambda c: (
        fuse(_per_document(c), method="zscore") if top_z(c["sparse"]) > 2.5 else fuse(c, rrf_k=10)
    )
    return out


def gated(c: Lists, threshold: float, depth: int | None) -> list:
    """Z-scores when the sparse list's best hit stands out, else RRF k=10; a sparse list shorter than ``depth``
    (it ran out: every other chunk scores 0) is padded with zeros (what ``HybridRetriever.fuse`` does)."""
    from retrieval.fusion import fuse

    if top_z(c["sparse"], depth) > threshold:
        return fuse(c, method="zscore", depth=depth)
    return fuse(c, rrf_k=10)


# Pairwise linear ranker (scikit-learn LogisticRegression on feature differences of relevant vs non-relevant chunks
# of a query, the non-relevant ones from either channel's top 30, the query's own document left out; L2, C=0.03,
# no intercept), fitted on SciFact train + train long queries only; C and the features chosen by 5-fold CV over
# those queries (issue 9 study; README, Quality). Per chunk: each channel's z-score z and 1/(10 + rank) rr (0 when
# missing from that list), a missing flag, and z times three query features standardized with their train mean
# and sd: log(1 + words), the sparse and the dense list's top z-scores.
LEARNED_WEIGHTS = {"z": (0.5259, 0.6409), "rr": (1.6904, -3.7591), "missing": (-1.2455, -0.5235)}
LEARNED_Z_BY_QUERY = ((-0.0324, 0.0342, 0.1140), (0.0500, 0.0375, 0.0795))  # dense z, sparse z x query features
LEARNED_QUERY_MEAN_SD = ((2.8267, 0.8998), (5.3583, 1.6182), (4.4387, 1.1957))


def learned(c: Lists, query: str) -> list:
    """The pairwise linear ranker's order of the union of the dense and sparse lists (not shipped)."""
    from retrieval.fusion import Fused

    names = ("dense", "sparse")
    z = {name: _z(np.array([h.score for h in c[name]], dtype=float)) for name in names}
    top = [float(z[name].max()) if len(z[name]) > 1 else 0.0 for name in ("sparse", "dense")]
    raw = (np.log1p(len(query.split())), *top)
    q = np.array([(v - mean) / sd for v, (mean, sd) in zip(raw, LEARNED_QUERY_MEAN_SD, strict=True)])
    fused: dict[str, Fused] = {}
    for hits in c.values():
        for h in hits:
            fused.setdefault(h.id, Fused(h.id, str(h.payload.get("doc_id", "")), 0.0))
    for f in fused.values():
        f.score = sum(LEARNED_WEIGHTS["missing"])
    for j, name in enumerate(names):
        z_weight = LEARNED_WEIGHTS["z"][j] + float(np.dot(LEARNED_Z_BY_QUERY[j], q))
        for rank, h in enumerate(c[name], start=1):
            f = fused[h.id]
            if name not in f.ranks:
                f.ranks[name] = rank
                f.score += z_weight * z[name][rank - 1] + LEARNED_WEIGHTS["rr"][j] / (10 + rank)
                f.score -= LEARNED_WEIGHTS["missing"][j]
    return sorted(fused.values(), key=lambda f: -f.score)


def _robust_z(scores: np.ndarray) -> np.ndarray:
    """(s - median) / (1.4826 MAD): one outlying hit (e.g. the query's own text) does not set the scale."""
    if len(scores) < 2:
        return np.zeros_like(scores)
    median = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - median))
    return (scores - median) / mad if mad > 0 else np.zeros_like(scores)


def _z_without_best(scores: np.ndarray) -> np.ndarray:
    """Z-scores whose mean and sd leave out the list's best hit (on a long query, the query's own document)."""
    rest = np.sort(scores)[:-1]
    return (scores - rest.mean()) / rest.std() if len(rest) > 1 and rest.std() > 0 else np.zeros_like(scores)


def _per_document(c: Lists) -> Lists:
    """Each list reduced to one hit per document (its best chunk), keyed by document id."""
    from retrieval.store import StoredHit

    out: Lists = {}
    for name, hits in c.items():
        seen: set[str] = set()
        out[name] = []
        for h in hits:
            doc = str(h.payload.get("doc_id", ""))
            if doc not in seen:
                seen.add(doc)
                out[name].append(StoredHit(id=doc, score=h.score, payload={"doc_id": doc}))
    return out


def _z(scores: np.ndarray) -> np.ndarray:
    return (scores - scores.mean()) / scores.std() if len(scores) and scores.std() > 0 else np.zeros_like(scores)


def _min_max(scores: np.ndarray) -> np.ndarray:
    span = np.ptp(scores) if len(scores) else 0.0
    return (scores - scores.min()) / span if span > 0 else np.ones_like(scores)


def combsum(c: Lists, normalize: Callable[[np.ndarray], np.ndarray], missing_at_min: bool = False) -> list:
    """CombSUM of each list's normalized scores; a chunk missing from a list gets 0 (or that list's minimum)."""
    from retrieval.fusion import Fused

    normalized = {}
    for name, hits in c.items():
        values = normalize(np.array([h.score for h in hits], dtype=float))
        normalized[name] = {h.id: float(v) for h, v in zip(hits, values, strict=True)}
    fused: dict[str, Fused] = {}
    for hits in c.values():
        for h in hits:
            fused.setdefault(h.id, Fused(h.id, str(h.payload.get("doc_id", "")), 0.0))
    for f in fused.values():
        for name in c:
            floor = min(normalized[name].values(), default=0.0) if missing_at_min else 0.0
            f.score += normalized[name].get(f.id, floor)
    return sorted(fused.values(), key=lambda f: -f.score)


def _rrf_of(lists: list[list], k: int = 10) -> list:
    """Reciprocal rank fusion of already fused lists."""
    score: dict[str, float] = {}
    first: dict[str, object] = {}
    for fused in lists:
        for rank, f in enumerate(fused, start=1):
            score[f.id] = score.get(f.id, 0.0) + 1.0 / (k + rank)
            first.setdefault(f.id, f)
    return sorted(first.values(), key=lambda f: -score[f.id])


def ndcg(fused_lists: dict[str, list], qrels: dict) -> float:
    from evals.metrics import evaluate
    from evals.runs import best_chunk_per_document

    run = {
        qid: best_chunk_per_document((f.doc_id, -float(i)) for i, f in enumerate(fused))
        for qid, fused in fused_lists.items()
    }
    return evaluate(qrels, run, k_values=(10,)).mean["ndcg@10"]


def main(argv: list[str] | None = None) -> dict[str, list]:
    """Prints the table; returns each fusion's row (nDCG@10 per query set) under its label."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fusion_study", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--collections", nargs="+", default=["scifact"], help="names under ../shared/datasets, folders, or sample"
    )
    parser.add_argument("--index-dir", type=Path, default=None, help="keep (and re-use) the collections here")
    parser.add_argument("--held-out", action="store_true", help="also the test splits (never choose on them)")
    args = parser.parse_args(argv)
    index_dir = args.index_dir or Path(tempfile.mkdtemp(prefix="hybrid-rag-fusion-"))
    sets = {}
    for name in args.collections:
        sets |= channel_lists(collection_dir(name), index_dir, args.held_out)
    rows = []
    for label, fn in variants().items():
        rows.append([label, *(ndcg({q: fn(c) for q, c in lists.items()}, qrels) for lists, qrels, _ in sets.values())])
    label = "pairwise linear ranker fitted on SciFact train (not shipped)"
    rows.append([label, *(ndcg({q: learned(c, t[q]) for q, c in ls.items()}, qr) for ls, qr, t in sets.values())])
    short = {name: sum(len(c["sparse"]) < DEPTH for c in lists.values()) for name, (lists, _, _) in sets.items()}
    rows.append([f"queries whose sparse list is shorter than {DEPTH}", *short.values()])
    headers = [f"{name} ({len(qrels)} q)" for name, (_, qrels, _) in sets.items()]
    console.print(table("nDCG@10 by fusion of the same channel lists", ["fusion", *headers], rows))
    return {row[0]: row[1:] for row in rows}


if __name__ == "__main__":
    main()
