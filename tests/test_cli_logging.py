"""``hybrid-rag -v``: the project's INFO lines, each with its time and logger name; other libraries' INFO lines
(alembic and SQLAlchemy under Dagster, sentence-transformers) stay out; a search says where its time went."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_DOCS

REPO = Path(__file__).resolve().parents[1]
VERBOSE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - (\S+) - (INFO|WARNING|ERROR) - ")


def hybrid_rag(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_RAG_")}
    environ |= {"PYTHONPATH": str(REPO), "HYBRID_RAG_QDRANT_PATH": str(cwd / "index"), **env}
    environ |= {"HYBRID_RAG_CACHE_DIR": str(cwd / "cache"), "DAGSTER_HOME": str(cwd / "home")}
    command = [sys.executable, "-m", "orchestration.cli", *args]
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)


def log_lines(stderr: str) -> list[str]:
    """The logging lines of ``stderr`` (not the tables, progress or error lines the commands print)."""
    return [line for line in stderr.splitlines() if re.match(r"^(\d{4}-|info: |warning: |error: )", line)]


def test_library_warnings_print_as_the_cli_own_warning_lines(cli_env, monkeypatch) -> None:
    """A library's warning printed as ``WARNING unknown setting ...`` beside the CLI's ``warning: no index folder
    ...``: both are ``warning: ...`` now. Run in-process with the root logger bare, as in a fresh process (pytest's
    own handlers on it would make the CLI's logging setup a no-op)."""
    from typer.testing import CliRunner

    from orchestration.cli import app

    monkeypatch.setenv("HYBRID_RAG_STYLE_CHECK_TYPO", "1")  # a name no other test warns of (warned once a process)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    try:
        result = CliRunner().invoke(app, ["collections"])  # no index folder: the CLI's own warning, exit code 1
    finally:
        root.handlers[:], root.level = saved
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output  # not a crash
    lines = result.stderr.splitlines()
    assert lines[0].startswith("warning: unknown setting HYBRID_RAG_STYLE_CHECK_TYPO (environment) is ignored"), lines
    assert lines[-1].startswith("warning: no index folder at "), lines
    assert not [line for line in lines if line.startswith("WARNING")]


def test_python_warnings_print_as_the_cli_own_warning_lines(cli_env, capsys, tmp_path) -> None:
    """A Python warning (``warnings.warn``) printed raw, ``/path/edge.py:298: ResourceWarning: unclosed store ...``
    and its source line, beside the CLI's ``warning: ...`` lines: it is one of them now. The library's own warning
    of a store garbage-collected unclosed, after the CLI set up its output; the library alone installs no hook."""
    import gc
    import warnings

    from typer.testing import CliRunner

    from orchestration.cli import app
    from retrieval.store import CollectionSchema, EdgeStore

    assert warnings.showwarning is warnings._showwarning_orig  # type: ignore[attr-defined]  # the library's import
    gc.collect()  # an earlier test's garbage (a Dagster run's database connection) goes now, silently, not below
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()  # bare, as in a fresh process (see the test above)
    try:
        assert CliRunner().invoke(app, ["collections"]).exit_code == 1  # no index folder: the CLI's own warning
        capsys.readouterr()
        store = EdgeStore(tmp_path / "index", "leaked")
        staged = store.stage(CollectionSchema(dense_model="toy", dense_dim=4, sparse_model="bm25", sparse_idf=True))
        store.seal(staged)
        store.publish(staged)
        staged.close()
        store.count()  # holds its version
        with warnings.catch_warnings():
            warnings.simplefilter("always", ResourceWarning)  # hidden by default: shown with python -W, -X dev
            del store
            gc.collect()
    finally:
        root.handlers[:], root.level = saved
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"warning: unclosed store of collection 'leaked' at {tmp_path / 'index'}: released when "
        "garbage-collected; close its RetrievalStack (stack.close() or a with block) when done"
    ], lines


@pytest.mark.slow
def test_verbose_search_logs_with_time_and_logger_and_says_where_the_time_went(tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS))
    assert hybrid_rag("index", str(docs), "-c", "kb", cwd=tmp_path).returncode == 0
    done = hybrid_rag("-v", "search", "valve gasket", "-c", "kb", "-k", "2", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = log_lines(done.stderr)
    assert lines and all(VERBOSE_LINE.match(line) for line in lines), lines  # before: "INFO message"
    loggers = {VERBOSE_LINE.match(line)[1] for line in lines}
    assert {"retrieval.store.edge", "retrieval.encoders.dense", "orchestration.cli"} <= loggers, lines
    assert not any(name.split(".")[0] == "sentence_transformers" for name in loggers)  # its "Loading ..." line
    assert "collection 'kb': opened kb__v1" in done.stderr
    [searched] = [line for line in lines if "searched 'kb'" in line]
    assert all(f"{part} " in searched for part in ("open", "encode", "qdrant", "rerank")), searched
    quiet = hybrid_rag("search", "valve gasket", "-c", "kb", "-k", "2", "--json", cwd=tmp_path)
    assert quiet.returncode == 0 and not log_lines(quiet.stderr), quiet.stderr  # no -v: warnings only


@pytest.mark.slow
def test_verbose_run_leaves_out_alembic_and_sqlalchemy_info_lines(tmp_path: Path) -> None:
    """Creating the Dagster instance logs ~30 INFO lines through alembic: not hybrid-rag's, and not what -v is for."""
    corpora = tmp_path / "corpora.yaml"
    source = tmp_path / "gone.jsonl"
    corpora.write_text(f"default: notes\ncorpora:\n  notes:\n    source: {source}\n    format: jsonl\n")
    done = hybrid_rag("-v", "run", cwd=tmp_path, HYBRID_RAG_CORPORA_FILE=str(corpora))
    assert done.returncode == 1 and "gone.jsonl" in done.stderr, done.stderr  # the run failed on its source
    assert (tmp_path / "home").is_dir()  # the instance was made (alembic stamped its database)
    for noise in ("alembic", "SQLiteImpl", "non-transactional DDL", "stamp_revision"):
        assert noise not in done.stderr, done.stderr
    assert all(VERBOSE_LINE.match(line) for line in log_lines(done.stderr)), done.stderr
