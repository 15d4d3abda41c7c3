"""Indexing on an accelerator: dense throughput (bare ``encode`` and the whole pipeline) and quality parity.

    python -m benchmarks.gpu_indexing [--data ../shared/datasets/scifact] [--device cuda] [--save-vectors out.npz]

Indexes a BEIR corpus with the embedding cache off (every chunk is encoded on ``--device``), then scores the
dense, sparse and hybrid variants on the test split. ``--save-vectors`` writes the chunk texts' dense vectors
(fp16) so they can be compared with vectors computed on another device (``--compare`` does that here: cosine
of each chunk's vector with the one this machine computes). On a CPU this takes many minutes; it is meant
for a CUDA machine, where the dense model runs in fp16.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import console, machine_info, print_machine, read_docs, require_scifact, table, workdir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="BEIR directory (default: SciFact)")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: the best available)")
    parser.add_argument("--model", default=None, help="dense model name or path (default: settings)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-docs", type=int, default=0)
    parser.add_argument("--save-vectors", default=None, help="write chunk ids and fp16 dense vectors here (.npz)")
    parser.add_argument("--compare", default=None, help="a --save-vectors file from another device to compare")
    args = parser.parse_args(argv)

    from evals.collections import load_collection
    from evals.runner import evaluate_variants
    from retrieval import RetrievalSettings, RetrievalStack

    root = require_scifact(args.data)
    docs = read_docs(root, args.max_docs)
    with workdir() as tmp:
        overrides = {"dense_model": args.model} if args.model else {}
        if not args.compare:  # encode every chunk here; a comparison reads this machine's vectors from the cache
            overrides["cache_dir"] = tmp / "cache"
        settings = RetrievalSettings(
            qdrant_path=tmp / "index",
            collection="bench",
            embedding_cache=bool(args.compare),
            dense_device=args.device,
            dense_batch_size=args.batch_size,
            rerank=False,
            **overrides,
        )
        stack = RetrievalStack(settings)
        indexer = stack.indexer()
        info = machine_info(indexer.dense.runs_on)
        print_machine(info)
        if args.compare:
            compare(indexer, args.compare, root)
            return
        chunks = indexer.chunk(docs)
        texts = [c.embed_text for c in chunks]
        indexer.dense.encode_documents(texts[:512])  # warm-up: kernels, allocator
        started = time.perf_counter()
        vectors = indexer.dense.encode_documents(texts)
        bare_s = time.perf_counter() - started
        report = indexer.index(docs, progress=False)
        if args.save_vectors:
            np.savez_compressed(args.save_vectors, ids=np.array([c.id for c in chunks]), dense=vectors.astype("f2"))
        retriever = stack.retriever()
        coll = load_collection(root)
        results = evaluate_variants(
            retriever, coll.split_queries("test"), coll.qrels("test"), ["dense", "sparse", "hybrid"], progress=False
        )
        stack.close()
    console.print(
        table(
            f"Indexing {root.name} on {info['device']} ({len(docs)} docs, {len(chunks)} chunks, cache off)",
            ["measure", "value"],
            [
                ["bare encode, chunks/s", f"{len(texts) / bare_s:.0f}"],
                ["pipeline (chunk, encode, BM25, upsert), chunks/s", f"{report.chunks_per_second:.0f}"],
                ["pipeline / bare", f"{report.chunks_per_second / (len(texts) / bare_s):.2f}"],
                *[[f"{v} nDCG@10 (test)", f"{r.metrics['ndcg@10']:.4f}"] for v, r in results.items()],
                *[[f"{v} Recall@100 (test)", f"{r.metrics['recall@100']:.4f}"] for v, r in results.items()],
            ],
        )
    )


def compare(indexer, path: str, root, sample: int = 0) -> None:
    """Cosine between the vectors in ``path`` and the same chunks encoded here (through the embedding cache)."""
    saved = np.load(path)
    ids, other = list(saved["ids"]), saved["dense"].astype("f4")
    chunks = {c.id: c for c in indexer.chunk(read_docs(root))}
    rows = [i for i, pid in enumerate(ids) if pid in chunks][: sample or None]
    here, _ = indexer.encode_dense([chunks[ids[i]] for i in rows])
    cos = np.sum(here * other[rows], axis=1) / (np.linalg.norm(here, axis=1) * np.linalg.norm(other[rows], axis=1))
    console.print(
        table(
            f"Vectors from {path} vs {indexer.dense.runs_on}",
            ["chunks", "mean cosine", "min cosine", "p1 cosine"],
            [[len(rows), f"{cos.mean():.5f}", f"{cos.min():.5f}", f"{np.percentile(cos, 1):.5f}"]],
        )
    )


if __name__ == "__main__":
    main()
