"""Schedules: a nightly re-index of every corpus and a daily evaluation of the corpora that have qrels."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg

from assets import CORPORA
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
def nightly_reindex(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for name in CORPORA.names:
        yield dg.RunRequest(run_key=f"reindex-{name}-{day}", partition_key=name, tags={"hybrid_rag/corpus": name})


@dg.schedule(
    cron_schedule=EVALUATION_CRON,
    job=evaluate_job,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Evaluate every corpus that has qrels at 06:00 UTC (metrics and latency over time).",
)
def daily_evaluation(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for corpus in CORPORA.corpora.values():
        if corpus.has_qrels:
            yield dg.RunRequest(
                run_key=f"evaluate-{corpus.name}-{day}",
                partition_key=corpus.name,
                tags={"hybrid_rag/corpus": corpus.name},
            )
