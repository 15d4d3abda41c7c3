"""`hybrid-rag collections` says how many documents a collection holds, when it was last written, and whether a
write is in progress now (the embedded engine's write lock held by a live process; a lock file a dead writer
left is not a write in progress), on both backends (the server's through qdrant-client's local mode)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys

import pytest
from qdrant_client import QdrantClient
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval import Document, RetrievalSettings, RetrievalStack
from retrieval.store.server import WRITTEN_KEY
from tests.conftest import BACKENDS, TINY_DOCS
from tests.test_reliability_writes import REPO

LONG = Document("manual", "Pump manual. " + " ".join(f"Step {i}: check seal {i} and valve {i}." for i in range(60)))
DOCS = [*TINY_DOCS, LONG]  # the manual spans several chunks: points outnumber documents
OLD = dt.datetime(2001, 2, 3, 4, 5, 6, tzinfo=dt.UTC)


def listed(*args: str) -> list[dict] | str:
    result = CliRunner().invoke(app, ["collections", *args], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout) if "--json" in args else result.stdout


def written(row: dict) -> dt.datetime:
    return dt.datetime.strptime(row["last_write"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def set_last_write(backend: str, tmp_path, when: dt.datetime) -> None:
    """Move the recorded time of the last write back to ``when`` (a later write must record its own)."""
    if backend == "edge":
        os.utime(tmp_path / "index" / "kb.current.json", (when.timestamp(), when.timestamp()))
        return
    client = QdrantClient(path=str(tmp_path / "srv"))
    try:
        physical = {a.alias_name: a.collection_name for a in client.get_aliases().aliases}["kb"]
        client.update_collection(physical, metadata={WRITTEN_KEY: when.isoformat()})
    finally:
        client.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_collections_shows_documents_and_the_last_write_of_a_real_ingest(
    backend, tmp_path, monkeypatch, dense_encoder, sparse_encoder
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    where = {"qdrant_path": tmp_path / "index"}
    if backend == "server":
        where = {"qdrant_url": f"file://{tmp_path / 'srv'}"}
        monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", where["qdrant_url"])
    settings = RetrievalSettings(**where, collection="kb", cache_dir=tmp_path / "cache", _env_file=None)

    def write(action) -> dict:
        with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
            action(stack.indexer())
        [row] = listed("--json")
        return row

    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    row = write(lambda indexer: indexer.index(DOCS, progress=False))
    after = dt.datetime.now(dt.UTC)
    assert row["points"] > row["documents"] == len(DOCS)
    assert before - dt.timedelta(seconds=1) <= written(row) <= after + dt.timedelta(seconds=1)
    edge = backend == "edge"
    assert (row["write_in_progress"], row["writer"]) == ((False, None) if edge else (None, None))
    table = listed()
    assert f"│ {row['points']} " in table and f"│ {len(DOCS)} " in table and row["last_write"] in table
    assert f"│ {'no' if edge else 'n/a'} " in table  # the writing column

    # every later write records its time: one that adds a document (on a server, in place), one that deletes two
    set_last_write(backend, tmp_path, OLD)
    assert listed("--json")[0]["last_write"] == "2001-02-03T04:05:06Z"
    row = write(lambda indexer: indexer.index([Document("extra", "An extra note about gaskets.")], progress=False))
    assert row["documents"] == len(DOCS) + 1 and written(row) >= before
    set_last_write(backend, tmp_path, OLD)
    row = write(lambda indexer: indexer.delete_documents(["extra", "manual"]))
    assert (row["documents"], row["points"]) == (len(DOCS) - 1, len(TINY_DOCS)) and written(row) >= before


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_collections_is_one_line_saying_how_to_make_one_not_an_empty_table(backend, tmp_path, monkeypatch):
    """Both backends say the same line; ``--json`` is an empty list."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "index").mkdir()
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    where = str(tmp_path / "index")
    if backend == "server":
        where = f"file://{tmp_path / 'srv'}"
        monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", where)
    assert listed("--json") == []
    expected = f"no collections at {where}; create one with hybrid-rag index PATH [--collection NAME]"
    assert " ".join(listed().split()) == expected


HOLD_WRITE_LOCK = """
import sys, time
from retrieval.store import EdgeStore
with EdgeStore(sys.argv[1], "kb").write_lock():
    print("locked", flush=True)
    time.sleep(600)
"""


def test_collections_shows_a_write_in_progress_only_while_a_live_process_holds_the_lock(
    tmp_path, monkeypatch, dense_encoder, sparse_encoder
):
    root = tmp_path / "index"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(root))
    settings = RetrievalSettings(qdrant_path=root, collection="kb", cache_dir=tmp_path / "cache", _env_file=None)
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        [row] = listed("--json")
        assert row["write_in_progress"] is True and row["documents"] == len(TINY_DOCS)  # still listed in full
        assert (row["writer"]["pid"], row["writer"]["host"]) == (holder.pid, socket.gethostname())
        assert f"yes: pid {holder.pid} on {socket.gethostname()} since {row['writer']['since']}" in listed()
    finally:
        holder.kill()
        holder.wait()
    # the killed writer's lock file is left naming it: stale, not a write in progress
    assert json.loads((root / "kb.write.lock").read_text())["pid"] == holder.pid
    [row] = listed("--json")
    assert (row["write_in_progress"], row["writer"]) == (False, None)
    # a lock file naming a live process that does not hold the lock (a writer that finished) is no write either
    (root / "kb.write.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "x"}))
    [row] = listed("--json")
    assert (row["write_in_progress"], row["writer"]) == (False, None)


STAGE_FIRST_BUILD = """
import sys, time
from retrieval.store import CollectionSchema, EdgeStore
store = EdgeStore(sys.argv[1], "half")
with store.write_lock():
    store.stage(CollectionSchema(dense_model="toy", dense_dim=4, sparse_model="bm25", sparse_idf=True)).close()
    print("staged", flush=True)
    time.sleep(600)
"""


def test_a_first_build_running_in_another_process_is_said_to_be_in_progress(tmp_path, monkeypatch):
    root = tmp_path / "index"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(root))
    builder = subprocess.Popen(
        [sys.executable, "-c", STAGE_FIRST_BUILD, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert builder.stdout.readline().strip() == "staged"
        [row] = listed("--json")
        assert (row["status"], row["write_in_progress"], row["writer"]["pid"]) == (
            "first build in progress",  # was "unfinished first build: rerun the index command" while it ran
            True,
            builder.pid,
        )
        table = " ".join(listed().split())
        assert f"half: first build in progress (pid {builder.pid} on {socket.gethostname()} since" in table
        assert "rerun" not in table
    finally:
        builder.kill()
        builder.wait()
    table = " ".join(listed().split())  # killed: stopped before it published
    assert "half: unfinished first build: rerun the index command (until then no other command can use it)" in table
