"""The main job: a run of the ``reindex`` job for one corpus, in-process, and its evaluation report.

Runs on the embedded Qdrant engine (unless ``HYBRID_RAG_QDRANT_URL`` is set) with a persistent Dagster
instance under ``$DAGSTER_HOME`` (else ``data/dagster_home``), so the run history, metadata plots and the
publishing gate carry over between runs (point ``dagster dev`` at the same absolute path to browse them; the
runs belong to the ``reindex`` job, so they can be re-executed from the UI).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from rich.console import Console
from rich.text import Text

from assets import ALL_ASSETS, CHANNELS_CHECK, CORPORA, NDCG_CHECK, POINT_COUNT_CHECK, RERANK_CHECK
from assets.evaluation import GATE, GATE_NOT_RUN, evaluation_report
from orchestration.definitions import default_resources
from orchestration.jobs import reindex_job
from orchestration.orphaned_runs import fail_orphaned_runs, heartbeat, process_tags
from orchestration.terminal import LiteralConsole, PrintableFormatter, label
from retrieval.errors import HybridRagError
from retrieval.store import StoreError, open_store

DAGSTER_HOME = Path("data/dagster_home")
INSTANCE_YAML = Path(__file__).with_name("dagster_instance.yaml")  # the project's instance settings, outside data/
INDEX_FIELDS = ("documents", "chunks", "written", "unchanged", "deleted", "points")


class MainJobError(RuntimeError):
    """The run failed; the message names the failed steps and why."""


class DagsterHomeError(HybridRagError):
    """The Dagster instance folder cannot be made or written; the message names it and ``DAGSTER_HOME``."""


def default_dagster_home() -> Path:
    """``$DAGSTER_HOME`` when set (as ``dagster dev`` reads it), else the project's ``data/dagster_home``."""
    return Path(os.environ.get("DAGSTER_HOME") or DAGSTER_HOME).expanduser()


class _OneLine(PrintableFormatter):
    """Each event as its first line: a failed step's error and stack trace stay in the run's event log (the UI);
    the run's failure reasons are printed once, by ``hybrid-rag run``."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).split("\n\n", 1)[0]


@dg.logger(
    config_schema={"log_level": dg.Field(str, default_value="INFO", is_required=False)},
    description="Dagster's console log lines, one line per event",
)
def one_line_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("dagster", level=init_context.logger_config["log_level"].upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
    logger.addHandler(handler)
    return logger


def prepare_dagster_home(dagster_home: str | Path | None = None) -> Path:
    """The instance folder (``dagster_home``, else ``$DAGSTER_HOME``, else ``data/dagster_home``), made with the
    project's instance settings (telemetry off, one run per corpus) unless it has its own ``dagster.yaml``; so
    deleting ``data/`` to start afresh loses nothing."""
    home = Path(dagster_home or default_dagster_home()).resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
        if not (home / "dagster.yaml").exists():
            shutil.copyfile(INSTANCE_YAML, home / "dagster.yaml")
    except OSError as exc:  # a read-only working directory (the default is relative to it), a missing home
        raise DagsterHomeError(
            f"Dagster instance folder {home}: cannot write it ({exc.strerror or exc}): set DAGSTER_HOME to the "
            "absolute path of a folder this user can write"
        ) from None
    return home


class _Stop(Exception):  # noqa: N818 (a signal, not an error)
    """A signal asking ``hybrid-rag ui`` to stop."""


def _raise_stop(signum: int, _frame: object) -> None:
    raise _Stop(signum)


def run_dagster_ui(args: Sequence[str] = ()) -> int:
    """``dagster dev -m orchestration.definitions [args]`` on the project's instance (:func:`prepare_dagster_home`,
    passed on as ``DAGSTER_HOME``); returns its exit code once it has stopped.

    ``dagster dev`` runs in its own session, so that what it starts (webserver, daemon, code servers) is one process
    group that only this process stops: Ctrl-C, SIGTERM and SIGHUP (unless ignored, as under ``nohup``) send it
    SIGINT, its own shutdown, then SIGTERM and SIGKILL to what is left after ``UI_STOP_GRACE_S`` each."""
    home = prepare_dagster_home()
    # Dagster's SupersessionWarning at dagster dev's start advises `dg dev`, which knows nothing of this instance
    quiet = "ignore:Function `dev_command` is superseded"
    command = [sys.executable, "-W", quiet, "-m", "dagster", "dev", "-m", "orchestration.definitions", *args]
    stops = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if s == signal.SIGINT or not _ignored(s)]
    # set before the child starts: a handled signal is at its default in the child, so dagster dev (which maps
    # SIGTERM to its SIGINT handler) stops on SIGINT even when started where SIGINT is ignored (`nohup ... &`)
    previous = {s: signal.signal(s, _raise_stop) for s in stops}
    process: subprocess.Popen[bytes] | None = None
    try:
        process = subprocess.Popen(command, env={**os.environ, "DAGSTER_HOME": str(home)}, start_new_session=True)
        return process.wait()
    except _Stop as stop:
        if process is None:  # stopped before dagster dev started
            return 128 + stop.args[0]
        for s in stops:  # a second Ctrl-C does not cut the shutdown short
            signal.signal(s, signal.SIG_IGN)
        return _stop_group(process)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


UI_STOP_GRACE_S = 30.0


def _ignored(signum: int) -> bool:
    return signal.getsignal(signum) == signal.SIG_IGN


def _stop_group(process: subprocess.Popen[bytes]) -> int:
    """SIGINT, then SIGTERM, then SIGKILL to ``process``' group until none of it is left; its exit code."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:  # the whole group has exited
            break
        deadline = time.monotonic() + UI_STOP_GRACE_S
        while _group_alive(process) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _group_alive(process):
            break
    return process.wait()


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    process.poll()  # reaps dagster dev once it exits (a zombie still counts as a member of its group)
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_main_job(
    corpus: str = "sample",
    *,
    dagster_home: str | Path | None = None,
    resources: Mapping[str, Any] | None = None,
    run_config: Mapping[str, Any] | None = None,
    log_level: str = "INFO",
) -> dict[str, Any]:
    """Materialize every asset of partition ``corpus``; returns the evaluation (see :func:`summarize`).

    ``log_level`` sets the console logger (Dagster's per-event lines are DEBUG) unless ``run_config`` has loggers.
    """
    CORPORA.get(corpus)  # an unknown corpus: UnknownCorpusError, naming the configured ones
    home = prepare_dagster_home(dagster_home)
    resources = dict(resources or default_resources())
    defs = dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[reindex_job],
        resources=resources,
        executor=dg.in_process_executor,
        loggers={"console": one_line_console_logger},
    )
    with _corpus_lock(resources, corpus), dg.DagsterInstance.from_config(str(home)) as instance:
        fail_orphaned_runs(instance, corpus)
        run_id = str(uuid.uuid4())  # as Dagster makes them; known before the run exists, for the heartbeat
        # execute_in_process ignores the job's executor (which beats otherwise)
        with heartbeat(instance, run_id), _no_loop_cleanup_warning():
            result = defs.resolve_job_def(reindex_job.name).execute_in_process(
                partition_key=corpus,
                run_config={"loggers": {"console": {"config": {"log_level": log_level}}}, **(run_config or {})},
                instance=instance,
                raise_on_error=False,
                run_id=run_id,
                tags={"hybrid_rag/trigger": "main job", "hybrid_rag/corpus": corpus, **process_tags(run_id)},
            )
        if not result.success:
            raise MainJobError(f"run {result.run_id} for corpus {corpus!r} failed: " + "; ".join(_failures(result)))
        summary = summarize(result, corpus)
    summary["dagster_home"] = str(home)
    return summary


@contextmanager
def _no_loop_cleanup_warning() -> Iterator[None]:
    """Inside a running event loop (a notebook cell) Dagster cannot shut down the event loop it made for the run:
    its ``shutdown_asyncgens()`` coroutine is never awaited and Python would print a ``RuntimeWarning`` in the cell,
    for nothing (the run is complete)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "coroutine 'BaseEventLoop.shutdown_asyncgens' was never awaited")
        yield


@contextmanager
def _corpus_lock(resources: Mapping[str, Any], corpus: str) -> Iterator[None]:
    """The collection's write lock for the whole run: runs of one corpus from ``hybrid-rag run`` (in-process, so
    the instance's one-run-per-corpus queue does not apply) take turns instead of staging over each other.

    Where the lock cannot be set up (bad settings, an unknown corpus file...), the run goes ahead without it
    and reports that error itself; the assets still evaluate and publish only the version their run staged.
    """
    try:
        collection = resources["corpora"].process_config_and_initialize().get(corpus).collection
        settings = resources["retrieval"].process_config_and_initialize().settings(collection)  # EnvVars resolved
        settings = settings.model_copy(update={"qdrant_path": Path(settings.qdrant_path).resolve()})  # one lock key
        store = open_store(settings, collection)
    except Exception:  # noqa: BLE001 - reported by the run's own steps
        yield
        return
    with ExitStack() as held:
        try:
            held.enter_context(store.write_lock())
        except StoreError as exc:  # another run held it past the lock timeout
            raise MainJobError(f"corpus {corpus!r}: {exc}") from exc
        finally:  # the lock outlives the store: qdrant-client's local mode (file://) lets one client open a folder
            store.close()  # at a time, and the run's steps open their own
        yield


def summarize(result: dg.ExecuteInProcessResult, corpus: str) -> dict[str, Any]:
    """``{corpus, collection, run_id, evaluated, note, split, version, published, previous,
    metrics: {variant: {metric: value, latency_ms}}, report: EvalReport.summary() or None,
    index: {documents, chunks, written, unchanged, deleted, points}, checks: {name: {passed, severity, description}}}``.
    """
    materialized = {
        event.asset_key.to_user_string(): event.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    index = materialized.get("qdrant_index", {})
    evaluation = materialized.get("retrieval_evaluation", {})
    report = evaluation_report(evaluation)
    checks = {
        e.check_name: {
            "passed": e.passed,
            "severity": e.severity.value,
            "description": e.description,
            "run": _value(e.metadata.get(GATE)) != GATE_NOT_RUN,  # False: the gate of a corpus without qrels
        }
        for e in result.get_asset_check_evaluations()
    }
    published = materialized.get("published_index", {})
    return {
        "corpus": corpus,
        "collection": _value(index.get("collection")),
        "run_id": result.run_id,
        "evaluated": report is not None,
        "note": _value(evaluation.get("qrels")),
        "split": report.split if report else None,
        "version": _value(index.get("version")),
        "published": _value(published.get("version")),
        "previous": _value(published.get("previous_version")),
        "metrics": report.metrics() if report else {},
        "report": report.summary() if report else None,
        "index": {name: _value(index.get(name)) for name in INDEX_FIELDS},
        "checks": checks,
    }


def print_results(summary: Mapping[str, Any], console: Console | None = None) -> None:
    """The evaluation as a rich table, with the index counts and the asset checks (``console``: by default one
    that prints names and messages literally)."""
    from evals.report import metrics_table

    console = console or LiteralConsole()
    index = summary.get("index", {})
    console.print(
        "corpus",
        label(summary["corpus"], "bold"),
        f"-> collection {summary.get('collection')!r}:",
        ", ".join(f"{name} {_count(index.get(name))}" for name in INDEX_FIELDS),
        soft_wrap=True,
    )
    if summary.get("metrics"):
        console.print(metrics_table(summary["metrics"], title=f"{summary['corpus']} ({summary.get('split')})"))
    else:
        console.print(summary.get("note") or "no evaluation", style="yellow", soft_wrap=True)
    for name in (POINT_COUNT_CHECK, NDCG_CHECK, CHANNELS_CHECK, RERANK_CHECK):
        check = summary.get("checks", {}).get(name)
        if check:
            if not check.get("run", True):
                mark = Text("not run")
            elif check["passed"]:
                mark = label("passed", "green")
            elif check["severity"] == "WARN":
                mark = label("warning", "yellow")
            else:
                mark = label("FAILED", "red") + f" ({check['severity']})"
            detail = f": {check['description']}" if check.get("description") else ""
            console.print(f"check {name}: ", mark, detail, sep="", soft_wrap=True)
    if summary.get("published") is not None:
        name, version = summary.get("collection"), summary["published"]
        if version != summary.get("previous"):
            console.print(f"readers now use version {version} of {name!r}", soft_wrap=True)
        else:
            console.print(f"readers keep version {version} of {name!r} (nothing changed)", soft_wrap=True)
    console.print(
        f"dagster run {summary.get('run_id')} (DAGSTER_HOME={summary.get('dagster_home', '-')})", soft_wrap=True
    )


def _count(value: Any) -> str:
    """A count with thousands separators (``4,500``); ``-`` where the run did not record it."""
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


def _value(metadata_value: Any) -> Any:
    return getattr(metadata_value, "value", metadata_value)


def _failures(result: dg.ExecuteInProcessResult) -> list[str]:
    out = [
        f"check {e.check_name} failed: {e.description or 'see its metadata'}"
        for e in result.get_asset_check_evaluations()
        if not e.passed
    ]
    for event in result.all_events:
        if event.event_type_value == "RESOURCE_INIT_FAILURE":  # e.g. an assets folder that is a file
            out.append(f"resources: {_cause(event.engine_event_data.error)}")
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        if data.error and data.error.cls_name == "DagsterAssetCheckFailedError":
            continue  # the failed checks are listed above, with their figures
        text = data.user_failure_data.description if data.user_failure_data else None
        out.append(f"{event.step_key}: {text or _cause(data.error)}")
    return out or ["see the run's event log"]


def _cause(error: Any) -> str:
    """The innermost error of a step failure (the user code's, not Dagster's step wrapper), as one line."""
    if error is None:
        return "failed"
    if error.cls_name == "DagsterExecutionInterruptedError":  # SIGINT/SIGTERM: Dagster's own handler stops the step
        return "interrupted by a signal (SIGINT/SIGTERM) before it finished; run the same command again"
    while error.cause is not None:
        error = error.cause
    return " ".join(error.message.split()) or error.cls_name
