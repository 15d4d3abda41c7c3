"""A run of a job partitioned by corpus launched without a partition (the launchpad with no partition chosen,
GraphQL, ``dagster job launch`` without a ``dagster/partition`` tag) is refused before any step, saying what to do,
instead of failing its first asset on Dagster's "Cannot access partition_key for a non-partitioned run"."""

from __future__ import annotations

import re
import shlex

import dagster as dg

from assets.partitions import CORPORA


def reindex_job() -> dg.JobDefinition:
    """The code location's ``reindex`` job, reconstructable as the daemon's run worker loads it."""
    from orchestration.definitions import defs

    return defs.resolve_job_def("reindex")


def test_a_run_without_a_corpus_is_refused_before_any_step_naming_the_corpora() -> None:
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(reindex_job), instance=instance, raise_on_error=False)
        assert not result.success
        run_id = result.run_id
        assert not instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)  # nothing read, loaded or written
        [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        text = failure.message + str(failure.dagster_event.event_specific_data.error)
        assert "UnpartitionedRunError: run " in text and "names no corpus" in text and "--partitions" in text
        assert all(name in text for name in CORPORA.names)
        assert "Cannot access partition_key" not in text


def test_only_a_run_without_a_partition_or_range_is_refused() -> None:
    from orchestration.orphaned_runs import unpartitioned_run

    job = reindex_job()
    for tags in ({"dagster/partition": "sample"}, {"dagster/asset_partition_range_start": "sample"}):
        assert unpartitioned_run(job, dg.DagsterRun(job_name="reindex", run_id="r1", tags=tags)) is None
    assert "names no corpus" in unpartitioned_run(job, dg.DagsterRun(job_name="reindex", run_id="r1", tags={}))


def test_the_refusal_suggests_dagster_commands_that_exist() -> None:
    """Each ``dagster ...`` command the refusal suggests parses with Dagster's own CLI (it suggested
    ``dagster job launch --partition``, an option Dagster does not have)."""
    from dagster._cli import create_dagster_cli

    from orchestration.orphaned_runs import unpartitioned_run

    refusal = unpartitioned_run(reindex_job(), dg.DagsterRun(job_name="reindex", run_id="r1", tags={}))
    commands = [shlex.split(c) for c in re.findall(r"`(dagster [^`]+)`", refusal)]
    for _, group, name, *args in commands:
        command = create_dagster_cli().commands[group].commands[name]
        command.make_context(name, list(args))  # click.NoSuchOption for an option the command lacks
        assert "sample" in args[-1]
    assert {tuple(c[1:3]) for c in commands} == {("job", "backfill"), ("job", "launch")}
