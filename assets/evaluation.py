"""The evaluation asset: every retrieval variant scored on the corpus' eval split, recorded as numeric metadata
(plotted over time by the Dagster UI) and appended to the SQLite evaluation history."""

import dagster as dg
import pandas as pd
from pydantic import Field

from assets.index import qdrant_index
from assets.ingest import GROUP
from assets.partitions import corpus_partitions
from orchestration.corpora import CorpusUnavailableError
from orchestration.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from retrieval.search import Variant

NDCG_CHECK = "ndcg_not_dropped"
WATCHED_VARIANT = "hybrid"
WATCHED_METRIC = "ndcg@10"
LATENCY = "latency_p50_ms"


def metric_key(variant: str, metric: str) -> str:
    """Metadata key of one figure, e.g. ``hybrid/ndcg@10``."""
    return f"{variant}/{metric}"


class EvaluationConfig(dg.Config):
    variants: list[str] = Field(default=[v.value for v in Variant], description="Variants to evaluate")
    split: str | None = Field(default=None, description="qrels split (default: the corpus' split)")
    ndcg_drop_tolerance: float = Field(
        default=0.02, description=f"Largest tolerated drop of {WATCHED_VARIANT} {WATCHED_METRIC} vs the last run"
    )


@dg.asset(
    partitions_def=corpus_partitions,
    group_name=GROUP,
    deps=[qdrant_index],
    kinds={"python"},
    check_specs=[
        dg.AssetCheckSpec(
            NDCG_CHECK,
            asset="retrieval_evaluation",
            description=f"{WATCHED_VARIANT} {WATCHED_METRIC} did not drop by more than the configured tolerance "
            "against the previous materialization of the same partition.",
        )
    ],
)
def retrieval_evaluation(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    corpora: CorporaResource,
    retrieval: RetrievalResource,
    eval_history: EvalHistoryResource,
) -> dg.MaterializeResult:
    """nDCG@10, Recall@100, MRR@10, MAP@100 and p50 latency per variant on the corpus' eval split."""
    from evals.metrics import HEADLINE_METRICS
    from evals.report import markdown_table
    from evals.runner import evaluate_variants

    corpus = corpora.get(context.partition_key)
    if not corpus.has_qrels:
        note = f"corpus {corpus.name!r} has no qrels configured: nothing to evaluate"
        context.log.info(note)
        return dg.MaterializeResult(
            metadata={"evaluated": False, "note": note},
            check_results=[_ndcg_result(True, note=note)],
        )
    split = config.split or corpus.split
    try:
        variants = [Variant(v) for v in config.variants]
        collection = corpus.eval_collection(split)
        queries, qrels = collection.split_queries(split), collection.qrels(split)
    except (ValueError, CorpusUnavailableError) as exc:
        raise dg.Failure(description=f"cannot evaluate corpus {corpus.name!r}: {exc}") from exc
    previous = previous_value(context, eval_history, corpus.name, split)
    # rerank=False: "hybrid" is the fused first stage; the "hybrid+rerank" variant turns reranking on itself.
    with retrieval.retriever(corpus.collection, rerank=False) as retriever:
        results = evaluate_variants(retriever, queries, qrels, variants, progress=False)
        models = {"dense_model": retriever.dense.model_name, "sparse_model": retriever.sparse.name}

    now = pd.Timestamp.now(tz="UTC")
    history = eval_history.history()
    context_info = {**models, "qdrant_collection": corpus.collection, "dagster_run_id": context.run_id}
    rows = []
    metadata: dict[str, object] = {
        "evaluated": True,
        "corpus": corpus.name,
        "split": split,
        "queries": dg.MetadataValue.int(len(qrels)),
        "collection": corpus.collection,
        **models,
        "history": dg.MetadataValue.path(str(history.path.resolve())),
    }
    for name, result in results.items():
        history.append(corpus.name, split, name, result.metrics, context=context_info, timestamp=now.to_pydatetime())
        figures = {m: result.metrics[m] for m in HEADLINE_METRICS} | {LATENCY: result.latency_ms["p50"]}
        for metric, value in figures.items():
            metadata[metric_key(name, metric)] = dg.MetadataValue.float(round(float(value), 6))
            rows.append(
                {
                    "timestamp": now,
                    "collection": corpus.name,
                    "split": split,
                    "variant": name,
                    "metric": metric,
                    "value": float(value),
                }
            )
    table = markdown_table(pd.DataFrame(rows), metrics=[*HEADLINE_METRICS, LATENCY])
    context.log.info(f"{corpus.name} ({split}, {len(qrels)} queries):\n{table}")
    metadata["metrics"] = dg.MetadataValue.md(table)
    return dg.MaterializeResult(metadata=metadata, check_results=[_ndcg_check(results, previous, config)])


def previous_value(
    context: dg.AssetExecutionContext, eval_history: EvalHistoryResource, corpus: str, split: str
) -> tuple[float, str] | None:
    """The last hybrid nDCG@10 of this partition and split, and where it came from: the instance's event log, else
    the rows this asset wrote to the evaluation history (e.g. under another DAGSTER_HOME)."""
    key = metric_key(WATCHED_VARIANT, WATCHED_METRIC)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, asset_partitions=[context.partition_key]), limit=20
    ).records
    for record in records:
        md = record.asset_materialization.metadata if record.asset_materialization else {}
        if key in md and getattr(md.get("split"), "value", split) == split:
            return float(md[key].value), f"materialization in run {record.run_id}"
    df = eval_history.history().records(collection=corpus, variant=WATCHED_VARIANT)
    from_dagster = df["context"].map(lambda c: "dagster_run_id" in c).astype(bool)
    df = df[from_dagster & (df["split"] == split) & (df["metric"] == WATCHED_METRIC)].dropna(subset=["value"])
    if not df.empty:
        last = df.iloc[-1]
        return float(last["value"]), f"evaluation history ({last['timestamp']:%Y-%m-%d %H:%M} UTC)"
    return None


def _ndcg_check(results: dict, previous: tuple[float, str] | None, config: EvaluationConfig) -> dg.AssetCheckResult:
    if WATCHED_VARIANT not in results:
        return _ndcg_result(True, note=f"{WATCHED_VARIANT} was not evaluated")
    current = float(results[WATCHED_VARIANT].metrics[WATCHED_METRIC])
    if previous is None:
        return _ndcg_result(True, current=current, note="first evaluation of this partition: nothing to compare")
    value, source = previous
    drop = value - current
    tolerance = config.ndcg_drop_tolerance
    return _ndcg_result(
        drop <= tolerance + 1e-12,
        current=current,
        previous=value,
        drop=round(drop, 6),
        tolerance=tolerance,
        previous_from=source,
    )


def _ndcg_result(passed: bool, **metadata: object) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=NDCG_CHECK, passed=passed, severity=dg.AssetCheckSeverity.WARN, metadata=metadata
    )
