"""Runs left STARTED by a process that died (SIGKILL, out of memory, a stopped or recreated container).

A dead run holds the instance's one-run-per-corpus limit (``tag_concurrency_limits`` on ``dagster/partition``):
queued runs of the corpus (sensor, schedule, UI) would never start. Dagster's run monitoring cannot see it:
``hybrid-rag run`` executes in its own process (``execute_in_process``), and DefaultRunLauncher cannot check a
run worker's health. So every run of this project's jobs records its process (:data:`PROCESS_TAG`: host, pid and
start time) when it starts, and refreshes :data:`HEARTBEAT_TAG` (the time) every :data:`HEARTBEAT_INTERVAL_S`
seconds while it runs. The next ``hybrid-rag run`` of the corpus, and the daemon's ``orphaned_runs_sensor``, mark
failed a STARTING or STARTED run whose process on this host is gone (the fast path), or, on another host (another
container, a recreated one), whose heartbeat is older than :data:`HEARTBEAT_TIMEOUT_S`. A process alive on this
host is never failed.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psutil

PROCESS_TAG = "hybrid_rag/process"  # host:pid:start time of the process running the run
HEARTBEAT_TAG = "hybrid_rag/heartbeat"  # unix time of the run process' latest heartbeat
PROCESS_RUN_TAG = "hybrid_rag/process_run"  # the run the two tags above were written for (re-executions copy tags)
PARTITION_TAG = "dagster/partition"  # the corpus of a run (Dagster's tag)
PARTITION_RANGE_TAG = "dagster/asset_partition_range_start"  # a run over a range of partitions
HEARTBEAT_INTERVAL_S = 30.0
HEARTBEAT_TIMEOUT_S = 300.0  # ten missed heartbeats: the run's process (or its host, its container) is gone
log = logging.getLogger(__name__)


def this_process() -> str:
    """``host:pid:start time`` of this process (the start time tells a reused pid apart)."""
    process = psutil.Process()
    return f"{socket.gethostname()}:{process.pid}:{process.create_time():.3f}"


def process_tags(run_id: str) -> dict[str, str]:
    """The tags run ``run_id``'s process records when it starts: :data:`PROCESS_TAG`, a first
    :data:`HEARTBEAT_TAG`, and :data:`PROCESS_RUN_TAG` (``run_id``: a re-execution copies its parent's tags, which
    name the parent's process until its own process overwrites them)."""
    return {PROCESS_TAG: this_process(), HEARTBEAT_TAG: f"{time.time():.0f}", PROCESS_RUN_TAG: run_id}


@contextmanager
def heartbeat(instance: dg.DagsterInstance, run_id: str, interval_s: float | None = None) -> Iterator[None]:
    """Refreshes run ``run_id``'s :data:`HEARTBEAT_TAG` every ``interval_s`` (default :data:`HEARTBEAT_INTERVAL_S`)
    seconds, from a thread, until exit. A failed refresh (the run not created yet, the database unreachable) is
    retried at the next beat."""
    interval_s = interval_s or HEARTBEAT_INTERVAL_S
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                instance.add_run_tags(run_id, {HEARTBEAT_TAG: f"{time.time():.0f}"})
            except Exception as exc:  # noqa: BLE001 - retried at the next beat
                log.debug("heartbeat of run %s: %s", run_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat {run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class UnpartitionedRunError(Exception):
    """A run of a job partitioned by corpus names no corpus (raised before any step runs)."""


def unpartitioned_run(job: dg.JobDefinition, run: dg.DagsterRun) -> str | None:
    """Why a run of a job partitioned by corpus that names no partition cannot run (the launchpad, GraphQL and
    ``dagster job launch`` accept it; each asset would fail on Dagster's "Cannot access partition_key for a
    non-partitioned run"), else None. Such a run is also outside the one-run-per-corpus limit."""
    partitions = job.partitions_def
    if partitions is None or PARTITION_TAG in run.tags or PARTITION_RANGE_TAG in run.tags:
        return None
    keys = partitions.get_partition_keys()
    name, corpus = run.job_name, keys[0] if keys else "NAME"
    tags = json.dumps({PARTITION_TAG: corpus})
    return (
        f"run {run.run_id} of job {name!r} names no corpus: its assets are partitioned by corpus, one partition "
        f"per corpora file entry ({', '.join(keys) or 'none'}); launch it with a partition: the launchpad's "
        f"partition selector, `dagster job backfill -j {name} --partitions {corpus}`, `dagster job launch -j {name} "
        f"--tags '{tags}'`" + (f", `hybrid-rag run --corpus {corpus}`" if name == "reindex" else "")
    )


class _HeartbeatExecutor(dg.Executor):
    """Dagster's in-process executor that first tags the run with its process and keeps its heartbeat."""

    def __init__(self, inner: dg.Executor):
        self.inner = inner

    @property
    def retries(self):  # Dagster's RetryMode
        return self.inner.retries

    @property
    def step_dependency_config(self):  # Dagster's StepDependencyConfig
        return self.inner.step_dependency_config

    def execute(self, plan_context, execution_plan):  # Dagster's executor interface
        refusal = unpartitioned_run(plan_context.job.get_definition(), plan_context.dagster_run)
        if refusal:
            raise UnpartitionedRunError(refusal)
        plan_context.instance.add_run_tags(plan_context.run_id, process_tags(plan_context.run_id))
        with heartbeat(plan_context.instance, plan_context.run_id):
            yield from self.inner.execute(plan_context, execution_plan)


@dg.executor(
    name="in_process",
    config_schema=dg.in_process_executor.config_schema,
    requirements=dg.in_process_executor.get_requirements,
)
def in_process_heartbeat_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """Dagster's ``in_process_executor`` (same config) whose runs record their process and heartbeat, so that
    :func:`fail_orphaned_runs` can tell when they die, whichever host or container launched them; a run that
    names no corpus is refused first (:func:`unpartitioned_run`)."""
    return _HeartbeatExecutor(dg.in_process_executor.executor_creation_fn(init_context))


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


def on_this_host(tag: str) -> bool:
    return tag.rsplit(":", 2)[0] == socket.gethostname()


def dead_reason(run: dg.DagsterRun, timeout_s: float) -> str | None:
    """Why ``run``'s process is dead, or None when it may be alive (or cannot be told: a run of an earlier
    release, without the tags)."""
    tag = run.tags.get(PROCESS_TAG)
    if not tag:
        return None
    owner = run.tags.get(PROCESS_RUN_TAG)
    if owner != run.run_id and (owner or HEARTBEAT_TAG in run.tags):
        return None  # its parent's tags (a re-execution not started yet): they say nothing of this run's process
    if process_gone(tag):
        return f"the process that ran it ({tag}) is gone (killed?)"
    if on_this_host(tag):
        return None  # alive here (or not ours to tell: no permission)
    try:
        silent_s = time.time() - float(run.tags[HEARTBEAT_TAG])
    except (KeyError, ValueError):
        return None
    if silent_s <= timeout_s:
        return None
    return f"the process that ran it ({tag}, another host) sent no heartbeat for {silent_s:.0f} s (stopped?)"


def fail_orphaned_runs(
    instance: dg.DagsterInstance,
    corpus: str | None = None,
    *,
    by: str = "hybrid-rag run",
    timeout_s: float | None = None,
) -> list[str]:
    """Mark failed every run (of ``corpus``, else of any corpus) still STARTING or STARTED whose process is dead
    (see :func:`dead_reason`; ``timeout_s`` default :data:`HEARTBEAT_TIMEOUT_S`). Returns their run ids; each gets
    a warning and the reason in its event log."""
    timeout_s = timeout_s or HEARTBEAT_TIMEOUT_S
    in_progress = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    tags = {PARTITION_TAG: corpus} if corpus else None
    failed = []
    for run in instance.get_runs(dg.RunsFilter(statuses=in_progress, tags=tags)):
        if dead_reason(run, timeout_s):
            latest = instance.get_run_by_id(run.run_id)  # another process (the sensor, a run) may have failed it
            dead = latest is not None and latest.status in in_progress and dead_reason(latest, timeout_s)
            if not dead:
                continue
            reason = f"{dead}; marked failed by {by}"
            instance.report_run_failed(run, message=reason)
            partition = run.tags.get(PARTITION_TAG)
            log.warning("dagster run %s of corpus %r was left %s: %s", run.run_id, partition, run.status.value, reason)
            failed.append(run.run_id)
    return failed


@dg.sensor(
    name="orphaned_runs_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed the runs left STARTED by a dead process (killed, or its container stopped)",
)
def orphaned_runs_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    failed = fail_orphaned_runs(context.instance, by="the daemon (orphaned_runs_sensor)")
    return dg.SkipReason(f"marked failed: {', '.join(failed)}" if failed else "no orphaned run")
