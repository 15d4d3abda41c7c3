"""Run retrieval variants over a collection's queries and score them against its qrels."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from evals.runs import best_chunk_per_document
from retrieval.search import HybridRetriever, Variant

Run = dict[str, dict[str, float]]
RUN_DEPTH = 100


@dataclass
class VariantResult:
    """Mean metrics, per-query metrics, the run itself and its latency for one variant."""

    variant: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)
    run: Run = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)


def retrieve_run(
    retriever: HybridRetriever,
    queries: dict[str, str],
    variant: Variant | str,
    depth: int = RUN_DEPTH,
    progress: bool = True,
) -> tuple[Run, list[float]]:
    """Search every query on its own (as an application would) and return the run and latencies in ms."""
    variant = Variant(variant)
    run: Run = {}
    latencies = []
    for qid, text in tqdm(queries.items(), desc=f"searching ({variant})", unit="query", disable=not progress):
        started = time.perf_counter()
        hits = retriever.search(text, k=depth, variant=variant, rerank=variant is Variant.HYBRID_RERANK)
        latencies.append((time.perf_counter() - started) * 1000)
        run[qid] = best_chunk_per_document((h.doc_id, h.score) for h in hits)
    return run, latencies


def evaluate_variants(
    retriever: HybridRetriever,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    variants: Iterable[Variant | str] = tuple(Variant),
    progress: bool = True,
) -> dict[str, VariantResult]:
    """Every variant's metrics on ``queries`` (only those with qrels are searched)."""
    from evals.metrics import evaluate

    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    results = {}
    for variant in variants:
        variant = Variant(variant)
        run, latencies = retrieve_run(retriever, judged, variant, progress=progress)
        scored = evaluate(qrels, run)
        lat = np.asarray(latencies) if latencies else np.zeros(1)
        results[variant.value] = VariantResult(
            variant=variant.value,
            metrics=dict(scored.mean),
            per_query=scored.per_query,
            run=run,
            latency_ms={"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))},
        )
    return results
