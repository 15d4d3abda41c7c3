"""Ours vs the embedded hybrid-search engines users pick instead: LanceDB and Milvus Lite, same run.

Every system gets the same chunks (our chunker's output, the texts we index) and the same dense vectors
(all-MiniLM-L6-v2 through our encoder, document vectors through the embedding cache), and does BM25 and RRF
its own way, as its docs recommend:

* **hybrid-rag**: ``Indexer`` into the embedded engine (Qdrant Edge, optimized) and ``HybridRetriever.search``
  with the default settings (BM25 sparse vectors with Qdrant's IDF modifier, 100 candidates per channel fused by
  RRF k=10, or z-scores when the best BM25 hit stands out, then reranked).
* **LanceDB**: a table (chunk id, doc id, text, vector), its native full-text index (``create_index(config=FTS())``:
  simple tokenizer, lower case, English stemming, stop words), no vector index (exact search, what its docs
  advise at this size), ``search(query_type="hybrid")`` with its ``RRFReranker`` (k=60).
* **Milvus Lite**: a collection with a FLOAT_VECTOR (AUTOINDEX, IP) and a BM25 ``Function`` from the text
  (a VARCHAR with the ``standard`` analyzer: Milvus Lite has no ``english`` one) into a SPARSE_FLOAT_VECTOR
  (SPARSE_INVERTED_INDEX, BM25), ``hybrid_search`` with ``RRFRanker(60)``.

Every system fuses 100 candidates per channel (LanceDB's sub-queries take the hybrid query's limit, so it
is asked for 100 and its first 10 are its top 10). Figures per system: index build time (vectors given:
for ours it includes BM25-encoding the chunks and optimizing), search p50/p95 end to end (query text to
top 10, query encoding included: the same encoder call for every system) and engine only (the same query
vector given to every system; the query text is still analyzed by each system's BM25), nDCG@10 and
Recall@100 at document level (best chunk per document, BEIR conventions, ``evals.metrics``) from the
engine-only runs at depth 100. Queries alternate between systems, in a rotating order. For ours, the table
says where the time goes (``HybridRetriever.last_timings``) and what the bare fused Qdrant query costs.
A last table compares ways of encoding one query on the CPU (same vectors or nearly: max |Δ| to torch).

    python -m benchmarks.vs_embedded_peers [--quick] [--limit QUERIES] [--max-docs N] \
        [--datasets scifact,nfcorpus] [--peers lancedb,milvus] [--no-encode-study]

The peers are the ``[bench]`` extra: ``pip install 'hybrid-rag[bench]'`` (lancedb, pymilvus, milvus-lite).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")  # lance's Rust warnings about score columns, once per query

from benchmarks.common import (  # noqa: E402
    NFCORPUS,
    SCIFACT,
    console,
    eval_subset,
    goal,
    machine_info,
    optimize_store,
    percentiles,
    print_machine,
    run_and_report,
    table,
    workdir,
)

DATASETS = {"scifact": SCIFACT, "nfcorpus": NFCORPUS}
K = 10
DEPTH = 100
CANDIDATES = 100
RRF_K = 60
SPEED_GOAL = 0.5  # our search p50 over the fastest peer's
INSTALL_HINT = "pip install 'hybrid-rag[bench]'  (lancedb, pymilvus, milvus-lite)"


@dataclass
class Corpus:
    name: str
    chunks: list
    dense: np.ndarray
    query_ids: list[str]
    query_texts: list[str]
    query_vectors: np.ndarray
    qrels: dict[str, dict[str, int]]
    docs: int


@dataclass
class Result:
    name: str
    version: str
    build_s: float = 0.0
    e2e_ms: list[float] = field(default_factory=list)
    engine_ms: list[float] = field(default_factory=list)
    ndcg: float = 0.0
    recall: float = 0.0


# -- systems: build(corpus), engine(text, vector, k) -> [(doc_id, score)], close() ---------------------
class Ours:
    name = "hybrid-rag (Qdrant Edge)"

    def __init__(self, root: Path, dense, sparse, query_dense=None):
        from retrieval import RetrievalSettings

        self.settings = RetrievalSettings(qdrant_path=root, collection="bench", embedding_cache=False)
        self.dense, self.sparse, self.query_dense = dense, sparse, query_dense or dense
        self.version = importlib.metadata.version("qdrant-edge-py")
        self.timings: list[dict[str, float]] = []
        self.bare_ms: list[float] = []

    def build(self, corpus: Corpus) -> None:
        from retrieval import RetrievalStack

        self.stack = RetrievalStack(self.settings, dense=self.dense, sparse=self.sparse, query_encoder=self.query_dense)
        self.indexer = self.stack.indexer()
        t0 = time.perf_counter()
        sparse = self.indexer.encode_sparse(corpus.chunks)
        t1 = time.perf_counter()
        self.indexer.sync(corpus.chunks, vectors=(corpus.dense, sparse), progress=False)
        t2 = time.perf_counter()
        optimize_store(self.indexer.store)
        self.build_parts = {"BM25 encoding": t1 - t0, "Indexer.sync (upserts)": t2 - t1}
        self.build_parts["optimize"] = time.perf_counter() - t2
        self.retriever = self.stack.retriever()  # queries through query_dense; document vectors stay dense's
        # the same retriever code with the query vector given: its query encoder looks the vector up
        self.given = GivenQueryVectors(self.dense, dict(zip(corpus.query_texts, corpus.query_vectors, strict=True)))
        self.engine_retriever = self.stack.retriever()
        self.engine_retriever.query_encoder = self.given

    def end_to_end(self, text: str, k: int) -> list[tuple[str, float]]:
        hits = self.retriever.search(text, k=k)
        self.timings.append(dict(self.retriever.last_timings))
        return [(h.doc_id, h.score) for h in hits]

    def engine(self, text: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        return [(h.doc_id, h.score) for h in self.engine_retriever.search(text, k=k)]

    def bare_fused_query(self, text: str, vector: np.ndarray, k: int) -> None:
        """The fused Qdrant query alone (sparse query encoded outside the timing), for reference."""
        from retrieval.store import QueryPlan

        s = self.settings
        plan = QueryPlan(
            dense=vector,
            sparse=self.sparse.encode_queries([text])[0],
            limit=k,
            prefetch_k=s.prefetch_k,
            fusion=s.fusion,
            rrf_k=s.rrf_k,
            weights=(s.dense_weight, s.sparse_weight),
        )
        started = time.perf_counter()
        self.indexer.store.query_batch([plan])
        self.bare_ms.append((time.perf_counter() - started) * 1000)

    def close(self) -> None:
        self.stack.close()


class GivenQueryVectors:
    """Stands in for the query encoder of a retriever when the query vectors are given (engine-only timing)."""

    def __init__(self, dense, vectors: dict[str, np.ndarray]):
        self.dense, self.vectors = dense, vectors
        self.query_prompt, self.device, self.batch_size = dense.query_prompt, dense.device, dense.batch_size

    def encode_queries(self, texts) -> np.ndarray:
        return np.stack([self.vectors[t] for t in texts])

    def encode_query(self, text: str) -> np.ndarray:
        return self.vectors[text]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dense, name)


class LanceDB:
    name = "LanceDB (native FTS + vector, RRFReranker)"

    def __init__(self, root: Path):
        import lancedb

        self.db = lancedb.connect(str(root / "lancedb"))
        self.version = lancedb.__version__

    def build(self, corpus: Corpus) -> None:
        import pyarrow as pa
        from lancedb.index import FTS
        from lancedb.rerankers import RRFReranker

        dim = corpus.dense.shape[1]
        data = pa.table(
            {
                "chunk_id": [c.id for c in corpus.chunks],
                "doc_id": [c.doc_id for c in corpus.chunks],
                "text": [c.embed_text for c in corpus.chunks],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(corpus.dense.ravel(), pa.float32()), dim),
            }
        )
        self.table = self.db.create_table(corpus.name, data, mode="overwrite")
        self.table.create_index("text", config=FTS())  # defaults: stemming, stop words, lower case
        self.reranker = RRFReranker(K=RRF_K)

    def engine(self, text: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        rows = (
            self.table.search(query_type="hybrid", vector_column_name="vector", fts_columns="text")
            .vector(vector)
            .text(text)
            .limit(max(k, CANDIDATES))
            .rerank(self.reranker)
            .select(["chunk_id", "doc_id", "text"])
            .to_list()
        )
        return [(r["doc_id"], r["_relevance_score"]) for r in rows[:k]]

    def close(self) -> None:
        pass


class MilvusLite:
    name = "Milvus Lite (BM25 function + dense, RRFRanker)"

    def __init__(self, root: Path):
        from pymilvus import MilvusClient

        self.client = MilvusClient(str(root / "milvus.db"))
        self.version = f"pymilvus {importlib.metadata.version('pymilvus')}, milvus-lite " + importlib.metadata.version(
            "milvus-lite"
        )

    def build(self, corpus: Corpus) -> None:
        from pymilvus import DataType, Function, FunctionType

        c = self.client
        schema = c.create_schema(auto_id=False)
        schema.add_field("chunk_id", DataType.VARCHAR, is_primary=True, max_length=128)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=256)
        schema.add_field("text", DataType.VARCHAR, max_length=65535, enable_analyzer=True,
                         analyzer_params={"tokenizer": "standard", "filter": ["lowercase"]})  # fmt: skip
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=int(corpus.dense.shape[1]))
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(
            Function(name="bm25", function_type=FunctionType.BM25, input_field_names=["text"],
                     output_field_names=["sparse"])
        )  # fmt: skip
        index = c.prepare_index_params()
        index.add_index("dense", index_type="AUTOINDEX", metric_type="IP")
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                        params={"inverted_index_algo": "DAAT_MAXSCORE", "bm25_k1": 1.2, "bm25_b": 0.75})  # fmt: skip
        self.collection = corpus.name
        if c.has_collection(self.collection):
            c.drop_collection(self.collection)
        c.create_collection(self.collection, schema=schema, index_params=index)
        rows = [
            {"chunk_id": ch.id, "doc_id": ch.doc_id, "text": ch.embed_text, "dense": vec.tolist()}
            for ch, vec in zip(corpus.chunks, corpus.dense, strict=True)
        ]
        for start in range(0, len(rows), 1000):
            c.insert(self.collection, rows[start : start + 1000])
        c.flush(self.collection)
        c.load_collection(self.collection)

    def engine(self, text: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        from pymilvus import AnnSearchRequest, RRFRanker

        requests = [
            AnnSearchRequest([vector.tolist()], "dense", {"metric_type": "IP"}, limit=CANDIDATES),
            AnnSearchRequest([text], "sparse", {"metric_type": "BM25"}, limit=CANDIDATES),
        ]
        found = self.client.hybrid_search(
            self.collection, requests, RRFRanker(RRF_K), limit=k, output_fields=["doc_id", "text"]
        )
        return [(h["entity"]["doc_id"], h["distance"]) for h in found[0]]

    def close(self) -> None:
        self.client.close()


PEERS: dict[str, Callable[[Path], Any]] = {"lancedb": LanceDB, "milvus": MilvusLite}


# -- the run ------------------------------------------------------------------------------------------
def load_corpus(name: str, root: Path, indexer, max_docs: int | None, limit: int | None) -> Corpus:
    if not (root / "corpus.jsonl").is_file():
        raise SystemExit(f"{name} not found at {root} (BEIR layout; set HYBRID_RAG_{name.upper()})")
    subset = eval_subset(root, max_docs, max_queries=limit)
    chunks = indexer.chunk(subset.docs)
    dense, _ = indexer.encode_dense(chunks)  # through the shared embedding cache
    ids = list(subset.queries)
    texts = [subset.queries[q] for q in ids]
    vectors = np.stack([indexer.dense.encode_query(t) for t in texts])  # as a search encodes them
    return Corpus(name, chunks, np.asarray(dense), ids, texts, vectors, subset.qrels, len(subset.docs))


def run_dataset(corpus: Corpus, systems: list, query_dense) -> dict[str, Any]:
    from evals.metrics import evaluate
    from evals.runs import best_chunk_per_document

    results = [Result(s.name, s.version) for s in systems]
    for system, result in zip(systems, results, strict=True):
        console.print(f"[dim]{corpus.name}: building {system.name}[/dim]")
        started = time.perf_counter()
        system.build(corpus)
        result.build_s = time.perf_counter() - started

    queries = list(zip(corpus.query_ids, corpus.query_texts, corpus.query_vectors, strict=True))
    for _, text, vector in queries[:5]:  # warm-up
        for system in systems:
            system.engine(text, vector, K)
    # quality: engine-only runs at depth 100, the same query vectors everywhere
    console.print(f"[dim]{corpus.name}: {len(queries)} queries at depth {DEPTH}, then twice at top {K}[/dim]")
    runs: list[dict[str, dict[str, float]]] = [{} for _ in systems]
    for n, (qid, text, vector) in enumerate(queries):
        for i in rotation(len(systems), n):
            found = systems[i].engine(text, vector, DEPTH)
            runs[i][qid] = best_chunk_per_document(found)
    for result, run in zip(results, runs, strict=True):
        mean = evaluate(corpus.qrels, run).mean
        result.ndcg, result.recall = mean["ndcg@10"], mean["recall@100"]
    # latency at k=10: end to end (query text in), then engine only (query vector given)
    ours = systems[0]
    ours.timings.clear()
    for n, (_, text, _vector) in enumerate(queries):
        for i in rotation(len(systems), n):
            system, started = systems[i], time.perf_counter()
            if system is ours:
                system.end_to_end(text, K)
            else:
                system.engine(text, query_dense.encode_query(text), K)
            results[i].e2e_ms.append((time.perf_counter() - started) * 1000)
    for n, (_, text, vector) in enumerate(queries):
        for i in rotation(len(systems), n):
            started = time.perf_counter()
            systems[i].engine(text, vector, K)
            results[i].engine_ms.append((time.perf_counter() - started) * 1000)
        ours.bare_fused_query(text, vector, K)
    breakdown = {key: statistics.median(t[key] for t in ours.timings) * 1000 for key in ours.timings[0]}
    for system in systems:
        system.close()
    return {
        "name": corpus.name,
        "docs": corpus.docs,
        "chunks": len(corpus.chunks),
        "queries": len(queries),
        "results": results,
        "breakdown_ms": breakdown,
        "build_parts_s": ours.build_parts,
        "bare_ms": percentiles(ours.bare_ms),
    }


def rotation(n: int, step: int) -> list[int]:
    """System order for query ``step``: rotated each query so no system always runs first."""
    return [(step + i) % n for i in range(n)]


def encode_study(dense, texts: list[str], backends: tuple[str, ...] = ("onnx", "openvino")) -> list[list[Any]]:
    """Single-query encoding on the CPU: our encoder (sentence-transformers, one thread) vs a bare forward
    pass, ONNX Runtime and OpenVINO; p50 ms and max |Δ| of the vectors to the default encoder's."""
    import torch

    from retrieval.encoders import DenseEncoder
    from retrieval.encoders.runtime import one_thread

    model = dense.model
    tokenizer = model.tokenizer
    transformer = model[0].auto_model

    def bare(text: str) -> np.ndarray:
        with one_thread(), torch.inference_mode():
            batch = tokenizer([text], truncation=True, max_length=dense.max_tokens, return_tensors="pt")
            hidden = transformer(**batch).last_hidden_state
            pooled = hidden.mean(dim=1)[0]
            return torch.nn.functional.normalize(pooled, dim=0).numpy()

    candidates: dict[str, Callable[[str], np.ndarray]] = {
        "DenseEncoder.encode_query (sentence-transformers, 1 thread; default)": dense.encode_query,
        "bare forward pass (tokenizer + BertModel + mean pool, inference_mode, 1 thread)": bare,
    }
    for backend in backends:
        try:
            other = DenseEncoder(dense.model_name, backend=backend, cache_dir=dense.cache_dir)
            other.encode_query("warm-up")
            candidates[f"{backend} backend ({other.runs_on})"] = other.encode_query
        except Exception as exc:  # optional packages ([fast] extra) or a failed export
            console.print(f"[dim]{backend} backend skipped: {exc}[/dim]")
    reference = {t: dense.encode_query(t) for t in texts}
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    delta: dict[str, float] = dict.fromkeys(candidates, 0.0)
    names = list(candidates)
    for n, text in enumerate(texts):
        for i in rotation(len(names), n):
            name = names[i]
            started = time.perf_counter()
            vector = candidates[name](text)
            samples[name].append((time.perf_counter() - started) * 1000)
            delta[name] = max(delta[name], float(np.abs(vector - reference[text]).max()))
    rows = []
    for name in names:
        p = percentiles(samples[name])
        rows.append([name, p["p50"], p["p95"], f"{delta[name]:.1e}"])
    return rows


def run(
    datasets: list[str],
    peers: list[str],
    max_docs: int | None,
    limit: int | None,
    study: bool = True,
    query_backend: str = "torch",
    cache_dir: str | None = None,
    study_backends: tuple[str, ...] = ("onnx", "openvino"),
    on_dataset: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    from retrieval import RetrievalSettings, RetrievalStack
    from retrieval.encoders import DenseEncoder

    out: dict[str, Any] = {"datasets": [], "peers_missing": []}
    available = []
    for peer in peers:
        try:
            with workdir() as probe:
                PEERS[peer](probe).close()
            available.append(peer)
        except ImportError as exc:
            out["peers_missing"].append(f"{peer} ({exc.name or exc}): {INSTALL_HINT}")
    with workdir() as tmp:
        extra: dict[str, Any] = {"cache_dir": cache_dir} if cache_dir else {}
        stack = RetrievalStack(RetrievalSettings(qdrant_path=tmp / "chunker", collection="chunker", **extra))
        indexer = stack.indexer()
        dense, sparse = indexer.dense, indexer.sparse
        dense.encode_query("warm-up")
        query_dense = dense
        if query_backend != "torch":  # same model, queries only: the stored document vectors stay torch's
            query_dense = DenseEncoder(dense.model_name, backend=query_backend, cache_dir=dense.cache_dir)
            query_dense.encode_query("warm-up")
        out["machine"] = machine_info(device=dense.runs_on)
        out["query_encoder"] = query_dense.runs_on
        for name in datasets:
            corpus = load_corpus(name, DATASETS[name], indexer, max_docs, limit)
            root = tmp / name
            root.mkdir()
            systems = [Ours(root / "ours", dense, sparse, query_dense), *(PEERS[p](root) for p in available)]
            ds = run_dataset(corpus, systems, query_dense)
            ds["query_encoder"], ds["load"] = query_dense.runs_on, os.getloadavg()[0]
            out["datasets"].append(ds)
            if on_dataset:
                on_dataset(ds)
            if study and "study" not in out:
                out["study"] = encode_study(dense, corpus.query_texts[:100], study_backends)
        stack.close()
    out["load_after"] = os.getloadavg()[0]
    return out


def report(result: dict[str, Any], datasets: bool = True) -> None:
    print_machine(result["machine"], result["load_after"])
    for missing in result["peers_missing"]:
        console.print(f"[yellow]peer not installed: {missing}[/yellow]")
    for ds in result["datasets"] if datasets else []:
        report_dataset(ds)
    if result.get("study"):
        console.print(
            table(
                "Encoding one query on the CPU (first 100 test queries, alternating)",
                ["encoder", "p50 ms", "p95 ms", "max |Δ| to default"],
                result["study"],
            )
        )


def report_dataset(ds: dict[str, Any]) -> None:
    """The comparison table of one dataset and where our time went."""
    results: list[Result] = ds["results"]
    ours, peers = results[0], results[1:]
    rows = []
    for r in results:
        e2e, eng = percentiles(r.e2e_ms), percentiles(r.engine_ms)
        rows.append([f"{r.name} {r.version}", r.build_s, e2e["p50"], e2e["p95"], eng["p50"], eng["p95"],
                     r.ndcg, r.recall])  # fmt: skip
    caption = [
        "same chunks and MiniLM vectors for all; document level (best chunk per doc); end to end: queries "
        f"encoded by the same encoder for all ({ds['query_encoder']}); load average {ds['load']:.1f}"
    ]
    if peers:
        fastest = min(peers, key=lambda r: percentiles(r.e2e_ms)["p50"])
        ratio = percentiles(ours.e2e_ms)["p50"] / percentiles(fastest.e2e_ms)["p50"]
        engine_ratio = percentiles(ours.engine_ms)["p50"] / percentiles(fastest.engine_ms)["p50"]
        met = ratio <= SPEED_GOAL and ours.ndcg >= fastest.ndcg
        caption.append(
            f"search p50 ours / fastest peer ({fastest.name.split(' (')[0]}): {ratio:.2f}x end to end, "
            f"{engine_ratio:.2f}x engine only; nDCG@10 {ours.ndcg:.4f} vs {fastest.ndcg:.4f}; goal ≤ "
            f"{SPEED_GOAL}x at ≥ equal nDCG@10: {goal(met)}"
        )
    console.print(
        table(
            f"{ds['name']}: {ds['docs']:,} docs -> {ds['chunks']:,} chunks, {ds['queries']} test queries, "
            f"{CANDIDATES} candidates per channel, peers RRF k={RRF_K}, ours its shipped fusion and reranking, top {K}",
            [
                "system",
                "build s",
                "e2e p50 ms",
                "e2e p95 ms",
                "engine p50 ms",
                "engine p95 ms",
                "nDCG@10",
                "Recall@100",
            ],  # fmt: skip
            rows,
            caption="\n".join(caption),
        )
    )
    parts = ds["breakdown_ms"]
    e2e_p50 = percentiles(ours.e2e_ms)["p50"]
    rows = [[key.removesuffix("_s"), ms, f"{ms / e2e_p50:.0%}"] for key, ms in parts.items()]
    rows.append(["bare fused Qdrant query (top 10 with payloads)", ds["bare_ms"]["p50"], "-"])
    rows += [[f"build: {part}", seconds * 1000, "-"] for part, seconds in ds["build_parts_s"].items()]
    console.print(
        table(
            f"{ds['name']}: where our time goes (search: HybridRetriever.last_timings, median ms; build: ms)",
            ["part", "p50 ms", "of e2e p50"],
            rows,
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_embedded_peers", description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="scifact,nfcorpus", help="comma-separated: scifact, nfcorpus")
    parser.add_argument("--peers", default="lancedb,milvus", help="comma-separated: lancedb, milvus")
    parser.add_argument("--max-docs", type=int, default=0, help="documents per dataset (0: the whole corpus)")
    parser.add_argument("--limit", type=int, default=0, help="test queries per dataset (0: all)")
    parser.add_argument("--quick", action="store_true", help="SciFact only, 1,000 docs, 50 queries")
    parser.add_argument("--no-encode-study", action="store_true", help="skip the single-query encoding table")
    parser.add_argument(
        "--query-backend", default="torch", help="query encoder of the end-to-end searches, for every system "
        "(torch: the default; onnx, openvino: same model, document vectors unchanged)"
    )  # fmt: skip
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    max_docs, limit = args.max_docs or None, args.limit or None
    if args.quick:
        datasets, max_docs, limit = ["scifact"], max_docs or 1000, limit or 50
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        parser.error(f"unknown datasets {sorted(unknown)}; expected {sorted(DATASETS)}")
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if set(peers) - set(PEERS):
        parser.error(f"unknown peers {sorted(set(peers) - set(PEERS))}; expected {sorted(PEERS)}")
    return run_and_report(
        lambda: run(
            datasets, peers, max_docs, limit, not args.no_encode_study, args.query_backend, on_dataset=report_dataset
        ),
        lambda r: report(r, datasets=False),
    )


if __name__ == "__main__":
    main()
