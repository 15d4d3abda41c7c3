"""A run worker for tests/test_dagster_orphaned_runs.py: a job on the code location's executor whose one op waits
to be killed, launched in its own process as the daemon's run launcher does (``python -m tests.sleeper_job HOME``)."""

from __future__ import annotations

import sys
import time

import dagster as dg

from orchestration import orphaned_runs
from orchestration.orphaned_runs import in_process_heartbeat_executor


@dg.op
def wait_to_be_killed() -> None:
    print("running", flush=True)
    time.sleep(300)


@dg.job(executor_def=in_process_heartbeat_executor)
def sleeper_job() -> None:
    wait_to_be_killed()


if __name__ == "__main__":
    orphaned_runs.HEARTBEAT_INTERVAL_S = 0.2  # a fast heartbeat for the test
    with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
        dg.execute_job(dg.reconstructable(sleeper_job), instance=instance, tags={"dagster/partition": "sample"})
