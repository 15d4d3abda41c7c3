"""SIGTERM (a CI timeout, ``timeout``, ``kill``) and Ctrl-C stop a command in order: its cleanup runs, one line
says so on stderr, and the exit code is 128 + the signal; a snapshot killed outright (SIGKILL) leaves a staging
folder that the next snapshot removes and that restore refuses; a first build stopped before publishing is listed
as unfinished; a writer that overlaps another waits a configurable time, then fails in one line."""

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval.store import StoreError
from retrieval.store.snapshots import restore, snapshot
from tests.conftest import TINY_DOCS

ROOT = Path(__file__).resolve().parents[1]
# The real CLI, with the snapshot's copy sending this process a signal once the shard is in the staging folder.
SIGNALLED_SNAPSHOT = """
import os, signal, sys, time
import retrieval.store.snapshots as snapshots
copy = snapshots.copy_tree
def copy_then_signalled(*args, **kwargs):
    copy(*args, **kwargs)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(30)  # the signal lands here
snapshots.copy_tree = copy_then_signalled
from orchestration.cli import app
app(sys.argv[2:], prog_name="hybrid-rag")
"""


@pytest.fixture(scope="module")
def kept(indexed_stack):
    return indexed_stack("edge", collection="kept")


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signalled_snapshot_removes_its_partial_copy_says_so_and_exits_128_plus_the_signal(
    kept, tmp_path, name, code
):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HYBRID_RAG_QDRANT_PATH": str(kept.store().root),
        "HYBRID_RAG_CACHE_DIR": str(tmp_path / "cache"),
    }
    command = [sys.executable, "-c", SIGNALLED_SNAPSHOT, name, "snapshot", "-c", "kept"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"interrupted ({name}): the command stopped before it finished; rerun the same command to complete it"
    ]
    assert done.stdout == ""
    assert list((tmp_path / "data" / "snapshots").iterdir()) == []  # no NAME-TIME.partial left


def test_a_killed_snapshots_partial_folder_is_removed_by_the_next_and_never_restored(kept, tmp_path):
    store = kept.store()
    left = tmp_path / "kept-20260101T000000Z.partial"  # as SIGKILL leaves it: complete but for the rename
    os.rename(snapshot(store, tmp_path / "kept-20260101T000000Z"), left)
    other = tmp_path / "kept-x-20260101T000000Z.partial"  # another collection's: not this one's to remove
    other.mkdir()
    with pytest.raises(StoreError, match="not a snapshot: an unfinished one"):
        restore(store, left, replace=True, expected=kept.schema())
    assert store.count() == len(TINY_DOCS)

    held = os.open(left, os.O_RDONLY)  # a live snapshot holds its staging folder: left alone
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        snapshot(store, tmp_path / "kept-20260101T000001Z")
        assert left.is_dir()
    finally:
        os.close(held)
    snapshot(store, tmp_path / "kept-20260101T000002Z")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kept-20260101T000001Z",
        "kept-20260101T000002Z",
        "kept-x-20260101T000000Z.partial",
    ]


def test_signal_handlers_are_put_back_after_a_command(cli_env):
    from typer.testing import CliRunner

    from orchestration.cli import app

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    CliRunner().invoke(app, ["collections", "--json"])
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_collections_marks_a_first_build_stopped_before_publishing_as_unfinished(kept, cli_env):
    from typer.testing import CliRunner

    from orchestration.cli import app
    from retrieval.store import EdgeStore

    store = EdgeStore(cli_env / "index", "half")
    with store.write_lock():
        store.stage(kept.schema()).close()  # what a first `index` stopped before publishing leaves
    store.close()
    listed = CliRunner().invoke(app, ["collections", "--json"])
    assert listed.exit_code == 0, listed.output
    [row] = json.loads(listed.stdout)
    assert (row["collection"], row["status"], row["points"], row["version"]) == (
        "half",
        "unfinished first build: rerun the index command",
        None,
        None,
    )
    table = CliRunner().invoke(app, ["collections"])
    assert table.exit_code == 0
    assert "half: unfinished first build: rerun the index command" in table.stdout.replace("\n", " ")
    searched = CliRunner().invoke(app, ["search", "valve", "-c", "half"])  # says the same, not "does not exist"
    assert searched.exit_code == 2 and "no published version yet: its first build is running, or was stopped" in (
        " ".join(searched.output.split())
    )


def test_a_second_writer_waits_the_configured_time_naming_the_holder_then_fails_in_one_line(
    kept, tmp_path, monkeypatch, caplog
):
    """HYBRID_RAG_WRITE_LOCK_TIMEOUT_S sets how long a writer waits for another one's lock (default 600 s)."""
    from typer.testing import CliRunner

    from orchestration.cli import app

    root = kept.store().root
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(root))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HYBRID_RAG_WRITE_LOCK_TIMEOUT_S", "1.5")
    lock = os.open(root / "kept.write.lock", os.O_RDWR)  # another writer holds it (an flock is per open file)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.ftruncate(lock, 0)
        os.write(lock, json.dumps({"pid": 4242, "host": "ci", "since": "2026-12-01T03:00:00Z"}).encode())
        result = CliRunner().invoke(app, ["delete", "valve", "-c", "kept"])
    finally:
        os.close(lock)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: collection 'kept' at {root} is being written by another process (pid 4242 on ci since "
        "2026-12-01T03:00:00Z); gave up after waiting 1.5s (HYBRID_RAG_WRITE_LOCK_TIMEOUT_S). Let that run finish "
        "(or stop it), then run this again"
    )
    assert (
        "collection 'kept' is being written by pid 4242 on ci since 2026-12-01T03:00:00Z: waiting for it to finish "
        "(up to 1.5s, HYBRID_RAG_WRITE_LOCK_TIMEOUT_S)"
    ) in caplog.text
    assert kept.store().count() == len(TINY_DOCS)  # nothing deleted


# The real entry point (``app()``, as the hybrid-rag script calls it): an exit handler registered before it, an
# object torn down with the interpreter's modules, and a worker thread that is not a daemon.
ENTRY_POINT = """
import atexit, sys, threading, time
from pathlib import Path
out = Path(sys.argv[1])
atexit.register(lambda: (out / "atexit").write_text("ran"))
class TornDown:
    def __del__(self):
        (out / "teardown").write_text("ran")
kept_until_teardown = TornDown()
if sys.argv[2] == "thread":
    threading.Thread(target=lambda: (time.sleep(1), (out / "thread").write_text("done"))).start()
from orchestration.cli import app
app(sys.argv[3:], prog_name="hybrid-rag")
"""


@pytest.mark.parametrize(("args", "code"), [(["collections", "--json"], 0), (["search", "x", "-c", "missing"], 2)])
def test_a_finished_command_exits_at_once_with_its_code_output_and_exit_handlers(tmp_path, args, code):
    """A done command skips the interpreter's teardown of the loaded modules (seconds after the last line, where
    a CI timeout would mark a finished restore as failed), but keeps what matters: exit handlers, output, code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYBRID_RAG_QDRANT_PATH": str(tmp_path / "index")}
    (tmp_path / "index").mkdir()  # an index folder without collections: `collections` succeeds with []
    command = [sys.executable, "-c", ENTRY_POINT, str(tmp_path), "-", *args]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == code, done.stderr
    assert done.stdout.strip() == "[]" if code == 0 else "does not exist" in done.stderr
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()


def test_a_command_that_leaves_a_thread_running_waits_for_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYBRID_RAG_QDRANT_PATH": str(tmp_path / "index")}
    (tmp_path / "index").mkdir()
    command = [sys.executable, "-c", ENTRY_POINT, str(tmp_path), "thread", "collections", "--json"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "thread").read_text() == "done"  # its work is not cut short
