"""Dense encoding on the CPU: torch fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 vs OpenVINO.

Throughput: the same SciFact chunk texts encoded by every backend (no embedding cache), in rounds whose
backend order rotates, so that load from other processes hits all of them alike; the speed-up is taken
per round against torch and its median reported. Quality: SciFact test nDCG@10 of the dense variant with
each backend's vectors (these go through the embedding cache, keyed by backend, since only the vectors
matter there).

    python -m benchmarks.cpu_backends [--backends torch,onnx,onnx-int8,openvino] [--texts 256] [--rounds 3]
                                      [--max-docs 1000] [--no-quality]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    console,
    eval_subset,
    goal,
    machine_info,
    print_machine,
    read_docs,
    require_scifact,
    run_and_report,
    table,
    workdir,
)

ALL_BACKENDS = ("torch", "onnx", "onnx-int8", "openvino")
NEEDS = {"onnx": "onnxruntime", "onnx-int8": "onnxruntime", "openvino": "openvino"}
SPEEDUP_GOAL = 2.0
NDCG_TOLERANCE = 0.005


def available(backend: str) -> bool:
    module = NEEDS.get(backend)
    return module is None or importlib.util.find_spec(module) is not None


def chunk_texts(root: Path, n: int, tokenizer, max_tokens: int, overlap: int = 32) -> list[str]:
    """The first ``n`` chunk texts of the corpus, cut as the indexer cuts them."""
    from retrieval.chunking import Chunker

    chunker = Chunker(tokenizer, max_tokens, overlap)
    texts: list[str] = []
    for doc in read_docs(root, max(n, 1)):
        texts += [c.embed_text for c in chunker.chunk(doc)]
        if len(texts) >= n:
            break
    return texts[:n]


def run(
    backends: tuple[str, ...] = ALL_BACKENDS,
    texts: int = 256,
    rounds: int = 3,
    max_docs: int | None = 1000,
    batch_size: int = 64,
    quality: bool = True,
    data: str | None = None,
    cache_dir: str | None = None,
    index_dir: str | None = None,
) -> dict[str, Any]:
    from retrieval.encoders import DenseEncoder
    from retrieval.settings import RetrievalSettings

    root = require_scifact(data)
    settings = RetrievalSettings(dense_batch_size=batch_size)
    cache = Path(cache_dir) if cache_dir else settings.cache_dir
    skipped = [b for b in backends if not available(b)]
    backends = tuple(b for b in backends if available(b))
    if "torch" not in backends:
        backends = ("torch", *backends)
    encoders = {b: DenseEncoder(batch_size=batch_size, backend=b, device="cpu", cache_dir=cache) for b in backends}
    load_s = {}
    for b, enc in encoders.items():  # export (first use only) and load before any timing
        started = time.perf_counter()
        enc.encode_documents(["warm-up sentence"] * 4)
        load_s[b] = time.perf_counter() - started
    sample = chunk_texts(root, texts, encoders["torch"].tokenizer, encoders["torch"].max_tokens)
    info = machine_info(device=encoders["torch"].runs_on)

    throughput: dict[str, list[float]] = {b: [] for b in backends}
    vectors: dict[str, np.ndarray] = {}
    order = list(backends)
    for r in range(rounds):
        for b in order[r % len(order) :] + order[: r % len(order)]:
            started = time.perf_counter()
            vectors[b] = encoders[b].encode_documents(sample)
            throughput[b].append(len(sample) / (time.perf_counter() - started))
    speedups = {b: [t / ref for t, ref in zip(throughput[b], throughput["torch"], strict=True)] for b in backends}
    rows: dict[str, dict[str, Any]] = {}
    for b in backends:
        cos = (vectors[b] * vectors["torch"]).sum(axis=1)
        rows[b] = {
            "runs_on": encoders[b].runs_on,
            "docs_s": statistics.median(throughput[b]),
            "docs_s_rounds": throughput[b],
            "speedup": statistics.median(speedups[b]),
            "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()),
            "load_s": load_s[b],
        }
    subset = None
    if quality:
        subset = eval_subset(root, max_docs)
        with workdir(index_dir) as where:
            for b in backends:
                rows[b]["ndcg@10"] = dense_ndcg(encoders[b], subset, where / b, cache, batch_size)
        base = rows["torch"]["ndcg@10"]
        for b in backends:
            rows[b]["ndcg_delta"] = rows[b]["ndcg@10"] - base
    for b in backends:
        ok_speed = rows[b]["speedup"] >= SPEEDUP_GOAL
        ok_quality = abs(rows[b].get("ndcg_delta", 0.0)) <= NDCG_TOLERANCE
        rows[b]["goal"] = None if b == "torch" else ok_speed and ok_quality
    return {
        "machine": info,
        "rows": rows,
        "texts": len(sample),
        "rounds": rounds,
        "batch_size": batch_size,
        "skipped": skipped,
        "subset": None
        if subset is None
        else {"docs": len(subset.docs), "queries": len(subset.queries), "full": subset.full_corpus},
    }


def dense_ndcg(encoder, subset, where: Path, cache_dir: Path, batch_size: int) -> float:
    """nDCG@10 of the dense variant over ``subset`` with ``encoder``'s vectors."""
    from evals.metrics import evaluate
    from evals.runs import best_chunk_per_document
    from retrieval import RetrievalSettings, RetrievalStack
    from retrieval.encoders import Bm25Encoder
    from retrieval.store import EdgeStore

    settings = RetrievalSettings(
        qdrant_path=where, collection="quality", cache_dir=cache_dir, dense_batch_size=batch_size, rerank=False
    )
    sparse = Bm25Encoder()
    with RetrievalStack(settings, store=EdgeStore(where, "quality"), dense=encoder, sparse=sparse) as stack:
        stack.indexer().index(subset.docs, progress=False)
        retriever = stack.retriever()
        ids = list(subset.queries)
        results = retriever.search_batch([subset.queries[q] for q in ids], k=100, variant="dense")
        run = {
            qid: best_chunk_per_document((h.doc_id, h.score) for h in hits)
            for qid, hits in zip(ids, results, strict=True)
        }
        return evaluate(subset.qrels, run).mean["ndcg@10"]


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"])
    subset = result["subset"]
    where = (
        "no quality run"
        if subset is None
        else f"nDCG@10: SciFact test, dense variant, {subset['docs']:,} docs"
        + (" (full corpus)" if subset["full"] else " (all judged docs of the kept queries + distractors)")
        + f", {subset['queries']} queries"
    )
    rows = []
    for b, r in result["rows"].items():
        rows.append(
            [
                b,
                r["runs_on"],
                r["docs_s"],
                " / ".join(f"{x:.1f}" for x in r["docs_s_rounds"]),
                f"{r['speedup']:.2f}x",
                f"{r['cos_mean']:.4f} / {r['cos_min']:.4f}",
                r.get("ndcg@10"),
                None if "ndcg_delta" not in r else f"{r['ndcg_delta']:+.4f}",
                "-" if r["goal"] is None else goal(r["goal"]),
            ]
        )
    console.print(
        table(
            f"CPU dense backends: {result['texts']} SciFact chunk texts, batch {result['batch_size']}, "
            f"{result['rounds']} rounds (median)",
            [
                "backend",
                "runs on",
                "docs/s",
                "docs/s per round",
                "speed-up",
                "cos to torch mean / min",
                "nDCG@10",
                "Δ nDCG",
                f"goal ≥{SPEEDUP_GOAL:.0f}x, |Δ|≤{NDCG_TOLERANCE}",
            ],
            rows,
            caption=where,
        )
    )
    if result["skipped"]:
        console.print(f"skipped (runtime not installed): {', '.join(result['skipped'])}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu_backends", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(ALL_BACKENDS))
    parser.add_argument("--texts", type=int, default=256, help="chunk texts timed per backend and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-docs", type=int, default=1000, help="quality corpus size (0: the whole corpus)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-quality", action="store_true", help="skip the nDCG@10 runs")
    parser.add_argument("--data", default=None, help="SciFact directory (BEIR layout)")
    parser.add_argument("--cache-dir", default=None, help="ONNX exports and embedding cache (default: settings)")
    args = parser.parse_args(argv)
    return run_and_report(
        lambda: run(
            tuple(b.strip() for b in args.backends.split(",") if b.strip()),
            args.texts,
            args.rounds,
            args.max_docs or None,
            args.batch_size,
            not args.no_quality,
            args.data,
            args.cache_dir,
        ),
        report,
    )


if __name__ == "__main__":
    main()
