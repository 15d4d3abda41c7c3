"""The evaluation asset: every retrieval variant scored on the corpus' eval split, recorded as numeric metadata
(plotted over time by the Dagster UI) and appended to the SQLite evaluation history.

It scores the version ``qdrant_index`` staged in this run; in a run without ``qdrant_index`` (one asset
materialized at a time, a re-execution from failure), the latest staged version that is not published yet,
whichever run staged it; else the published version. In a run tagged ``hybrid_rag/evaluate: published`` (every run
of the ``evaluate`` job: Dagster merges a job's tags into each of its runs, whatever run config it was launched
with), always the published one: the index readers use. Its blocking check ``ndcg_not_dropped``
(the gate) compares it with the published version, scored in the same run with the same queries and with the
models that version was built with (its schema records them: after a model change, ``rebuild_on_model_change``,
they are not the run's). When those models cannot be loaded (gone from disk or the hub), the gate compares with
the published version's latest recorded evaluation in the history (same collection, version and models, scored
on the same queries and qrels: the same ``qrels_fingerprint``, of the same points: the same ``index_fingerprint``,
with the query encoder it would be scored with: the same ``query_fingerprint``), and without one it passes,
described as not comparable. A recorded figure is never preferred to scoring: a version
number does not identify a version across rebuilds, resets of the index folder or Dagster instances. The verdict
is recorded in the materialization (``gate``, with the version and the run that staged it): ``published_index``
publishes nothing else. When the gate fails, readers stay on the published version. Two more checks warn (they
never block publishing) when, on this corpus, fusion or reranking costs quality:
``hybrid_not_below_channels`` (hybrid against the better of its dense and sparse channels) and
``reranking_does_not_hurt`` (the default, hybrid + rerank, against hybrid). Each fails only when the loss is
larger than ``quality_tolerance`` and significant (its 95% bootstrap interval lies below 0 and the randomization
p-value is below 0.05); the figures, the interval, the wins/losses and the randomization p-value are its
metadata. One that compares a variant the run config's ``variants`` leave out passes, described as not run.
When nothing the figures depend on changed since the partition's last evaluation (:func:`evaluation_key`: the
version, its location and its points' fingerprint, the queries' and qrels' content, the variants, the settings,
the models' content and ``sample_queries``) and this run did not write that version (it may have reused the one
an earlier attempt of the same write staged: ``reused_version``), the asset does not evaluate again nor append to
the history: it reports that evaluation's figures (metadata ``unchanged``, and ``reused_evaluation``: when and by
which run they were scored), and its checks
judge them again from the per-query nDCG@10 saved beside the history (``reports/``, with the nDCG@10 plot that the
metadata links to).
A corpus without qrels has nothing to score and no quality gate: the asset records which version it saw, the
gate reports ``passed`` with ``gate: not run`` in its metadata (Dagster warns about a blocking check that
reports nothing) and the two warning checks are not run.
"""

import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import dagster as dg
from pydantic import Field, ValidationError, field_validator

from assets.corpora import CorpusConfig, CorpusUnavailableError
from assets.failures import fails_clearly
from assets.index import STAGED_BY, StagedVersion, qdrant_index, replaced, staged_version
from assets.ingest import GROUP
from assets.meta import PREVIEWS_OFF, md_table
from assets.partitions import corpus_check, corpus_partitions
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from evals.compare import LossCheck
from evals.history import EvalHistory
from evals.metrics import HEADLINE_METRICS
from evals.runner import (
    CHANNELS_CHECK,
    LATENCY_P50,
    RERANK_CHECK,
    EvalReport,
    JudgedDocumentsMissingError,
    evaluate_collection,
    index_fingerprint,
    judgements_fingerprint,
    latency_metrics,
)
from retrieval.encoders.dense import resolve_model_path
from retrieval.encoders.fingerprint import model_fingerprint
from retrieval.errors import ModelLoadError
from retrieval.search import Variant
from retrieval.settings import RetrievalSettings, canonical_model, settings_problems
from retrieval.store import CollectionSchema, QdrantStore, SchemaMismatchError, StoreError
from retrieval.wording import counted

NDCG_CHECK = "ndcg_not_dropped"
WATCHED_VARIANT = "hybrid"
WATCHED_METRIC = "ndcg@10"
REPORT = "report"  # the evaluation's EvalReport.summary(), read back by evaluation_report()
LOCATION = "location"  # metadata: where the evaluated version lives
GATE, GATE_DETAIL = "gate", "gate_detail"  # metadata: the gate's verdict on the evaluated version, and why
GATE_TOLERANCE = "gate_tolerance"  # metadata and history context: the ndcg_drop_tolerance the verdict was given with
GATE_PASSED, GATE_REFUSED, GATE_NOT_RUN = "passed", "refused", "not run"
EVALUATE_TAG, PUBLISHED = "hybrid_rag/evaluate", "published"  # run tag: score the published version (evaluate job)
EVALUATION_KEY = "evaluation_key"  # metadata: what the figures depend on (see evaluation_key)
UNCHANGED = "unchanged"  # metadata: set when the figures are the previous evaluation's (nothing it depends on changed)
REUSED_EVALUATION = "reused_evaluation"  # metadata: the evaluation whose figures these are (when, which run), or "no"
CHART = "ndcg@10_over_time"  # metadata: the path of the PNG plot (see ndcg_chart)


def metric_key(variant: str, metric: str) -> str:
    """Metadata key of one figure, e.g. ``hybrid/ndcg@10``."""
    return f"{variant}/{metric}"


def report_metadata(report: EvalReport) -> dict[str, dg.MetadataValue]:
    """The headline metrics and the p50 and p95 search latency (ms) of every variant as float metadata, which the
    UI plots over time (``hybrid/ndcg@10``, ``hybrid/latency_p95_ms``)."""
    return {
        metric_key(name, metric): dg.MetadataValue.float(round(float(value), 6))
        for name, result in report.variants.items()
        for metric, value in ({m: result.metrics[m] for m in HEADLINE_METRICS} | latency_metrics(result)).items()
    }


def evaluation_report(metadata: Mapping[str, Any]) -> EvalReport | None:
    """The :class:`EvalReport` of a ``retrieval_evaluation`` materialization (None: nothing was scored)."""
    value = metadata.get(REPORT)
    return EvalReport.from_summary(value.value) if value is not None else None


VARIANTS = tuple(v.value for v in Variant)  # what `variants` may hold


class EvaluationConfig(dg.Config):
    """The run config of ``retrieval_evaluation``; a value out of range fails the step before anything is scored,
    with one line naming the key (a ``dg.Failure``), and ``version`` is refused by Dagster when the run is launched."""

    variants: list[str] = Field(
        default=list(VARIANTS),
        min_length=1,
        description=f"Variants to evaluate, one or more of: {', '.join(VARIANTS)}",
    )
    split: str | None = Field(default=None, description="qrels split (default: the corpus' split)")
    ndcg_drop_tolerance: float = Field(
        default=0.02,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description=f"Largest tolerated drop (0 to 1) of {WATCHED_VARIANT} {WATCHED_METRIC} of the staged version "
        "against the published one; a larger drop keeps readers on the published version",
    )
    sample_queries: int = Field(
        default=3,
        ge=0,
        description="Queries (0 or more) shown with their top hits per variant (none: previews: false in corpora file)",
    )
    version: Literal["staged", "published"] = Field(
        default="staged",
        description="Kept for runs made by releases before the evaluate job's tag: 'published' scores the published "
        f"version, as the tag {EVALUATE_TAG}={PUBLISHED} does; 'staged': the usual choice",
    )
    quality_tolerance: float = Field(
        default=0.005,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description=f"{CHANNELS_CHECK} and {RERANK_CHECK} warn when {WATCHED_METRIC} is lower by more than this "
        "(0 to 1) and the loss is significant",
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:  # Dagster makes the config when the step starts: fail it in one line
            problems = settings_problems(exc).removeprefix("invalid settings: ")
            raise dg.Failure(
                description=f"invalid retrieval_evaluation config: {problems}", metadata={"error": "ValidationError"}
            ) from exc

    @field_validator("variants")
    @classmethod
    def _known_variants(cls, variants: list[str]) -> list[str]:
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown {', '.join(map(repr, unknown))}: choose from {', '.join(VARIANTS)}")
        if len(set(variants)) < len(variants):
            raise ValueError(f"{variants} names a variant twice")
        return variants


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "retrieval_evaluation",
            deps=[qdrant_index],
            group_name=GROUP,
            kinds={"python"},
            partitions_def=corpus_partitions,
            description="nDCG@10, Recall@100, MRR@10, MAP@100 and p50/p95 latency per variant on the corpus' eval "
            "split, of the version qdrant_index staged in this run (else the latest staged, unpublished version; "
            "else the published one).",
        )
    ],
    check_specs=[
        corpus_check(
            NDCG_CHECK,
            "retrieval_evaluation",
            blocking=True,
            description=f"Publishing gate: {WATCHED_VARIANT} {WATCHED_METRIC} of the evaluated version is not below "
            "the published version's by more than the configured tolerance. Passes (not run) without qrels.",
        ),
        corpus_check(
            CHANNELS_CHECK,
            "retrieval_evaluation",
            description=f"Warns when hybrid {WATCHED_METRIC} is significantly below the better of its dense and "
            "sparse channels on this corpus (fusion costs quality here). Not run for corpora without qrels.",
        ),
        corpus_check(
            RERANK_CHECK,
            "retrieval_evaluation",
            description=f"Warns when the default (hybrid+rerank) {WATCHED_METRIC} is significantly below hybrid on "
            "this corpus (reranking costs quality here). Not run for corpora without qrels.",
        ),
    ],
    partitions_def=corpus_partitions,
    can_subset=True,
)
@fails_clearly
def retrieval_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    corpora: CorporaResource,
    retrieval: RetrievalResource,
    eval_history: EvalHistoryResource,
) -> Iterator[dg.MaterializeResult]:
    from evals.report import markdown_table

    corpus = corpora.get(context.partition_key)
    with retrieval.store(corpus.collection) as store:
        published = store.current_version()
        staged = staged_version(context)
        if context.run.tags.get(EVALUATE_TAG) == PUBLISHED or config.version == PUBLISHED:
            staged = None  # the index readers use, whatever is staged
        version, role = _version_to_evaluate(context, store, staged, published)
        location = _location(store, version)
        points = _points(store, version) if corpus.has_qrels else None  # what the evaluation key says it holds
    # metadata STAGED_BY: the run whose qdrant_index staged the evaluated version ("none": not staged by a known run)
    staged_by = (staged.run_id if staged is not None and staged.version == version else None) or "none"
    base = {
        "corpus": corpus.name,
        "collection": corpus.collection,
        "version": dg.MetadataValue.int(version),
        "evaluated_version": f"{role} version {version}",
        "published_version": published if published is not None else "none",
        STAGED_BY: staged_by,
        LOCATION: location,
    }
    if not corpus.has_qrels:
        reason = (
            f"corpus {corpus.name!r} has no qrels: nothing to score; publishing is gated on the index point count only"
        )
        context.log.info(f"corpus {corpus.name!r} has no qrels: nothing to score, the gate is not run")
        # The blocking gate still reports (passed, not run), so that Dagster does not warn on every run that it
        # emitted no result; publish_index reads the verdict from the materialization (gate: not run).
        gate = dg.AssetCheckResult(
            asset_key="retrieval_evaluation",
            check_name=NDCG_CHECK,
            passed=True,
            description=f"corpus {corpus.name!r} has no qrels, nothing to compare (no quality gate)",
            metadata={GATE: GATE_NOT_RUN, "qrels": reason, "evaluated_version": version},
        )
        yield dg.MaterializeResult(
            asset_key="retrieval_evaluation",
            metadata={**base, GATE: GATE_NOT_RUN, "qrels": reason},
            check_results=[gate] if _selected(context, NDCG_CHECK) else [],
        )
        return
    split = config.split or corpus.split
    variants = [Variant(v) for v in config.variants]  # known: EvaluationConfig checks them
    try:
        collection = corpus.eval_collection(split)
        queries, qrels = collection.split_queries(split), collection.qrels(split)
    except (ValueError, CorpusUnavailableError) as exc:
        raise dg.Failure(description=f"cannot evaluate corpus {corpus.name!r}: {exc}") from exc
    settings = retrieval.settings(corpus.collection)
    shown = config.sample_queries if corpus.previews else 0
    key = evaluation_key(settings, corpus, split, variants, queries, qrels, location, points, shown)
    # A version this run wrote is evaluated (a version number is reused by resets); one it reused as an earlier
    # attempt of the same write staged it holds the same points, which that attempt may have evaluated already.
    newly_staged = role == "staged" and staged is not None and staged.own and not staged.reused
    history = eval_history.history()
    move_legacy_reports(history, corpus.name, split)
    previous = None if newly_staged else _previous_evaluation(context, key, history, corpus.name, split)
    if previous is not None:
        report, previous_metadata = previous
        since = f"{report.timestamp:%Y-%m-%d %H:%M:%S} UTC"
        points = " (the same points: the reused staged version)" if staged is not None and staged.reused else ""
        context.log.info(
            f"{corpus.name}: unchanged since {since} (version {version}{points}): not evaluated again, reused "
            f"evaluation {previous_metadata[REUSED_EVALUATION]}"
        )
        metadata: dict[str, object] = {
            **previous_metadata,
            **base,
            UNCHANGED: f"unchanged since {since}, version {version}: the figures of that evaluation (not evaluated "
            "again, nothing appended to the history)",
        }
    else:
        # rerank=False: "hybrid" is the fused first stage; the "hybrid+rerank" variant turns reranking on itself.
        report = _evaluate(context, retrieval, corpus, collection, split, variants, version, staged)
        if report.coverage_warning():
            context.log.warning(report.coverage_warning())
        table = markdown_table(report.frame(), metrics=[*HEADLINE_METRICS, LATENCY_P50])
        context.log.info(
            f"{corpus.name} ({split}, {counted(report.n_queries, 'query')}), {role} version {version}:\n{table}"
        )
        metadata = {
            **base,
            REUSED_EVALUATION: "no",
            "split": split,
            "queries": dg.MetadataValue.int(report.n_queries),
            "dense_model": report.settings["dense_model"],
            "sparse_model": report.settings["sparse_model"],
            **report_metadata(report),
            "metrics": dg.MetadataValue.md(table),
            "sample_queries": dg.MetadataValue.md(sample_table(queries, qrels, report.variants, config.sample_queries)),
            REPORT: dg.MetadataValue.json(report.summary()),
        }
        if key is not None:
            metadata[EVALUATION_KEY] = key
            _save_per_query(history, corpus.name, split, key, report)
    if not corpus.previews:  # also over an unchanged evaluation's copy of an earlier materialization's
        metadata["sample_queries"] = PREVIEWS_OFF
    quality = report.quality_checks(config.quality_tolerance)
    gate = None
    if _selected(context, NDCG_CHECK):
        baseline = None
        if published is not None and published != version and WATCHED_VARIANT in report.variants:
            # Scored now with its own models; looked up only when they cannot be loaded: a version number (even
            # with its path) does not identify a version across rebuilds, resets of the index folder or instances.
            baseline = _score_published(context, retrieval, history, corpus, collection, split, published)
        gate = _gate(corpus, version, published, report.variants, baseline, config)
    metadata[GATE] = GATE_NOT_RUN if gate is None else GATE_PASSED if gate.passed else GATE_REFUSED
    if gate is not None:
        metadata[GATE_DETAIL] = gate.description or ""
        metadata[GATE_TOLERANCE] = config.ndcg_drop_tolerance
    else:
        metadata.pop(GATE_TOLERANCE, None)  # an unchanged evaluation's copy: no verdict given in this run
    # Each history row says whether readers were served the evaluated version, and the gate's verdict on it, so
    # that eval-report and the plot keep evaluations of staged or refused versions apart from the served figures.
    if previous is None:
        report.record(
            history,
            source="dagster",
            dagster_run_id=context.run_id,
            published=version == published,
            **({} if gate is None else {GATE: metadata[GATE], GATE_TOLERANCE: config.ndcg_drop_tolerance}),
        )
    metadata["history"] = dg.MetadataValue.path(str(history.path.resolve()))
    chart = ndcg_chart(history, corpus.name, split, redraw=previous is None)
    if chart:
        metadata[CHART] = dg.MetadataValue.path(str(chart))
    checks = [gate, *(_quality_check(name, check) for name, check in quality.items())]
    yield dg.MaterializeResult(
        asset_key="retrieval_evaluation",
        metadata=metadata,
        check_results=[c for c in checks if c is not None and _selected(context, c.check_name)],
    )


def _location(store: QdrantStore, version: int) -> str:
    """Where ``version`` of the store's collection lives (a directory, or a server's address and name)."""
    pinned = store.pinned(version)
    try:
        return f"{pinned.location} ({pinned.collection} version {version})"
    finally:
        pinned.close()


def _points(store: QdrantStore, version: int) -> str | None:
    """The :func:`~evals.runner.index_fingerprint` of ``version`` of the store's collection: its number repeats
    (after a drop, a reset of the index folder) and a server's in-place write keeps it, its points' fingerprint not."""
    pinned = store.pinned(version)
    try:
        return index_fingerprint(pinned)
    finally:
        pinned.close()


def _exists(store: QdrantStore, version: int) -> bool:
    pinned = store.pinned(version)
    try:
        return pinned.schema() is not None
    finally:
        pinned.close()


def _version_to_evaluate(
    context: dg.AssetExecutionContext, store: QdrantStore, staged: StagedVersion | None, published: int | None
) -> tuple[int, str]:
    """The version to score and its role: the staged one (this run's, else the latest unpublished one, whichever
    run staged it), else the published one. Fails when this run's version is gone or superseded."""
    collection = store.collection
    if staged is not None:
        unpublished = published is None or staged.version > published
        if unpublished and _exists(store, staged.version):
            if not staged.own:
                context.log.info(f"evaluating version {staged.version}, staged by run {staged.run_id}")
            return staged.version, "staged"
        if staged.version == published:
            return published, "published"
        if staged.own:
            raise dg.Failure(replaced(context, collection, staged, published))
        if published is not None:  # else the failure below says there is no version yet
            context.log.warning(
                f"the latest staged version {staged.version} of {collection!r} is gone or older than the published "
                f"version {published}: evaluating the published version"
            )
    if published is None:
        raise dg.Failure(f"collection {collection!r} has no version yet: materialize qdrant_index first")
    return published, "published"


def _evaluate(
    context: dg.AssetExecutionContext,
    retrieval: RetrievalResource,
    corpus: CorpusConfig,
    collection: Any,
    split: str,
    variants: list[Variant],
    version: int,
    staged: StagedVersion | None,
) -> EvalReport:
    try:
        with retrieval.retriever(corpus.collection, version, rerank=False) as retriever:
            return evaluate_collection(retriever, collection, split, variants, version=version, progress=False)
    except JudgedDocumentsMissingError as exc:  # the collection holds another corpus: every score would be 0
        raise dg.Failure(description=str(exc)) from exc
    except StoreError as exc:  # e.g. another run's staging deleted it meanwhile
        with retrieval.store(corpus.collection) as store:
            if staged is not None and staged.version == version and not _exists(store, version):
                raise dg.Failure(replaced(context, corpus.collection, staged, store.current_version())) from exc
        raise


def _score_published(
    context: dg.AssetExecutionContext,
    retrieval: RetrievalResource,
    history: EvalHistory,
    corpus: CorpusConfig,
    collection: Any,
    split: str,
    published: int,
) -> tuple[float | None, str]:
    """The watched figure of the published version and where it comes from: scored now with the same queries and
    the models that version was built with; when they cannot be loaded, its latest recorded evaluation; else None
    (not comparable)."""
    with retrieval.store(corpus.collection) as store:
        pinned = store.pinned(published)
        try:
            built, index = pinned.schema(), index_fingerprint(pinned)  # what it holds: read without its models
        finally:
            pinned.close()
    if built is None:
        return None, f"published version {published} has no schema"
    overrides = built_with(built, retrieval.settings(corpus.collection))
    models = ", ".join(f"{k} {v!r}" for k, v in overrides.items() if k in ("dense_model", "sparse_model"))
    if overrides:
        context.log.info(f"scoring published version {published} with the models it was built with: {models}")
    changed = content_changed(built, overrides.get("dense_model", retrieval.settings(corpus.collection).dense_model))
    try:
        if changed:
            raise ModelLoadError(changed)
        with retrieval.retriever(corpus.collection, published, rerank=False, **overrides) as retriever:
            report = evaluate_collection(
                retriever, collection, split, [Variant(WATCHED_VARIANT)], version=published, progress=False
            )
    except (ModelLoadError, SchemaMismatchError) as exc:
        reason = f"the models it was built with ({models or 'the run`s own'}) cannot be used: {exc}"
        context.log.warning(f"published version {published} cannot be scored in this run: {reason}")
    else:
        value = report.variants[WATCHED_VARIANT].metrics[WATCHED_METRIC]
        how = f" with the models it was built with ({models})" if overrides else ""  # else: the run's models
        return round(float(value), 6), f"scored in this run{how}"
    qrels = collection.qrels(split)
    fingerprint = judgements_fingerprint(collection.split_queries(split), qrels)
    searched = Searched(index, _query_fingerprint(built, retrieval.settings(corpus.collection, **overrides)))
    recorded = recorded_evaluation(history, corpus, split, published, built, fingerprint, searched)
    if recorded is not None:
        value, when = recorded
        return value, f"{reason}; compared with its evaluation recorded {when}"
    return None, (
        f"{reason}; the history records no evaluation of it on the {counted(len(qrels), 'query')} of these qrels "
        f"(fingerprint {fingerprint}): a figure scored on other queries or judgements does not compare"
    )


def built_with(built: CollectionSchema, settings: RetrievalSettings) -> dict[str, Any]:
    """Settings overrides giving the models ``built`` (a version's schema) records; empty when they are the
    settings' own. Another dense model drops the query encoder and query prompt of the settings' model (an
    adapted query encoder is used only with the dense model it was trained from)."""
    overrides: dict[str, Any] = {}
    if canonical_model(built.dense_model) != canonical_model(settings.dense_model):
        overrides |= {"dense_model": built.dense_model, "query_model": None, "dense_query_prompt": None}
    if canonical_model(built.sparse_model) != canonical_model(settings.sparse_model):
        overrides["sparse_model"] = built.sparse_model
    return overrides


def content_changed(built: CollectionSchema, dense_model: str) -> str | None:
    """Why ``dense_model`` no longer is the model ``built`` (a version's schema) was made with although it has the
    same name (a folder saved in place: another content fingerprint), or None. Scoring that version with it would
    pair new query vectors with old document vectors."""
    was = built.dense_fingerprint
    now = model_fingerprint(resolve_model_path(dense_model))
    if was is None or was.endswith("?") or now.endswith("?") or was == now:
        return None
    return f"dense model {dense_model!r} changed since that version was built (content {was}, now {now})"


@dataclass(frozen=True)
class Searched:
    """What a recorded evaluation of the published version must have searched to stand in for scoring it: its
    points (:func:`~evals.runner.index_fingerprint`: a version number repeats after a drop or a reset of the index
    folder) and the query encoder it would be scored with (its content fingerprint); None: not known."""

    index: str | None
    query: str | None


def _query_fingerprint(built: CollectionSchema, settings: RetrievalSettings) -> str | None:
    """The content fingerprint of the query encoder the published version would be scored with under ``settings``
    (the models it was built with): its dense model's (``built`` records it) unless a query encoder of its own is
    set or adapted for the collection; None when that cannot be told (an unreadable adapted encoder)."""
    try:
        query = settings.resolved_query_model()
    except ModelLoadError:
        return None
    return built.dense_fingerprint if query is None else model_fingerprint(resolve_model_path(query))


def recorded_evaluation(
    history: EvalHistory,
    corpus: CorpusConfig,
    split: str,
    version: int,
    built: CollectionSchema,
    fingerprint: str,
    searched: Searched,
) -> tuple[float, str] | None:
    """The watched figure of the latest recorded evaluation of ``version`` of the corpus' collection while it was
    published (or served), with the models ``built`` records, on the queries and qrels of ``fingerprint``
    (:func:`~evals.runner.judgements_fingerprint`; rows recorded without one do not count), of the points and with
    the query encoder ``searched`` gives (rows recorded without them, by an earlier release, count; a value not
    known here matches none but those), and when and by whom it was recorded."""

    def same(recorded: object, now: str | None) -> bool:
        return recorded is None or recorded == now

    def of_version(ctx: dict[str, Any]) -> bool:
        return (
            ctx.get("qdrant_collection") == corpus.collection
            and ctx.get("version") == version
            and ctx.get("published", True) is True
            and canonical_model(str(ctx.get("dense_model"))) == canonical_model(built.dense_model)
            and canonical_model(str(ctx.get("sparse_model"))) == canonical_model(built.sparse_model)
            and ctx.get("dense_fingerprint") in (None, built.dense_fingerprint)  # None: recorded by an earlier release
            and ctx.get("qrels_fingerprint") == fingerprint
            and same(ctx.get("index_fingerprint"), searched.index)
            and same(ctx.get("query_fingerprint"), searched.query)
        )

    rows = history.records(collection=corpus.name, variant=WATCHED_VARIANT)
    rows = rows[(rows["split"] == split) & (rows["metric"] == WATCHED_METRIC) & rows["value"].notna()]
    rows = rows[rows["context"].map(of_version)] if not rows.empty else rows
    if rows.empty:
        return None
    last = rows.iloc[-1]
    run = last["context"].get("dagster_run_id")
    by = f"dagster run {run}" if run else str(last["source"])
    return round(float(last["value"]), 6), f"{last['timestamp']:%Y-%m-%d %H:%M:%S} UTC by {by} in {history.path}"


def _selected(context: dg.AssetExecutionContext, check: str) -> bool:
    key = dg.AssetCheckKey(dg.AssetKey("retrieval_evaluation"), check)
    return key in context.selected_asset_check_keys


def _quality_check(name: str, check: LossCheck) -> dg.AssetCheckResult:
    """One of the report's :meth:`~evals.runner.EvalReport.quality_checks` as a WARN asset check result; one that
    cannot decide (the run config's ``variants`` leave out one it compares) passes, saying it was not run."""
    c = check.comparison
    metadata: dict[str, object] = {"candidate": check.candidate, "tolerance": check.tolerance}
    if c is None:
        missing = ", ".join(check.missing)
        passed, description = True, f"not run: {missing} not evaluated (the run config's variants), nothing compared"
        metadata["not_evaluated"] = missing
    else:
        passed, description = check.passed, check.description
        metadata |= {
            "baseline": c.baseline,
            "diff": dg.MetadataValue.float(round(c.mean_diff, 6)),
            "ci_low": dg.MetadataValue.float(round(c.ci_low, 6)),
            "ci_high": dg.MetadataValue.float(round(c.ci_high, 6)),
            "wins_losses_ties": f"{c.wins}/{c.losses}/{c.ties}",
            "p_randomization": dg.MetadataValue.float(round(c.p_randomization, 6)),
        }
    return dg.AssetCheckResult(
        asset_key="retrieval_evaluation",
        check_name=name,
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def sample_table(queries: dict[str, str], qrels: dict, results: dict, n: int) -> str:
    """The first ``n`` judged queries with each variant's top 3 documents (✓: judged relevant)."""
    rows = []
    for qid in sorted(qrels)[:n]:
        for name, result in results.items():
            ranked = sorted(result.run.get(qid, {}).items(), key=lambda kv: -kv[1])[:3]
            top = ", ".join(f"{doc}{' ✓' if qrels[qid].get(doc, 0) > 0 else ''}" for doc, _ in ranked)
            rows.append((f"{qid}: {queries.get(qid, '')}", name, top or "(no hits)"))
    return md_table(["query", "variant", "top 3 (✓ relevant)"], rows)


def reports_dir(history: EvalHistory) -> Path:
    """Where the evaluation asset writes its plot and per-query figures: ``reports/`` beside the history file."""
    return history.path.resolve().parent / "reports"


PLOT_SUFFIX, PER_QUERY_SUFFIX = "ndcg_at_10.png", "per_query.json"


def _report_file(history: EvalHistory, corpus: str, split: str, suffix: str) -> Path:
    """``reports/<corpus>/<split>-<suffix>``: a folder per corpus (a corpus name holds no '/'), the split
    percent-encoded, so that no two (corpus, split) pairs share a file."""
    return reports_dir(history) / corpus / f"{quote(split, safe='')}-{suffix}"


def report_files(history: EvalHistory, corpus: str, split: str) -> list[Path]:
    """The files the evaluation asset writes for ``corpus`` and ``split`` under :func:`reports_dir` (present or not)."""
    return [_report_file(history, corpus, split, suffix) for suffix in (PLOT_SUFFIX, PER_QUERY_SUFFIX)]


def _legacy_name(corpus: str, split: str) -> str:
    """The ``reports/`` file name prefix of earlier releases: ``team``/``eu-test`` and ``team-eu``/``test`` share it."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{corpus}-{split}")


def legacy_report_files(history: EvalHistory, corpus: str, split: str) -> list[Path]:
    """The files an earlier release wrote for ``corpus`` and ``split`` as ``reports/<corpus>-<split>-<suffix>``
    that exist and are this pair's: no other corpus and split of the history's Dagster rows has that name (else
    they may be the other's, and are left alone)."""
    name = _legacy_name(corpus, split)
    found = [reports_dir(history) / f"{name}-{suffix}" for suffix in (PLOT_SUFFIX, PER_QUERY_SUFFIX)]
    found = [p for p in found if p.is_file()]
    if found:
        rows = history.records(source="dagster")
        pairs = set(zip(rows["collection"], rows["split"], strict=True)) - {(corpus, split)}
        if any(_legacy_name(c, s) == name for c, s in pairs):
            return []
    return found


def move_legacy_reports(history: EvalHistory, corpus: str, split: str) -> None:
    """Move this pair's files of an earlier release's naming (:func:`legacy_report_files`) to :func:`report_files`'
    names, so that an unchanged evaluation is still found (a file already there under the new name wins)."""
    for old in legacy_report_files(history, corpus, split):
        new = _report_file(history, corpus, split, PLOT_SUFFIX if old.name.endswith(PLOT_SUFFIX) else PER_QUERY_SUFFIX)
        if new.is_file():
            old.unlink(missing_ok=True)
        else:
            new.parent.mkdir(parents=True, exist_ok=True)
            old.replace(new)


def ndcg_chart(history: EvalHistory, corpus: str, split: str, redraw: bool = True) -> Path | None:
    """nDCG@10 per variant over time (the ``eval-report`` plot) of this corpus' Dagster runs, as a PNG file under
    :func:`reports_dir` (overwritten; ``redraw=False``: only drawn when missing); None before any evaluation."""
    from evals.report import plot_history

    out = _report_file(history, corpus, split, PLOT_SUFFIX)
    if out.is_file() and not redraw:
        return out
    df = history.records(collection=corpus, source="dagster")
    df = df[df["split"] == split]
    if df.empty:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(plot_history(df, out, metric=WATCHED_METRIC))


def evaluation_key(
    settings: RetrievalSettings,
    corpus: CorpusConfig,
    split: str,
    variants: Sequence[Variant],
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    location: str,
    index: str | None,
    sample_queries: int,
) -> str | None:
    """A hash of what an evaluation's figures and metadata depend on: the version evaluated (its number and
    location, and ``index``, its points' :func:`~evals.runner.index_fingerprint`: the number repeats after a drop or
    a reset of the index folder, and a server's in-place write keeps it), the queries and judgements (their
    content), the variants, the retrieval settings, the models' content (dense, query encoder, sparse) and how many
    ``sample_queries`` the metadata shows; None when a model cannot be looked at (the evaluation then says why) or
    the points hold another tool's (no content hash to fingerprint): then it evaluates every time."""
    if index is None:
        return None
    try:
        query_model = settings.resolved_query_model()
    except ModelLoadError:
        return None

    def content(model: str | None) -> str | None:
        return None if model is None else model_fingerprint(resolve_model_path(model))

    def digest(value: object) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()

    parts = {
        "collection": corpus.collection,
        "corpus": corpus.name,
        "split": split,
        "location": location,
        "index": index,
        "variants": [v.value for v in variants],
        "queries": digest(queries),
        "qrels": digest(qrels),
        "settings": settings.model_dump(mode="json"),
        "models": [content(settings.dense_model), content(query_model), content(settings.sparse_model)],
        "sample_queries": sample_queries,
    }
    return digest(parts)


def _save_per_query(history: EvalHistory, corpus: str, split: str, key: str, report: EvalReport) -> None:
    """Keep the per-query nDCG@10 of ``report`` (what the quality checks compare) for an unchanged next run."""
    out = _report_file(history, corpus, split, PER_QUERY_SUFFIX)
    out.parent.mkdir(parents=True, exist_ok=True)
    values = {n: {q: v[WATCHED_METRIC] for q, v in r.per_query.items()} for n, r in report.variants.items()}
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps({EVALUATION_KEY: key, WATCHED_METRIC: values}))
    tmp.replace(out)


def _previous_evaluation(
    context: dg.AssetExecutionContext, key: str | None, history: EvalHistory, corpus: str, split: str
) -> tuple[EvalReport, dict[str, Any]] | None:
    """The report and metadata of this partition's latest evaluation when it had ``key`` (nothing it depends on
    changed since), the history holds its rows and its per-query figures are still on disk, else None (evaluate
    again). The metadata's ``reused_evaluation`` names that evaluation: when, and the run that made it."""
    if key is None:
        return None
    records = _recent_evaluations(context, limit=1)
    md = records[0].asset_materialization.metadata if records and records[0].asset_materialization else {}
    if getattr(md.get(EVALUATION_KEY), "value", None) != key or evaluation_report(md) is None:
        return None
    report = evaluation_report(md)
    assert report is not None
    if not _recorded(history, report):  # a new, emptied or other history: it must get this evaluation's rows
        return None
    try:
        saved = json.loads(_report_file(history, corpus, split, PER_QUERY_SUFFIX).read_text())
        per_query = saved[WATCHED_METRIC] if saved[EVALUATION_KEY] == key else {}
    except (OSError, ValueError, KeyError, TypeError):  # gone, damaged: evaluate again
        return None
    if not isinstance(per_query, dict) or set(per_query) != set(report.variants):
        return None
    for name, result in report.variants.items():
        result.per_query = {q: {WATCHED_METRIC: float(v)} for q, v in per_query[name].items()}
    origin = getattr(md.get(REUSED_EVALUATION), "value", "no")  # that materialization reused one itself
    if origin == "no":
        origin = f"{report.timestamp:%Y-%m-%d %H:%M:%S} UTC by run {records[0].run_id}"
    kept = {k: v for k, v in md.items() if k != GATE_DETAIL}  # this run's gate says its own
    return report, {**kept, REUSED_EVALUATION: origin}


def _recorded(history: EvalHistory, report: EvalReport) -> bool:
    """Whether ``history`` holds the rows ``report`` appended (same collection, split and timestamp)."""
    import pandas as pd

    rows = history.records(collection=report.collection, source="dagster")
    return bool(((rows["split"] == report.split) & (rows["timestamp"] == pd.Timestamp(report.timestamp))).any())


def _recent_evaluations(context: dg.AssetExecutionContext, limit: int = 50) -> Sequence[dg.EventLogRecord]:
    """The latest ``retrieval_evaluation`` materializations of this partition, newest first."""
    return context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("retrieval_evaluation"), asset_partitions=[context.partition_key]),
        limit=limit,
    ).records


def _gate(
    corpus: CorpusConfig,
    version: int,
    published: int | None,
    results: dict,
    baseline: tuple[float | None, str] | None,
    config: EvaluationConfig,
) -> dg.AssetCheckResult:
    def result(passed: bool, description: str, **metadata: object) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            asset_key="retrieval_evaluation",
            check_name=NDCG_CHECK,
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=description,
            metadata={"evaluated_version": version, "published_version": published or "none", **metadata},
        )

    if WATCHED_VARIANT not in results:
        return result(False, f"{WATCHED_VARIANT} was not evaluated: the gate cannot decide (add it to variants)")
    current = round(float(results[WATCHED_VARIANT].metrics[WATCHED_METRIC]), 6)
    if published is None or published == version:
        return result(True, "nothing published to compare with" if published is None else "the published version")
    assert baseline is not None  # the published version was scored (or looked up) before the gate
    value, source = baseline
    if value is None:
        return result(
            True,
            f"not comparable: published version {published} {source}: {WATCHED_VARIANT} {WATCHED_METRIC} of version "
            f"{version} is {current:.4f}, publishing it without a quality comparison",
            current=current,
            published_from=f"not comparable: {source}",
            corpus=corpus.name,
        )
    drop = round(value - current, 6)
    tolerance = config.ndcg_drop_tolerance
    passed = drop <= tolerance + 1e-12
    verdict = "publish" if passed else "refused: readers stay on the published version"
    accept = min(1.0, math.ceil(drop * 1000) / 1000)  # the tolerance that lets this drop through
    next_step = (
        ""
        if passed
        else f"; next: if the source is wrong, fix it and run again; if the drop is intended, accept it: "
        f"hybrid-rag run --corpus {corpus.name} --ndcg-drop-tolerance {accept} (in Dagster: retrieval_evaluation "
        f"config ndcg_drop_tolerance: {accept})"
    )
    return result(
        passed,
        f"{WATCHED_VARIANT} {WATCHED_METRIC}: version {version} {current:.4f} vs published version {published} "
        f"{value:.4f} (drop {drop:+.4f}, tolerance {tolerance}): {verdict}; published version's figure: {source}"
        f"{next_step}",
        current=current,
        published=value,
        drop=drop,
        tolerance=tolerance,
        published_from=source,
        corpus=corpus.name,
    )


def gate_record(context: dg.AssetExecutionContext, staged: StagedVersion) -> Mapping[str, Any] | None:
    """The metadata of the latest ``retrieval_evaluation`` of ``staged`` (that version, staged by that run)."""
    for record in _recent_evaluations(context):
        md = record.asset_materialization.metadata if record.asset_materialization else {}
        values = {k: getattr(v, "value", v) for k, v in md.items()}
        if (values.get("version"), values.get(STAGED_BY)) == (staged.version, staged.run_id or "none"):
            return values
    return None
