"""Indexing overhead: end-to-end indexing vs ``SentenceTransformer.encode`` alone on the same chunk texts.

End to end = read a SciFact subset, chunk it, dense + sparse encode, upsert into a fresh embedded
collection (embedding cache off). Encode alone = the same model object's ``encode`` on the same chunk
texts with the same batch size and device. Both run in the same process, alternating, for ``--rounds``
rounds; the ratio of throughputs is taken per round and its median reported (goal: >= 0.9). A profile of
the pipeline's parts on the same texts follows, to tell where any overhead goes.

    python -m benchmarks.indexing_overhead [--max-docs 300] [--rounds 2] [--batch-size 64] [--no-profile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from benchmarks.common import (
    console,
    goal,
    machine_info,
    print_machine,
    read_docs,
    require_scifact,
    run_and_report,
    table,
    workdir,
)

RATIO_GOAL = 0.9


def run(
    max_docs: int = 300,
    rounds: int = 2,
    batch_size: int = 64,
    profile: bool = True,
    data: str | None = None,
    backend: str = "torch",
) -> dict[str, Any]:
    from retrieval import RetrievalSettings, RetrievalStack
    from retrieval.encoders import Bm25Encoder, DenseEncoder
    from retrieval.store import EdgeStore

    root = require_scifact(data)
    dense = DenseEncoder(batch_size=batch_size, backend=backend)
    sparse = Bm25Encoder()
    model = dense.model  # load before timing; both sides use this object
    model.encode(["warm-up sentence"] * 4, batch_size=batch_size)
    info = machine_info(device=dense.runs_on)
    rounds_out = []
    with workdir() as tmp:
        settings = RetrievalSettings(
            qdrant_path=tmp, cache_dir=tmp / "cache", embedding_cache=False, dense_batch_size=batch_size
        )
        texts: list[str] = []
        for r in range(rounds):
            sides = ["index", "encode"] if r % 2 == 0 else ["encode", "index"]
            entry: dict[str, Any] = {}
            for side in sides:
                if side == "index":
                    store = EdgeStore(tmp, f"round{r}")
                    started = time.perf_counter()
                    docs = read_docs(root, max_docs)
                    ix = RetrievalStack(settings, store=store, dense=dense, sparse=sparse).indexer()
                    report = ix.index(docs, progress=False)
                    entry["index_s"] = time.perf_counter() - started
                    entry["chunks"], entry["points"], entry["docs"] = report.chunks, report.points, len(docs)
                    store.close()
                else:
                    if not texts:  # the indexer's own chunks (untimed)
                        ix = RetrievalStack(
                            settings, store=EdgeStore(tmp, "chunks"), dense=dense, sparse=sparse
                        ).indexer()
                        texts = [c.embed_text for c in ix.chunk(read_docs(root, max_docs))]
                    started = time.perf_counter()
                    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
                    entry["encode_s"] = time.perf_counter() - started
            entry["index_cps"] = entry["chunks"] / entry["index_s"]
            entry["encode_cps"] = len(texts) / entry["encode_s"]
            entry["ratio"] = entry["index_cps"] / entry["encode_cps"]
            rounds_out.append(entry)
        parts = profile_parts(root, max_docs, settings, dense, sparse, tmp) if profile else None
    ratio = statistics.median(r["ratio"] for r in rounds_out)
    return {
        "machine": info,
        "rounds": rounds_out,
        "chunks": rounds_out[0]["chunks"],
        "docs": rounds_out[0]["docs"],
        "batch_size": batch_size,
        "index_cps": statistics.median(r["index_cps"] for r in rounds_out),
        "encode_cps": statistics.median(r["encode_cps"] for r in rounds_out),
        "ratio": ratio,
        "goal_met": ratio >= RATIO_GOAL,
        "profile": parts,
    }


def profile_parts(root, max_docs, settings, dense, sparse, tmp) -> dict[str, Any]:
    """Seconds of each pipeline step on the same input, run one after the other (not overlapped)."""
    from retrieval import RetrievalStack
    from retrieval.store import EdgeStore

    out: dict[str, Any] = {}
    t = time.perf_counter()
    docs = read_docs(root, max_docs)
    out["read"] = time.perf_counter() - t
    store = EdgeStore(tmp, "profile")
    ix = RetrievalStack(settings, store=store, dense=dense, sparse=sparse).indexer()
    t = time.perf_counter()
    chunks = ix.chunk(docs)
    out["chunk"] = time.perf_counter() - t
    texts = [c.embed_text for c in chunks]
    t = time.perf_counter()
    vectors = dense.model.encode(texts, batch_size=dense.batch_size, normalize_embeddings=True, convert_to_numpy=True)
    out["dense: one encode call"] = time.perf_counter() - t
    t = time.perf_counter()
    ix.encode_dense(chunks)
    out["dense: Indexer.encode_dense"] = time.perf_counter() - t
    t = time.perf_counter()
    input_order_batches(dense, texts)
    out["dense: same batches in input order (no length sort)"] = time.perf_counter() - t
    t = time.perf_counter()
    sparse_vectors = ix.encode_sparse(chunks)
    out["sparse (BM25)"] = time.perf_counter() - t
    store.ensure(ix.schema())
    t = time.perf_counter()
    step = settings.upsert_batch_size
    for s in range(0, len(chunks), step):
        store.upsert(chunks[s : s + step], np.asarray(vectors[s : s + step]), sparse_vectors[s : s + step])
    store.flush()
    out["upsert + flush"] = time.perf_counter() - t
    store.close()
    out["chunks"] = len(chunks)
    out["padding"] = padding(dense, texts)
    return out


def padding(dense, texts: list[str]) -> dict[str, float]:
    """Tokens the encoder computes (batch size x longest text of the batch) over the real tokens, for batches
    cut in input order, by characters (one ``encode`` call) and by tokens (the indexer): load-independent."""
    lengths = np.array(
        [len(ids) for ids in dense.tokenizer(texts, truncation=True, max_length=dense.max_tokens)["input_ids"]]
    )
    step = dense.batch_size

    def padded(order) -> float:
        return sum(len(order[s : s + step]) * lengths[order[s : s + step]].max() for s in range(0, len(order), step))

    return {
        "batches in input order (before)": padded(np.arange(len(texts))) / lengths.sum(),
        "sorted by characters (one encode call)": padded(np.argsort([-len(t) for t in texts], kind="stable"))
        / lengths.sum(),
        "sorted by tokens (Indexer.encode_dense)": padded(np.argsort(-lengths, kind="stable")) / lengths.sum(),
    }


def input_order_batches(dense, texts: list[str]) -> np.ndarray:
    """What ``Indexer.encode_dense`` did before it sorted the texts by length: batch-sized calls under the
    encoder lock in input order, so each batch is padded to its longest text."""
    from retrieval.indexer import locked_batches

    return np.concatenate(locked_batches(dense, dense.encode_documents, texts, dense.batch_size))


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"])
    rows = [
        [f"round {i + 1}", r["index_s"], r["index_cps"], r["encode_s"], r["encode_cps"], r["ratio"]]
        for i, r in enumerate(result["rounds"])
    ]
    rows.append(["median", None, result["index_cps"], None, result["encode_cps"], result["ratio"]])
    console.print(
        table(
            f"Indexing overhead: {result['docs']} SciFact docs -> {result['chunks']:,} chunks, batch "
            f"{result['batch_size']}, device {result['machine']['device']}, embedding cache off",
            ["", "end-to-end s", "end-to-end chunks/s", "encode-alone s", "encode-alone chunks/s", "ratio"],
            rows,
            caption=f"goal ratio ≥ {RATIO_GOAL}: {goal(result['goal_met'])}",
        )
    )
    parts = result["profile"]
    if parts:
        base = parts["dense: one encode call"]
        console.print(
            table(
                f"Pipeline parts, run one after the other on the same {parts['chunks']:,} chunks",
                ["step", "seconds", "vs one encode call"],
                [[k, v, f"{v / base:.1%}"] for k, v in parts.items() if k not in {"chunks", "padding"}],
            )
        )
        console.print(
            table(
                "Padding: tokens computed / real tokens, batches of the same size",
                ["batches", "ratio"],
                [[k, v] for k, v in parts["padding"].items()],
            )
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.indexing_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--max-docs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", default="torch", help="dense backend (torch, onnx, onnx-int8, openvino)")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--data", default=None, help="SciFact directory (BEIR layout)")
    args = parser.parse_args(argv)
    return run_and_report(
        lambda: run(args.max_docs, args.rounds, args.batch_size, not args.no_profile, args.data, args.backend), report
    )


if __name__ == "__main__":
    main()
