"""Runs of ``hybrid-rag run`` left STARTED by a killed process.

``hybrid-rag run`` executes the ``reindex`` job in its own process (``execute_in_process``), which Dagster's run
monitoring does not watch (it covers runs a run launcher started). Killed with SIGKILL (out of memory, power loss),
the process leaves its run STARTED for good, and that run holds the instance's one-run-per-corpus limit
(``tag_concurrency_limits`` on ``dagster/partition``): queued runs of the corpus (sensor, schedule, UI) would never
start. Each such run carries :data:`PROCESS_TAG` (host, pid and start time of its process); the next
``hybrid-rag run`` of the corpus, and the daemon's ``orphaned_runs_sensor``, mark failed those whose process on
this host is gone.
"""

from __future__ import annotations

import logging
import socket

import dagster as dg
import psutil

PROCESS_TAG = "hybrid_rag/process"  # host:pid:start time of the process running an in-process run
log = logging.getLogger(__name__)


def this_process() -> str:
    """``host:pid:start time`` of this process (the start time tells a reused pid apart)."""
    process = psutil.Process()
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.3f}"


def process_gone(tag: str) -> bool:
    """Whether the process ``tag`` (see :func:`this_process`) names ran on this host and no longer runs; False
    when that cannot be told (another host, a malformed tag, no permission)."""
    try:
        host, pid, started = tag.rsplit(":", 2)
        if host != socket.gethostname():
            return False
        return abs(psutil.Process(int(pid)).create_time() - float(started)) > 1  # the pid was reused
    except psutil.NoSuchProcess:
        return True
    except (ValueError, psutil.Error):
        return False


def fail_orphaned_runs(
    instance: dg.DagsterInstance, corpus: str | None = None, *, by: str = "hybrid-rag run"
) -> list[str]:
    """Mark failed every run (of ``corpus``, else of any corpus) still STARTING or STARTED whose in-process run's
    process on this host is gone. Returns their run ids; each gets a warning and the reason in its event log."""
    in_progress = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    tags = {"dagster/partition": corpus} if corpus else None
    failed = []
    for run in instance.get_runs(dg.RunsFilter(statuses=in_progress, tags=tags)):
        tag = run.tags.get(PROCESS_TAG)
        if tag and process_gone(tag):
            latest = instance.get_run_by_id(run.run_id)  # another process (the sensor, a run) may have failed it
            if latest is None or latest.status not in in_progress:
                continue
            reason = f"the process that ran it ({tag}) is gone (killed?); marked failed by {by}"
            instance.report_run_failed(run, message=reason)
            partition = run.tags.get("dagster/partition")
            log.warning("dagster run %s of corpus %r was left %s: %s", run.run_id, partition, run.status.value, reason)
            failed.append(run.run_id)
    return failed


@dg.sensor(
    name="orphaned_runs_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed the runs of `hybrid-rag run` left STARTED by a killed process on this host",
)
def orphaned_runs_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    failed = fail_orphaned_runs(context.instance, by="the daemon (orphaned_runs_sensor)")
    return dg.SkipReason(f"marked failed: {', '.join(failed)}" if failed else "no orphaned run")
