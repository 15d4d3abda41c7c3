"""Readers while writers publish: one search reads one version; a view of a version another process holds is
made even while that process' engine renames files in it; views of processes that ended go. Real engine,
real encoders, real processes (the publish lands between the store calls of one search, not by timing)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from retrieval import Document, RetrievalStack
from retrieval.store import EdgeStore, StoreError, edge
from tests.conftest import TINY_DOCS
from tests.test_reliability_versions import settings_for
from tests.test_reliability_writes import REPO, holding

QUERY = "alpha bravo charlie"
SEARCH_AND_EXIT = """
import sys
from retrieval.store import EdgeStore
store = EdgeStore(sys.argv[1], "test")
print(store.count(), flush=True)  # read through a view: the holder has the version open
if sys.argv[2] == "wait":
    sys.stdin.readline()
"""  # never closes the store


def docs(prefix: str) -> list[Document]:
    """20 documents that all match QUERY: every search has k=10 hits in either set."""
    return [Document(f"{prefix}{i}", f"{QUERY} document {prefix} number {i}" + " filler" * (i % 5)) for i in range(20)]


@pytest.mark.parametrize("path", ["search", "search+rerank", "first_stage"])
def test_a_search_reads_one_version_while_a_writer_publishes(tmp_path, dense_encoder, sparse_encoder, path):
    """The writer publishes a version with other documents between the channel request and the payload (or
    vector) request of one search: the search still answers k hits, all from the version it started on."""
    root = tmp_path / "index"
    settings = settings_for(root)
    writer = RetrievalStack(settings, store=EdgeStore(root, "test"), dense=dense_encoder, sparse=sparse_encoder)
    writer.indexer().index(docs("a"), progress=False)
    store = EdgeStore(root, "test")
    retriever = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).retriever()

    def search() -> list:
        if path == "first_stage":  # what evaluation and tuning read, a batch at a time
            return retriever.first_stage([QUERY], "hybrid", 10, with_vectors=True)[1][0]
        return retriever.search(QUERY, k=10, rerank=path == "search+rerank")

    assert len(search()) == 10
    query_batch, published = store.query_batch, []

    def publish_after_first_request(plans):
        hits = query_batch(plans)
        if not published:
            report = writer.indexer().index(docs("b"), prune=True, allow_delete=True, progress=False)
            published.append(report.version)
        return hits

    store.query_batch = publish_after_first_request
    hits = search()
    assert published == [2]
    assert [h.doc_id[0] for h in hits] == ["a"] * 10  # all from version 1, none dropped
    assert all(h.text.startswith(f"{QUERY} document a") for h in hits)  # payloads of version 1
    if path == "first_stage":  # the stored vectors the reranker reads (search's hits leave them out)
        assert all(h.dense_vector is not None for h in hits)
    assert (root / "test__v1").is_dir()  # kept while this store reads it
    store.query_batch = query_batch
    assert [h.doc_id[0] for h in search()] == ["b"] * 10  # the next search reads the new version
    assert not (root / "test__v1").exists()  # and the old one goes once no one reads it
    writer.close()
    store.close()


@pytest.fixture
def held(tmp_path, dense_encoder, sparse_encoder):
    """A collection whose published version another process (the holder) has open: others read it through views."""
    root = tmp_path / "index"
    with RetrievalStack(
        settings_for(root), store=EdgeStore(root, "test"), dense=dense_encoder, sparse=sparse_encoder
    ) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    with holding(root):
        yield root


@pytest.mark.slow
def test_a_view_is_made_while_the_holder_renames_temporaries(held, monkeypatch):
    """The holder's engine writes ``.atomicwrite*`` folders in the held version and renames them away: one
    vanishing while this process lists the shard to make its view is skipped (it used to raise a bare
    FileNotFoundError out of the search)."""
    segment = next(p for p in (held / "test__v1" / "shard" / "segments").iterdir() if p.is_dir())
    temporary = segment / ".atomicwriteTEST"
    temporary.mkdir()
    (temporary / "data").write_bytes(b"half written")
    scandir = os.scandir

    def renamed_meanwhile(path="."):
        if isinstance(path, str | os.PathLike) and Path(path).name.startswith(".atomicwrite"):
            shutil.rmtree(path)  # the holder renamed it between its listing and its scan
        return scandir(path)

    monkeypatch.setattr(os, "scandir", renamed_meanwhile)
    store = EdgeStore(held, "test")
    assert store.count() == len(TINY_DOCS)
    (view,) = (held / "test__v1" / "views").iterdir()
    assert not list(view.rglob(".atomicwrite*"))
    store.close()
    assert not list((held / "test__v1" / "views").iterdir())


@pytest.mark.slow
def test_a_view_that_cannot_be_copied_is_a_store_error(held, monkeypatch):
    """Any other failure copying the view is retried, then reported as a StoreError (never a bare OSError)."""
    attempts = []

    def unreadable(src, dst):
        attempts.append(src)
        raise PermissionError(13, "Permission denied", src)

    monkeypatch.setattr(edge, "_copy_sparse", unreadable)
    with pytest.raises(StoreError, match=r"test__v1/shard, which another process has open: copying it failed 3"):
        EdgeStore(held, "test").count()
    assert len(attempts) == edge.VIEW_ATTEMPTS and not list((held / "test__v1" / "views").iterdir())


@pytest.mark.slow
def test_a_reader_that_exits_without_close_removes_its_view(held):
    views = held / "test__v1" / "views"
    reader = [sys.executable, "-c", SEARCH_AND_EXIT, str(held), "exit"]
    quiet = subprocess.run(reader, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout.strip() == str(len(TINY_DOCS)), quiet.stderr
    assert views.is_dir() and not list(views.iterdir())  # no close(), yet no view left


@pytest.mark.slow
def test_the_view_of_a_killed_reader_is_removed_by_the_next_open(held):
    """A killed reader (SIGKILL; SIGTERM ends Python without exit handlers too) leaves its view: the next process
    that opens the version removes it (its pid is gone and no one holds its WAL lock)."""
    views = held / "test__v1" / "views"
    reader = [sys.executable, "-c", SEARCH_AND_EXIT, str(held)]
    killed = subprocess.Popen([*reader, "wait"], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert killed.stdout.readline().strip() == str(len(TINY_DOCS)).encode()
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert [p.name.split("-")[0] for p in views.iterdir()] == [str(killed.pid)]  # left behind

    store = EdgeStore(held, "test")  # the next process to open the version: removes the dead process' view
    assert store.count() == len(TINY_DOCS)
    assert [p.name.split("-")[0] for p in views.iterdir()] == [str(os.getpid())]
    store.close()
    assert not list(views.iterdir())


def test_a_reader_follows_an_index_folder_deleted_and_built_again(tmp_path, dense_encoder, sparse_encoder, caplog):
    """The index folder deleted under a service and indexed again (its first version has the same number, 1), by
    this process or another one (or restored from a copy): the service's next search reads the new documents, not
    the deleted files it still had open, and a writer of this process builds the new version instead of reusing the
    deleted one's handle; closing after the folder went raises nothing (a shutdown hook)."""
    root = tmp_path / "index"
    settings = settings_for(root)

    def stack() -> RetrievalStack:
        return RetrievalStack(settings, store=EdgeStore(root, "test"), dense=dense_encoder, sparse=sparse_encoder)

    with stack() as first:
        first.indexer().index(docs("a"), progress=False)
    service = stack()
    retriever = service.retriever()
    assert {h.doc_id[0] for h in retriever.search(QUERY)} == {"a"}
    shutil.rmtree(root)
    assert {h.doc_id[0] for h in retriever.search(QUERY)} == {"a"}  # what it has open, with one warning
    assert "test__v1 was deleted or moved" in caplog.text and str(root) in caplog.text
    with stack() as again:
        assert again.indexer().index(docs("b"), progress=False).version == 1
    assert {h.doc_id[0] for h in retriever.search(QUERY)} == {"b"}
    other = tmp_path / "other"  # built by another process (this one never opened it), then copied in
    with RetrievalStack(settings_for(other), dense=dense_encoder, sparse=sparse_encoder) as elsewhere:
        elsewhere.indexer().index(docs("c"), progress=False)
    shutil.rmtree(root)
    shutil.copytree(other, root)
    assert {h.doc_id[0] for h in retriever.search(QUERY)} == {"c"}
    shutil.rmtree(root)
    service.close()


def test_a_view_of_a_version_deleted_while_it_is_copied_leaves_no_folder(indexed_stack, monkeypatch):
    """A reader copies its view of the version the pointer names while a writer, publishing the next ones, deletes
    it (no WAL lock of the view holds it yet): making the view's folders with their parents brought the deleted
    version's folder back (``test__v1/views/``), a second version folder on disk until a later write dropped it."""
    stack = indexed_stack("edge", collection="test")
    version = stack.store().dir
    stack.close()
    shard_dir = version / "shard"
    walk = os.walk

    def deleted_after_listing(top, *args, **kwargs):
        for listed in walk(top, *args, **kwargs):
            if Path(top) == shard_dir and version.exists():
                shutil.rmtree(version)  # the writer's cleanup, between this listing and the view's folders
            yield listed

    monkeypatch.setattr(os, "walk", deleted_after_listing)
    with pytest.raises(StoreError):
        edge._load_view(shard_dir)
    assert not version.exists()
