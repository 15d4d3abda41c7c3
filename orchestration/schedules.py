"""Schedules: a nightly re-index of every corpus and a daily evaluation of the corpora that have qrels."""

from collections.abc import Iterator

import dagster as dg

from assets.resources import CorporaResource
from orchestration.jobs import evaluate_job, reindex_job

NIGHTLY_REINDEX_CRON = "0 2 * * *"
EVALUATION_CRON = "0 6 * * *"


@dg.schedule(
    cron_schedule=NIGHTLY_REINDEX_CRON,
    job=reindex_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Re-index every corpus at 02:00 UTC (one run per partition; unchanged chunks are cheap).",
)
def nightly_reindex(
    context: dg.ScheduleEvaluationContext, corpora: CorporaResource
) -> dg.SkipReason | list[dg.RunRequest]:
    """One run request per corpus whose source exists and whose entry is valid; the others are named in the tick's
    log (its skip reason when none runs)."""
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    loaded = corpora.load()
    requests, missing = [], [f"{name} (its entry is refused: {why})" for name, why in loaded.broken.items()]
    for corpus in loaded.corpora.values():
        if not corpus.source.exists():
            missing.append(f"{corpus.name} ({corpus.source} does not exist)")
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"reindex-{corpus.name}-{day}",
                partition_key=corpus.name,
                tags={"hybrid_rag/corpus": corpus.name, "hybrid_rag/trigger": "nightly schedule"},
            )
        )
    if missing:
        context.log.info("skipped corpora without a source or with a refused entry: " + "; ".join(missing))
    if not requests:
        return dg.SkipReason("no corpus has its source on this machine: " + "; ".join(missing))
    return requests


@dg.schedule(
    cron_schedule=EVALUATION_CRON,
    job=evaluate_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Evaluate every corpus that has qrels at 06:00 UTC (metrics and latency over time).",
)
def daily_evaluation(context: dg.ScheduleEvaluationContext, corpora: CorporaResource) -> Iterator[dg.RunRequest]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for corpus in corpora.load().corpora.values():
        if corpus.qrels is not None and corpus.qrels.exists():
            yield dg.RunRequest(
                run_key=f"evaluate-{corpus.name}-{day}",
                partition_key=corpus.name,
                tags={"hybrid_rag/corpus": corpus.name},
            )
