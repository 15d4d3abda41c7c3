"""The published index: readers switch to the version ``qdrant_index`` staged, once its checks passed.

It publishes a version only when the blocking checks passed *for that version*: ``index_point_count`` in the run
that staged it and, for corpora with qrels, the evaluation gate ``ndcg_not_dropped`` (as recorded by
``retrieval_evaluation`` for that version, staged by that run). In a run with ``qdrant_index`` that is the version
this run staged; otherwise the latest staged one. Anything else fails with the reason; readers stay on the
published version.
"""

from datetime import UTC, datetime

import dagster as dg

from assets.corpora import CorpusConfig
from assets.evaluation import (
    GATE,
    GATE_DETAIL,
    GATE_PASSED,
    GATE_REFUSED,
    GATE_TOLERANCE,
    NDCG_CHECK,
    REPORT,
    gate_record,
    retrieval_evaluation,
)
from assets.failures import fails_clearly
from assets.index import (
    POINT_COUNT_CHECK,
    STAGED_BY,
    StagedVersion,
    point_count_result,
    qdrant_index,
    replaced,
    staged_version,
)
from assets.ingest import GROUP
from assets.partitions import corpus_partitions
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from evals.history import EvalHistory
from retrieval.store import StoreError
from retrieval.wording import counted


@dg.asset(
    partitions_def=corpus_partitions,
    group_name=GROUP,
    deps=[qdrant_index, retrieval_evaluation],
    kinds={"qdrant"},
)
@fails_clearly
def published_index(
    context: dg.AssetExecutionContext,
    corpora: CorporaResource,
    retrieval: RetrievalResource,
    eval_history: EvalHistoryResource,
) -> dg.MaterializeResult:
    """Switches readers (pointer file or alias) to the staged version once its blocking checks passed, then
    deletes versions no one holds, and marks the evaluations of that version in the history as published."""
    corpus = corpora.get(context.partition_key)
    staged = staged_version(context)
    if staged is None:
        raise dg.Failure(f"nothing staged for {corpus.collection!r}: materialize qdrant_index first")
    version = staged.version
    with retrieval.store(corpus.collection) as store:
        previous = store.current_version()
        if version != previous:
            target = store.pinned(version)
            try:
                with store.write_lock():  # no other writer stages over it between these checks and the switch
                    if target.schema() is None:
                        raise dg.Failure(replaced(context, corpus.collection, staged, previous))
                    refusal = _refusal(context, corpus, staged)
                    if refusal:
                        raise dg.Failure(refusal)
                    store.publish(target)
            except StoreError as exc:
                raise dg.Failure(f"cannot publish version {version} of {corpus.collection!r}: {exc}") from exc
            finally:
                target.close()  # this process lets go of it at once: readers in other processes open it next
            was = "its first version" if previous is None else f"was version {previous}"
            context.log.info(f"{corpus.collection}: readers now use version {version} ({was})")
        else:
            context.log.info(f"{corpus.collection}: version {version} is the published one already")
    if corpus.has_qrels:  # eval-report and the plot count its figures as served from now on
        _mark_published(context, eval_history.history(), corpus, staged)
    return dg.MaterializeResult(
        metadata={
            "collection": corpus.collection,
            "version": dg.MetadataValue.int(version),
            "previous_version": previous if previous is not None else "none",
            STAGED_BY: staged.run_id or "none",
        }
    )


def _mark_published(
    context: dg.AssetExecutionContext, history: EvalHistory, corpus: CorpusConfig, staged: StagedVersion
) -> None:
    """Mark the history rows of the published version ``staged`` as published: those the gate passed, every one
    recorded since the run that staged it started or of the same points (another evaluation's refusal of it is
    superseded: readers get it; a run that reused the version an earlier attempt staged names itself, not that
    attempt), and those of the evaluation whose latest verdict let it through, with its tolerance (a version the
    gate refused, accepted afterwards with a larger ``ndcg_drop_tolerance``: an unchanged evaluation, which appends
    no rows)."""
    record = gate_record(context, staged)
    report = record.get(REPORT) if record else None
    accepted = record if record and record.get(GATE) == GATE_PASSED and report else None
    run = context.instance.get_run_record_by_id(staged.run_id) if staged.run_id else None
    history.mark_published(
        corpus.name,
        corpus.collection,
        staged.version,
        accepted_at=datetime.fromisoformat(accepted[REPORT]["timestamp"]) if accepted else None,
        tolerance=accepted.get(GATE_TOLERANCE) if accepted else None,
        since=_utc(run.create_timestamp) if run is not None else None,
        index=report.get("index_fingerprint") if isinstance(report, dict) else None,
    )


def _utc(when: datetime) -> datetime:
    """``when`` as an aware datetime (Dagster's run records hold naive UTC times)."""
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _refusal(context: dg.AssetExecutionContext, corpus: CorpusConfig, staged: StagedVersion) -> str | None:
    """Why ``staged`` may not be published (None: both blocking checks passed for it)."""
    by = f"run {staged.run_id}" if staged.run_id else "no known run"
    name = f"version {staged.version} of {corpus.collection!r} (staged by {by})"
    count = point_count_result(context, staged)
    if count is None:
        return f"{name} has no {POINT_COUNT_CHECK} result: materialize qdrant_index with its checks"
    if not count.passed:
        meta = {k: getattr(v, "value", v) for k, v in count.metadata.items()}
        figures = ", ".join(counted(meta[key], key.removesuffix("s")) for key in ("points", "chunks") if key in meta)
        return f"{name} was refused by {POINT_COUNT_CHECK} ({figures})"
    record = gate_record(context, staged)
    if record is None:
        return f"{name} was never evaluated: materialize retrieval_evaluation"
    if record.get(GATE) == GATE_REFUSED:
        return f"{name} was refused by {NDCG_CHECK} ({record.get(GATE_DETAIL)})"
    if record.get(GATE) != GATE_PASSED and corpus.has_qrels:
        return f"{name} was never checked by {NDCG_CHECK}: materialize retrieval_evaluation with its checks"
    return None
