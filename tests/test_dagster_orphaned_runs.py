"""A ``hybrid-rag run`` killed with SIGKILL (out of memory, power loss) leaves its in-process Dagster run STARTED,
which would hold the instance's one-run-per-corpus limit for ever; the next ``hybrid-rag run`` of the corpus marks
it failed, and never a run whose process still runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import psutil
import pytest

from orchestration.main_job import run_main_job
from orchestration.orphaned_runs import (
    HEARTBEAT_TAG,
    PROCESS_RUN_TAG,
    PROCESS_TAG,
    fail_orphaned_runs,
    orphaned_runs_sensor,
    process_gone,
    this_process,
)
from tests.test_dagster_run import Folder

pytestmark = pytest.mark.slow  # a real `hybrid-rag run` process, killed


def started_run(home: Path, process: subprocess.Popen, stderr: Path, timeout: float = 240) -> dg.DagsterRun:
    """The run ``process`` started, once its first step has logged (the instance at ``home`` is set up then)."""
    deadline = time.monotonic() + timeout
    while "raw_documents - dropbox:" not in stderr.read_text(errors="replace"):
        assert process.poll() is None and time.monotonic() < deadline, stderr.read_text(errors="replace")
        time.sleep(0.1)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [run] = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    return run


def test_a_killed_run_is_failed_by_the_next_run_of_its_corpus(tmp_path: Path, caplog) -> None:
    folder = Folder(tmp_path)
    home = tmp_path / "home"
    root = folder.root
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "HYBRID_RAG_CORPORA_FILE": str(root / "corpora.yaml"),
        "HYBRID_RAG_QDRANT_PATH": str(root / "index"),
        "HYBRID_RAG_CACHE_DIR": str(root / "cache"),
        "HYBRID_RAG_HISTORY_PATH": str(root / "evals.sqlite"),
        "HYBRID_RAG_ASSETS_DIR": str(root / "assets"),
    }
    cmd = [sys.executable, "-m", "orchestration.cli", "run", "--corpus", "dropbox"]
    stderr = tmp_path / "run.err"
    with stderr.open("wb") as err:
        process = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err)
    try:
        run = started_run(home, process, stderr)
        assert run.tags[PROCESS_TAG].split(":")[1] == str(process.pid)  # host:pid:start time
        assert HEARTBEAT_TAG in run.tags
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert fail_orphaned_runs(instance, "dropbox") == []  # its process runs: left alone
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # what SIGKILL leaves

    with caplog.at_level("WARNING", logger="orchestration.orphaned_runs"):
        summary = run_main_job("dropbox", dagster_home=home, resources=folder.resources)
    assert summary["index"]["points"] == 3 and summary["published"] == summary["version"]
    assert f"dagster run {run.run_id} of corpus 'dropbox' was left STARTED" in caplog.text
    with dg.DagsterInstance.from_config(str(home)) as instance:
        killed = instance.get_run_by_id(run.run_id)
        assert killed.status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert "is gone (killed?)" in failure.message
        assert instance.get_run_by_id(summary["run_id"]).status == dg.DagsterRunStatus.SUCCESS


def test_process_tags_tell_live_dead_and_foreign_processes_apart() -> None:
    me = this_process()
    host, pid, started = me.rsplit(":", 2)
    assert int(pid) == os.getpid() and not process_gone(me)
    assert process_gone(f"{host}:{pid}:{float(started) - 3600:.3f}")  # a reused pid: another process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert process_gone(f"{host}:{dead.pid}:{started}")
    assert not process_gone(f"another-host:{dead.pid}:{started}")  # cannot be told from here: left alone
    assert not process_gone("garbage")


@dg.op
def _noop() -> None:
    pass


@dg.job
def _some_job() -> None:
    _noop()


def test_the_daemon_sensor_fails_runs_whose_process_was_killed() -> None:
    """``orphaned_runs_sensor`` (on by default in the code location) does what the next ``hybrid-rag run`` does, for
    every corpus, so queued runs start even when nobody runs ``hybrid-rag run`` again."""
    from orchestration.definitions import defs

    [sensor] = [s for s in defs.sensors if s.name == "orphaned_runs_sensor"]
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    host, _, _ = this_process().rsplit(":", 2)
    proc_tag = f"{host}:{sleeper.pid}:{psutil.Process(sleeper.pid).create_time():.3f}"
    with dg.DagsterInstance.ephemeral() as instance, ExitStack() as cleanup:
        cleanup.callback(sleeper.kill)

        def started(tag: str, corpus: str) -> str:
            tags = {PROCESS_TAG: tag, "dagster/partition": corpus}
            return instance.create_run_for_job(_some_job, status=dg.DagsterRunStatus.STARTED, tags=tags).run_id

        orphan, alive = started(proc_tag, "scifact"), started(this_process(), "sample")
        context = dg.build_sensor_context(instance=instance)
        assert "no orphaned run" in str(orphaned_runs_sensor(context).skip_message)
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait(timeout=60)
        assert orphan in str(orphaned_runs_sensor(context).skip_message)
        assert instance.get_run_by_id(orphan).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive).status == dg.DagsterRunStatus.STARTED


def test_a_run_on_another_host_is_failed_once_its_heartbeat_stops(tmp_path: Path, monkeypatch) -> None:
    """A run of the code location's executor (as the daemon launches them) records its process and heartbeat; a
    run whose process ran elsewhere (another container, a recreated one) is failed by the sensor only once its
    heartbeat is older than the timeout, never while its process beats."""
    from orchestration import orphaned_runs

    monkeypatch.setattr(orphaned_runs, "HEARTBEAT_TIMEOUT_S", 3.0)  # the worker beats every 0.2 s
    home = tmp_path / "home"
    home.mkdir()
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.sleeper_job", str(home)],
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        text=True,
    )
    with ExitStack() as cleanup, dg.DagsterInstance.from_config(str(home)) as instance:
        cleanup.callback(worker.kill)
        assert worker.stdout.readline().strip() == "running"
        [run] = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        assert run.tags[PROCESS_TAG].split(":")[1] == str(worker.pid) and HEARTBEAT_TAG in run.tags
        context = dg.build_sensor_context(instance=instance)
        monkeypatch.setattr(orphaned_runs.socket, "gethostname", lambda: "daemon-container")  # the sensor's host
        time.sleep(4)  # longer than the timeout: only the heartbeat tells that the run's process runs
        assert "no orphaned run" in str(orphaned_runs_sensor(context).skip_message)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=60)
        time.sleep(4)
        assert run.run_id in str(orphaned_runs_sensor(context).skip_message)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert "sent no heartbeat for" in failure.message


def test_a_re_execution_is_not_judged_by_the_tags_it_copied_from_its_parent() -> None:
    """A re-execution (the UI's, Dagster's retries) copies its parent's tags: until its own process writes its own,
    they name the parent's process, gone; such a run is not failed, and is once its own process is gone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=60)
    host, _, _ = this_process().rsplit(":", 2)
    dead_tag = f"{host}:{dead.pid}:{time.time() - 5:.3f}"  # a process of this host that no longer runs
    with dg.DagsterInstance.ephemeral() as instance:
        parent = instance.create_run_for_job(_some_job, status=dg.DagsterRunStatus.FAILURE).run_id
        copied = {PROCESS_TAG: dead_tag, HEARTBEAT_TAG: f"{time.time():.0f}", PROCESS_RUN_TAG: parent}
        child = instance.create_run_for_job(
            _some_job, status=dg.DagsterRunStatus.STARTING, tags={**copied, "dagster/partition": "sample"}
        ).run_id
        assert fail_orphaned_runs(instance, "sample") == []
        assert instance.get_run_by_id(child).status == dg.DagsterRunStatus.STARTING
        instance.add_run_tags(child, {PROCESS_RUN_TAG: child})  # its own process wrote them, then died
        assert fail_orphaned_runs(instance, "sample") == [child]
