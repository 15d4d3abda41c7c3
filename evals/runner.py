"""Run retrieval variants over a collection's queries and score them against its qrels.

:func:`evaluate_collection` is the one evaluation path: the CLI ``eval`` command and the Dagster
``retrieval_evaluation`` asset both call it, get an :class:`EvalReport` back, record it in the history with
:meth:`EvalReport.record` and render it (a rich table, Dagster metadata).
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import time
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import TYPE_CHECKING, Any

import numpy as np

from evals.compare import LossCheck, loss_check
from evals.metrics import (
    LATENCY_KEY,
    LATENCY_P50,
    LATENCY_P95,
    evaluate,
    judgement_warnings,
    nfc,
    relevant_documents,
)
from evals.runs import Run, best_chunk_per_document
from retrieval.chunking import point_id
from retrieval.documents import compact_repr
from retrieval.errors import HybridRagError, InvalidArgumentError, choice, not_one_string
from retrieval.progress import progress_bar
from retrieval.search import HybridRetriever, QueryVectors, Variant
from retrieval.store.base import ENCODING_FIELDS, ForeignPointsError
from retrieval.wording import counted

if TYPE_CHECKING:
    import pandas as pd

    from evals.collections import EvalCollection
    from evals.history import EvalHistory
    from retrieval.store import QdrantStore

RUN_DEPTH = 100
# The search-time settings that change results, recorded with every report (the index-time ones, which made the
# collection's vectors, come from its schema; the models are the encoders' own names).
REPORTED_SETTINGS = (
    "dense_backend",  # the queries' encoding: onnx-int8 or openvino queries move the figures
    "fusion",
    "rrf_k",
    "zscore_fusion_above",
    "dense_weight",
    "sparse_weight",
    "prefetch_k",
    "rerank_mode",
    "rerank_depth",
    "rerank_feedback_k",
    "rerank_feedback_beta",
    "rerank_weight",
    "rerank_agreement",
)


def shipped_search_settings() -> dict[str, Any]:
    """The shipped defaults of :data:`REPORTED_SETTINGS` (what ``eval-report`` joins into the published line)."""
    from retrieval.settings import RetrievalSettings

    return {name: _plain(RetrievalSettings.model_fields[name].default) for name in REPORTED_SETTINGS}


class JudgedDocumentsMissingError(HybridRagError):
    """None of the documents judged in a split is in the searched collection (another corpus was indexed there):
    every metric would be 0."""


@dataclass
class VariantResult:
    """Mean metrics, per-query metrics, the run itself and its latency for one variant."""

    variant: str
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)  # a row per query: not shown
    run: Run = field(default_factory=dict, repr=False)
    latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class EncodedQueries:
    """Each query encoded once, each channel on its own as a search encodes it (:meth:`HybridRetriever.encode`):
    the vectors every variant and the top-up search with, and the milliseconds each channel's encoding took, which
    a variant's latency includes for the channels it searches."""

    vectors: dict[str, QueryVectors] = field(default_factory=dict)  # query id -> that query's vectors
    ms: dict[str, dict[str, float]] = field(default_factory=dict)  # query id -> {channel: encoding ms}

    @classmethod
    def of(
        cls, retriever: HybridRetriever, queries: Mapping[str, str], channels: Iterable[str], progress: bool = True
    ) -> EncodedQueries:
        """``queries`` encoded for ``channels`` ("dense", "sparse"), one query at a time (an application's search
        encodes its own query alone; a batch gives vectors that differ in the last bits)."""
        channels = [c for c in ("dense", "sparse") if c in set(channels)]
        out = cls()
        for qid, text in progress_bar(queries.items(), progress=progress, desc="encoding queries", unit="query"):
            parts, out.ms[qid] = {}, {}
            for channel in channels:
                started = time.perf_counter()
                parts[channel] = retriever.encode([text], channel)
                out.ms[qid][channel] = (time.perf_counter() - started) * 1000
            dense, sparse = parts.get("dense"), parts.get("sparse")
            out.vectors[qid] = QueryVectors(
                dense.dense if dense else None, sparse.sparse if sparse else None, dense.encoder if dense else None
            )
        return out

    def batch(self, qids: Iterable[str]) -> QueryVectors:
        """The vectors of ``qids`` as one batch (for :meth:`HybridRetriever.search_batch`)."""
        rows = [self.vectors[qid] for qid in qids]
        first = rows[0]
        return QueryVectors(
            np.concatenate([r.dense for r in rows]) if first.dense is not None else None,
            [v for r in rows for v in r.sparse] if first.sparse is not None else None,
            first.encoder,
        )

    def latency_ms(self, qid: str, variant: Variant) -> float:
        """What encoding ``qid`` for ``variant``'s channels took."""
        return sum(self.ms[qid][channel] for channel in variant.channels)


def retrieve_run(
    retriever: HybridRetriever,
    queries: dict[str, str],
    variant: Variant | str,
    depth: int = RUN_DEPTH,
    progress: bool = True,
    encoded: EncodedQueries | None = None,
    ignore_identical_ids: bool = True,
) -> tuple[Run, list[float]]:
    """Search every query on its own (as an application would) and return the run and latencies in ms.

    Each query's run holds ``depth`` documents (fewer only when the collection holds fewer): the documents of
    its top ``depth`` chunks, in the order an application asking for ``k <= depth`` hits gets them, then, when
    those are fewer than ``depth`` documents, the next ones of a document-level first-stage search
    (:func:`deepen_runs`). The document whose id is the query id (ignored by BEIR's metrics) is left out, unless
    ``ignore_identical_ids`` is False (then the metrics must be told so too: :func:`evals.metrics.evaluate`).
    ``encoded``: the queries' vectors (default: encoded here). A latency is the application's search: encoding
    the query (its channels, :class:`EncodedQueries`) plus the search from its vectors.
    """
    variant = Variant(variant)
    if encoded is None:
        encoded = EncodedQueries.of(retriever, queries, variant.channels, progress)
    run, latencies = search_run(retriever, queries, variant, depth, encoded, progress, ignore_identical_ids)
    deepen_runs(retriever, queries, {variant: run}, depth, encoded, ignore_identical_ids)
    return run, latencies


def search_run(
    retriever: HybridRetriever,
    queries: Mapping[str, str],
    variant: Variant,
    depth: int,
    encoded: EncodedQueries,
    progress: bool = True,
    ignore_identical_ids: bool = True,
) -> tuple[Run, list[float]]:
    """Each query's documents of its top ``depth`` chunks (one search per query, from its vectors) and each
    search's latency in ms, its query's encoding included (see :func:`retrieve_run`)."""
    run: Run = {}
    latencies = []
    for qid, text in progress_bar(queries.items(), progress=progress, desc=f"searching ({variant})", unit="query"):
        started = time.perf_counter()
        hits = retriever.search(
            text, k=depth, variant=variant, rerank=variant is Variant.HYBRID_RERANK, encoded=encoded.vectors[qid]
        )
        latencies.append((time.perf_counter() - started) * 1000 + encoded.latency_ms(qid, variant))
        kept = (h for h in hits if not (ignore_identical_ids and _same_id(h.doc_id, qid)))
        run[qid] = best_chunk_per_document((h.doc_id, h.score) for h in kept)
    return run, latencies


def deepen_runs(
    retriever: HybridRetriever,
    queries: Mapping[str, str],
    runs: Mapping[Variant, Run],
    depth: int,
    encoded: EncodedQueries | None = None,
    ignore_identical_ids: bool = True,
) -> None:
    """Fill each run's queries holding fewer than ``depth`` documents up to ``depth`` (in place): the next
    documents of a document-level search of the variant's first stage without reranking, each scored strictly
    below the one before, so the ranking above them does not move.

    One batched search per first stage and depth asked: ``hybrid`` and ``hybrid+rerank`` (the same first stage,
    the same documents reordered) share theirs. ``encoded``: the queries' vectors (default: encoded by the search).
    The document whose id is the query id is left out as :func:`search_run` leaves it out (``ignore_identical_ids``).
    """
    wanted: dict[tuple[Variant, int], dict[str, None]] = {}  # (first stage, documents asked) -> query ids
    fills = []
    for variant, run in runs.items():
        short = [qid for qid, docs in run.items() if len(docs) < depth]
        if short:
            first_stage = Variant.HYBRID if variant is Variant.HYBRID_RERANK else variant
            k = depth + 1 + max(len(run[qid]) for qid in short)  # room for the documents there and the self-hit
            wanted.setdefault((first_stage, k), {}).update(dict.fromkeys(short))
            fills.append((run, short, (first_stage, k)))
    found: dict[tuple[Variant, int], dict[str, list]] = {}
    for (first_stage, k), qids in wanted.items():
        hits = retriever.search_batch(
            [queries[qid] for qid in qids],
            k=k,
            variant=first_stage,
            rerank=False,
            group_by="doc",
            encoded=encoded.batch(qids) if encoded else None,
        )
        found[first_stage, k] = dict(zip(qids, hits, strict=True))
    for run, short, key in fills:
        for qid in short:
            docs = run[qid]
            score = min(docs.values(), default=0.0)
            for hit in found[key][qid]:
                if len(docs) >= depth:
                    break
                self_hit = ignore_identical_ids and _same_id(hit.doc_id, qid)
                if not self_hit and hit.doc_id not in docs:
                    score = min(score - 1e-9, math.nextafter(score, -math.inf))
                    docs[hit.doc_id] = score


def variant_list(variants: Iterable[Variant | str]) -> list[Variant]:
    """``variants`` as a list of :class:`Variant` without repeats, or an :class:`InvalidArgumentError`: one string
    (which would be read letter by letter), an unknown name (the valid ones listed), or none at all."""
    not_one_string(variants, "variants", "variant names")
    chosen = list(dict.fromkeys(choice(Variant, v, "variant") for v in variants))
    if not chosen:
        raise InvalidArgumentError(f"variants is empty: name at least one of {', '.join(Variant)}")
    return chosen


def evaluate_variants(
    retriever: HybridRetriever,
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    variants: Iterable[Variant | str] = tuple(Variant),
    progress: bool = True,
    ignore_identical_ids: bool = True,
) -> dict[str, VariantResult]:
    """Every variant's metrics on ``queries`` (only those with qrels are searched). Each query is encoded once
    for all variants and their top-ups (:class:`EncodedQueries`). ``ignore_identical_ids``: BEIR's rule, a hit
    whose document id is the query id left out of the run and the metrics (False: scored like any other)."""
    judged = {qid: text for qid, text in queries.items() if qid in qrels}
    variants = variant_list(variants)
    encoded = EncodedQueries.of(retriever, judged, {c for v in variants for c in v.channels}, progress)
    ignore = ignore_identical_ids
    searched = {v: search_run(retriever, judged, v, RUN_DEPTH, encoded, progress, ignore) for v in variants}
    deepen_runs(retriever, judged, {v: run for v, (run, _) in searched.items()}, RUN_DEPTH, encoded, ignore)
    results = {}
    for variant, (run, latencies) in searched.items():
        scored = evaluate(qrels, run, ignore_identical_ids=ignore)
        lat = np.asarray(latencies) if latencies else np.zeros(1)
        results[variant.value] = VariantResult(
            variant=variant.value,
            metrics=dict(scored.mean),
            per_query=scored.per_query,
            run=run,
            latency_ms={"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))},
        )
    return results


CHANNELS_CHECK = "hybrid_not_below_channels"  # fusion against the better single channel
RERANK_CHECK = "reranking_does_not_hurt"  # the default against the fused first stage
IDENTITY_KEYS = ("index_fingerprint", "query_fingerprint", "hybrid_rag_version")  # what searched: see EvalReport
QUALITY_CHECKS: dict[str, tuple[tuple[str, ...], str]] = {
    CHANNELS_CHECK: (("dense", "sparse"), "hybrid"),
    RERANK_CHECK: (("hybrid",), "hybrid+rerank"),
}


def latency_metrics(result: VariantResult) -> dict[str, float]:
    """A variant's measured p50 and p95 search latency as history metrics (none when it measured none)."""
    names = {"p50": LATENCY_P50, "p95": LATENCY_P95}
    return {names[p]: float(ms) for p, ms in result.latency_ms.items() if p in names}


@dataclass
class EvalReport:
    """One evaluation of a collection's split: every variant's :class:`VariantResult` and what was evaluated.

    ``collection`` is the evaluation collection (corpus) name, ``qdrant_collection`` and ``version`` the index
    that answered, ``settings`` the models and retrieval settings that change results, ``seconds`` the
    wall time of the whole evaluation, ``judged_coverage`` the fraction of the split's documents judged relevant
    (grade >= 1) found in the index (below 1: the scores are capped, see :meth:`coverage_warning`; a missing
    non-relevant one caps nothing), ``judged_not_in_corpus`` the fraction missing because the collection's corpus
    file itself lacks them (None: not checked), ``warnings`` the settings that had no effect at the evaluation's
    depth (see :func:`settings_in_effect`) and what the qrels cap or hide (:func:`evals.metrics.judgement_warnings`),
    ``qrels_fingerprint`` what was scored (:func:`judgements_fingerprint`; None: not known), and what searched it:
    ``index_fingerprint`` (:func:`index_fingerprint`: a version number repeats after a drop, a fingerprint does
    not), ``query_fingerprint`` (the query encoder's content: one retrained into the same folder differs) and
    ``release`` (the hybrid-rag version); the history rows record them as :data:`IDENTITY_KEYS`.
    """

    collection: str
    split: str
    qdrant_collection: str
    version: int | None
    n_queries: int
    variants: dict[str, VariantResult]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))
    judged_coverage: float = 1.0
    judged_not_in_corpus: float | None = None
    warnings: list[str] = field(default_factory=list)
    qrels_fingerprint: str | None = None  # of the scored queries and their judgements (judgements_fingerprint)
    index_fingerprint: str | None = None  # of the searched points (index_fingerprint; None: not known)
    query_fingerprint: str | None = None  # of the query encoder's content (model_fingerprint; None: not known)
    release: str | None = None  # the hybrid-rag package version that scored it (None: not known)

    __repr__ = compact_repr  # a few of the settings and a count, not the 27 of them

    def _repr_html_(self) -> str:
        """What a notebook shows: the metrics table ``eval`` prints (:func:`evals.report.metrics_html`) and its
        warnings."""
        from evals.report import metrics_html

        caption = f"{self.label()} ({self.split}): {counted(self.n_queries, 'query')}, version {self.version}"
        warnings = [w for w in [*self.warnings, self.coverage_warning()] if w]
        return metrics_html(self.metrics(), caption) + "".join(f"<p>warning: {html.escape(w)}</p>" for w in warnings)

    def coverage_warning(self) -> str | None:
        """A warning when only part of the judged documents is in the searched collection, else None."""
        if self.judged_coverage >= 1.0:
            return None
        head = (
            f"only {self.judged_coverage:.1%} of the documents judged relevant (grade >= 1) in "
            f"{self.collection}/{self.split} are in collection {self.qdrant_collection!r}"
        )
        if self.judged_not_in_corpus is None:
            return f"{head}: the scores are capped by the missing ones"
        from_collection = max(1.0 - self.judged_coverage - self.judged_not_in_corpus, 0.0)
        return (
            f"{head}: {self.judged_not_in_corpus:.1%} are not in the corpus file itself (the qrels judge documents "
            f"it lacks), {from_collection:.1%} are in the corpus file but missing from the collection; the scores "
            "are capped by the missing ones"
        )

    def quality_checks(self, tolerance: float = 0.005) -> dict[str, LossCheck]:
        """Does fusion, and does reranking, pay off here? :data:`QUALITY_CHECKS`, each a :class:`LossCheck` on
        nDCG@10 (fails only for a loss beyond ``tolerance`` that is also significant). Needs the per-query values:
        a report read back with :meth:`from_summary` has none (an :class:`InvalidArgumentError` says so)."""
        if any(r.metrics and not r.per_query for r in self.variants.values()):
            raise InvalidArgumentError(
                "quality checks need per-query values, which a report summary (eval --json, from_summary) does not "
                "hold: run them on the report evaluate_collection returns"
            )
        per_query = {name: r.per_query for name, r in self.variants.items()}
        return {
            name: loss_check(per_query, baselines, candidate, "ndcg@10", tolerance)
            for name, (baselines, candidate) in QUALITY_CHECKS.items()
        }

    def label(self) -> str:
        """The collection name, with the Qdrant collection searched when that has another name."""
        return searched_label(self.collection, self.qdrant_collection)

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{variant: {metric: mean, "latency_ms": p50}}``, what the tables show."""
        return {name: {**r.metrics, LATENCY_KEY: r.latency_ms["p50"]} for name, r in self.variants.items()}

    def context(self) -> dict[str, Any]:
        """What the history stores with every row of this report."""
        coverage = {} if self.judged_coverage >= 1.0 else {"judged_coverage": round(self.judged_coverage, 4)}
        if coverage and self.judged_not_in_corpus is not None:
            coverage["judged_not_in_corpus"] = round(self.judged_not_in_corpus, 4)
        scored = {"n_queries": self.n_queries, "qrels_fingerprint": self.qrels_fingerprint}
        searched = {
            "index_fingerprint": self.index_fingerprint,
            "query_fingerprint": self.query_fingerprint,
            "hybrid_rag_version": self.release,
        }
        return {
            "qdrant_collection": self.qdrant_collection,
            "version": self.version,
            **scored,
            **searched,
            **coverage,
            **self.settings,
        }

    def record(self, history: EvalHistory, source: str, **context: Any) -> int:
        """Append every variant's metrics and its search latency (:data:`LATENCY_P50`, :data:`LATENCY_P95`: ms per
        query, its encoding included) to ``history`` (one timestamp), written by ``source``; returns rows. A variant
        this report already recorded there (a notebook cell run again) is not appended twice."""
        ctx = {**self.context(), **context}
        return sum(
            history.append(
                self.collection, self.split, name, r.metrics | latency_metrics(r), ctx, self.timestamp, source=source
            )
            for name, r in self.variants.items()
            if not history.holds(self.collection, self.split, name, self.timestamp, source)
        )

    def frame(self) -> pd.DataFrame:
        """History-style rows (metrics and :data:`LATENCY_P50`), for :func:`evals.report.markdown_table`."""
        import pandas as pd

        rows = [
            {"timestamp": pd.Timestamp(self.timestamp), "collection": self.label(), "split": self.split}
            | {"variant": name, "metric": metric, "value": float(value)}
            for name, r in self.variants.items()
            for metric, value in {**r.metrics, LATENCY_P50: r.latency_ms["p50"]}.items()
        ]
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        """JSON-ready: everything but the runs and per-query values (see :meth:`from_summary`)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["timestamp"] = self.timestamp.isoformat()
        data["variants"] = {
            name: {"variant": name, "metrics": r.metrics, "latency_ms": r.latency_ms}
            for name, r in self.variants.items()
        }
        return data

    @classmethod
    def from_summary(cls, data: Mapping[str, Any]) -> EvalReport:
        """The report :meth:`summary` wrote, without runs and per-query values: its metrics, tables and history
        rows, not :meth:`quality_checks`."""
        values = dict(data)
        values["timestamp"] = datetime.fromisoformat(values["timestamp"])
        values["variants"] = {name: VariantResult(**v) for name, v in values["variants"].items()}
        return cls(**values)


def evaluate_collection(
    retriever: HybridRetriever,
    collection: EvalCollection,
    split: str,
    variants: Iterable[Variant | str] = tuple(Variant),
    *,
    version: int | None = None,
    progress: bool = True,
    ignore_identical_ids: bool = True,
) -> EvalReport:
    """Score ``variants`` of ``retriever`` on ``collection``'s ``split`` (``version``: the index version the
    retriever reads; default the store's current one; ``ignore_identical_ids``: see :func:`evaluate_variants`)."""
    started = time.perf_counter()
    variants = variant_list(variants)  # before any work: a bad name fails at once
    qrels = collection.qrels(split)
    coverage = judged_coverage(retriever.store, qrels)
    if coverage == 0.0:
        raise JudgedDocumentsMissingError(
            f"none of the {counted(len(relevant_documents(qrels)), 'document')} judged relevant in "
            f"{collection.name}/{split} is in collection {retriever.store.collection!r}: it holds another corpus, "
            f"nothing scored or recorded (search the collection built from {collection.name})"
        )
    not_in_corpus = judged_not_in_corpus(retriever.store, collection, qrels) if coverage < 1.0 else None
    queries = collection.split_queries(split)
    results = evaluate_variants(retriever, queries, qrels, variants, progress, ignore_identical_ids)
    settings = {
        "dense_model": retriever.dense.model_name,
        "sparse_model": retriever.sparse.name,
        "query_model": retriever.query_encoder.model_name,  # the trained or corpus-adapted one, else the dense model
        "run_documents": RUN_DEPTH,  # documents per query's run (rows without it: the documents of 100 chunks)
    }
    schema = retriever.store.schema()  # how the evaluated version was chunked and encoded (None: not recorded)
    settings |= {name: getattr(schema, name, None) for name in ENCODING_FIELDS}
    settings |= {name: _plain(getattr(retriever.settings, name)) for name in REPORTED_SETTINGS}
    if not ignore_identical_ids:  # recorded only when off: the figures score hits BEIR's rule drops
        settings["ignore_identical_ids"] = False
    settings, warnings = settings_in_effect(settings, RUN_DEPTH)
    warnings += judgement_warnings(qrels, ignore_identical_ids)
    return EvalReport(
        collection=collection.name,
        split=split,
        qdrant_collection=retriever.store.collection,
        version=retriever.store.current_version() if version is None else version,
        n_queries=len(qrels),
        variants=results,
        settings=settings,
        seconds=time.perf_counter() - started,
        judged_coverage=coverage,
        judged_not_in_corpus=not_in_corpus,
        warnings=warnings,
        qrels_fingerprint=judgements_fingerprint(collection.split_queries(split), qrels),
        index_fingerprint=index_fingerprint(retriever.store),
        query_fingerprint=retriever.query_encoder.fingerprint,
        release=release(),
    )


def settings_in_effect(settings: Mapping[str, Any], depth: int) -> tuple[dict[str, Any], list[str]]:
    """``settings`` with the values a search for ``depth`` hits uses (recorded as such, so a run is not taken for
    the experiment it is not), and one warning per setting that has no effect at that depth: each channel
    returns at least ``depth`` hits (``PREFETCH_K``) and the reranker reorders all ``depth`` (``RERANK_DEPTH``)."""
    why = {
        "prefetch_k": "each channel returns at least the hits asked for",
        "rerank_depth": "the reranker reorders all the hits asked for",
    }
    out, warnings = dict(settings), []
    for name, reason in why.items():
        value = out.get(name)
        if isinstance(value, int) and value < depth:
            out[name] = depth
            warnings.append(
                f"{name.upper()}={value} has no effect on an evaluation at depth {depth} ({reason}): "
                f"recorded as {depth}"
            )
    return out, warnings


def searched_label(collection: str, searched: str | None) -> str:
    """``collection``, or ``"collection (searched: NAME)"`` when the Qdrant collection searched is another."""
    return collection if not searched or searched == collection else f"{collection} (searched: {searched})"


def judgements_fingerprint(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> str:
    """A short hash of what an evaluation scores: the text of the ``queries`` that have qrels, and the qrels.
    Figures with different fingerprints were scored on other queries or judgements: not comparable."""
    judged = {str(q): text for q, text in queries.items() if q in qrels}
    content = {"queries": judged, "qrels": {str(q): {str(d): int(g) for d, g in j.items()} for q, j in qrels.items()}}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def release() -> str | None:
    """The installed hybrid-rag package's version; None when the code runs from a source tree not installed."""
    try:
        return package_version("hybrid-rag")
    except PackageNotFoundError:
        return None


def index_fingerprint(store: QdrantStore) -> str | None:
    """What ``store`` holds, as ``"POINTS:HASH"``: its point count and a short hash of every point's id and content
    hash (stored payload: no vector is read). Another build of other documents under the same name and version
    number gets another one; None when the collection holds points hybrid-rag did not write (no content hash)."""
    try:
        stored = store.stored_hashes()
    except ForeignPointsError:
        return None
    digest = hashlib.sha256()
    for pid in sorted(stored):
        digest.update(f"{pid} {stored[pid][1]}\n".encode())
    return f"{len(stored)}:{digest.hexdigest()[:16]}"


def judged_coverage(store: QdrantStore, qrels: Mapping[str, Mapping[str, int]], batch: int = 1000) -> float:
    """The fraction of the documents judged relevant in ``qrels`` that ``store`` holds (1.0 when none is).

    Counts each document's first chunk (every stored document has one) by point id, in batches; an id is found
    stored in NFC or NFD (as the index treats them: one id).
    """
    ids = sorted(relevant_documents(qrels))
    if not ids:
        return 1.0
    found = 0
    for i in range(0, len(ids), batch):
        owner = {point_id(form, 0): d for d in ids[i : i + batch] for form in {d, unicodedata.normalize("NFD", d)}}
        found += len({owner[pid] for pid in store.points(list(owner))})
    return found / len(ids)


def judged_not_in_corpus(
    store: QdrantStore, collection: EvalCollection, qrels: Mapping[str, Mapping[str, int]]
) -> float | None:
    """The fraction of the documents judged relevant in ``qrels`` that are in neither the collection's corpus file
    nor ``store`` (the qrels judge documents the corpus lacks); None when the collection has no corpus file (or one
    holding no document)."""
    corpus = collection.doc_ids()
    if not corpus:
        return None
    judged = relevant_documents(qrels)
    absent = judged - corpus
    if not absent:
        return 0.0
    stored = judged_coverage(store, {"": dict.fromkeys(absent, 1)}) * len(absent)
    return (len(absent) - stored) / len(judged)


def _same_id(doc_id: str, query_id: str) -> bool:
    """Whether a hit's document id is its query's id (compared in NFC, as the metrics compare them)."""
    return nfc(doc_id) == nfc(query_id)


def _plain(value: Any) -> Any:
    """A settings value as JSON data (enums as their value)."""
    return getattr(value, "value", value)
