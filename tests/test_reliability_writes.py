"""Every write (index, sync, rebuild, delete) goes through one path: the collection's write lock (threads and
processes), a staged copy where the engine does not write in place, published at the end; a write that changes
nothing publishes nothing. Real engine, real encoders, a real reader process."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from retrieval import Document, RetrievalStack
from retrieval.store import EdgeStore, StoreError
from tests.conftest import BACKENDS, LEXICAL_QUERY, TINY_DOCS
from tests.test_reliability_versions import physical_names, settings_for, store_pair

REPO = Path(__file__).resolve().parents[1]
EXTRA = [Document(f"extra{i}", f"Maintenance note {i}: the QR-{1000 + i} pump needs a new seal.") for i in range(6)]
HOLD_OPEN = """
import sys
from retrieval.store import EdgeStore
store = EdgeStore(sys.argv[1], "test")
print("holding", store.count(), flush=True)  # the published version is open in this process now
sys.stdin.readline()
print("count at end", store.count(), flush=True)  # follows the pointer to the version published meanwhile
store.close()
"""


@contextmanager
def holding(root: Path) -> Iterator[subprocess.Popen]:
    """Another process (the holder) with the published version of ``root``'s collection ``test`` (TINY_DOCS) open:
    other processes read it through views. Killed on leaving."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OPEN, str(root)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().split() == ["holding", str(len(TINY_DOCS))]
        yield holder
    finally:
        holder.kill()
        holder.wait()


def edge_stack(root: Path, dense_encoder, sparse_encoder, **store_args) -> RetrievalStack:
    store = EdgeStore(root, "test", **store_args)
    return RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder)


@pytest.mark.slow
def test_delete_while_another_process_holds_the_collection(tmp_path, dense_encoder, sparse_encoder):
    """The reader process holds the published version, so this process reads it through a private view: the
    delete goes into a staged copy that is published, and the held version is not damaged."""
    root = tmp_path / "index"
    with edge_stack(root, dense_encoder, sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    with holding(root) as holder:
        direct = EdgeStore(root, "test")  # reads the held version through a view: writing there is refused
        with pytest.raises(StoreError, match="delete refused: another process has this version open"):
            direct.delete_documents(["moon"])
        direct.close()
        with edge_stack(root, dense_encoder, sparse_encoder) as stack:
            report = stack.indexer().delete_documents(["valve", "pasta", "not-there"])
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["count", "at", "end", str(len(TINY_DOCS) - 2)]
        assert holder.wait(timeout=60) == 0
    kept = [d for d in TINY_DOCS if d.id not in {"valve", "pasta"}]
    with edge_stack(root, dense_encoder, sparse_encoder) as fresh:
        store = fresh.store()
        assert store.count() == len(kept) and store.count({"doc_id": ["valve", "pasta"]}) == 0
        hits = fresh.retriever().search(LEXICAL_QUERY[0], k=len(TINY_DOCS), rerank=False)
        assert {h.doc_id for h in hits} == {d.id for d in kept} and all(h.text for h in hits)
        again = fresh.indexer().index(kept, prune=True, progress=False)  # reads every payload: none lost
        assert (again.embedded, again.deleted, again.version) == (0, 0, 2) and not again.changed
    assert (report.documents, report.deleted, report.points) == (2, 2, len(TINY_DOCS) - 2)
    assert report.missing == ["not-there"] and report.version == 2


def test_delete_from_another_thread_waits_for_a_running_index(tmp_path, dense_encoder, sparse_encoder):
    """A delete started while an index of the same collection runs in this process waits for its write lock,
    then lands in the version after the one the index published (not in the copy the index is writing)."""
    root = tmp_path / "index"
    stack = edge_stack(root, dense_encoder, sparse_encoder)
    indexer = stack.indexer()
    indexer.index(TINY_DOCS, progress=False)
    seen: dict = {}

    def delete() -> None:
        seen["report"] = stack.indexer().delete_documents(["valve"])

    def start_delete(block_no: int) -> None:  # the index holds the write lock here
        seen["thread"] = thread = threading.Thread(target=delete)
        thread.start()
        thread.join(timeout=1.0)
        seen["waited"] = thread.is_alive()

    indexer.after_batch = start_delete
    report = indexer.index(EXTRA, progress=False)
    seen["thread"].join(timeout=60)
    assert seen["waited"] and not seen["thread"].is_alive()
    assert report.version == 2 and seen["report"].version == 3 and seen["report"].deleted == 1
    stack.close()
    fresh = EdgeStore(root, "test")
    assert fresh.count({"doc_id": "valve"}) == 0 and fresh.count() == len(TINY_DOCS) + len(EXTRA) - 1
    fresh.close()


def test_write_lock_serialises_threads_and_times_out_clearly(tmp_path):
    store = EdgeStore(tmp_path, "test", lock_timeout_s=0.3)
    errors: list[Exception] = []

    def other_writer() -> None:
        try:
            with store.write_lock():
                pass
        except StoreError as exc:
            errors.append(exc)

    with store.write_lock(), store.write_lock():  # re-entrant in the thread that holds it
        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join(timeout=30)
    assert len(errors) == 1 and "being written by another thread of this process" in str(errors[0])
    thread = threading.Thread(target=other_writer)  # released: the next writer gets it
    thread.start()
    thread.join(timeout=30)
    assert len(errors) == 1


def test_a_collections_probe_of_the_write_lock_is_no_writer_to_wait_for(tmp_path, caplog):
    """``hybrid-rag collections`` asks whether a writer holds the lock with a shared flock of an instant
    (:func:`lock_held`): a writer that starts at that instant tried once, then warned that the previous writer
    (dead, named from the lock file) was writing and waited; with a short HYBRID_RAG_WRITE_LOCK_TIMEOUT_S it could
    fail naming it (247 of 2000 writes failed beside a probing loop). It tries again at once now, silently."""
    import fcntl
    import logging
    import os

    store = EdgeStore(tmp_path, "test", lock_timeout_s=30)
    lock = tmp_path / "test.write.lock"
    lock.write_text('{"pid": 4242, "host": "gone", "since": "2026-12-01T03:00:00Z"}')  # a finished writer's file
    fd = os.open(lock, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the probe, caught in the act
    threading.Timer(0.005, os.close, (fd,)).start()  # ... and let go of at once, as lock_held does
    with caplog.at_level(logging.INFO, logger="retrieval"), store.write_lock():
        assert store.write_in_progress()["pid"] == os.getpid()
    assert not [r for r in caplog.records if "being written" in r.getMessage()]


@pytest.mark.parametrize("backend", BACKENDS)
def test_delete_report_and_nothing_staged_for_unknown_ids(backend, tmp_path, dense_encoder, sparse_encoder):
    root = tmp_path / "index"
    writer, reader = store_pair(backend, root)
    stack = RetrievalStack(settings_for(root), store=writer, dense=dense_encoder, sparse=sparse_encoder)
    stack.indexer().index(TINY_DOCS, progress=False)
    before = physical_names(backend, root, writer)
    nothing = stack.indexer().delete_documents(["nope", "nope"])
    assert (nothing.documents, nothing.deleted, nothing.points, nothing.missing) == (0, 0, len(TINY_DOCS), ["nope"])
    assert nothing.version == 1 and physical_names(backend, root, writer) == before
    report = stack.indexer().delete_documents(["bees"])
    assert (report.documents, report.deleted, report.points) == (1, 1, len(TINY_DOCS) - 1)
    assert report.version == (2 if backend == "edge" else 1)  # the server writes in place
    assert reader.count() == len(TINY_DOCS) - 1 and reader.count({"doc_id": "bees"}) == 0
    stack.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_reindex_that_changes_nothing_publishes_nothing(backend, tmp_path, dense_encoder, sparse_encoder):
    root = tmp_path / "index"
    writer, reader = store_pair(backend, root)
    indexer = RetrievalStack(settings_for(root), store=writer, dense=dense_encoder, sparse=sparse_encoder).indexer()
    first = indexer.index(TINY_DOCS, progress=False)
    names = physical_names(backend, root, writer)
    again = indexer.index(TINY_DOCS, prune=True, progress=False)
    assert (again.changed, again.version, again.embedded, again.deleted) == (False, first.version, 0, 0)
    assert (again.unchanged, again.points) == (len(TINY_DOCS), len(TINY_DOCS))
    staged = indexer.sync(indexer.chunk(TINY_DOCS), publish=False, progress=False)  # the Dagster path
    assert (staged.changed, staged.version) == (False, first.version)
    with writer.write_lock():
        writer.publish(writer.pinned(staged.version))  # publishing the published version changes nothing
    assert physical_names(backend, root, writer) == names and reader.current_version() == first.version
    changed = indexer.index(EXTRA[:1], progress=False)
    assert changed.changed and changed.embedded == 1
    writer.close()
    reader.close()


def test_rebuild_reports_the_points_it_dropped(tmp_path, dense_encoder, sparse_encoder):
    with edge_stack(tmp_path / "index", dense_encoder, sparse_encoder) as stack:
        indexer = stack.indexer()
        indexer.index([*TINY_DOCS, *EXTRA], progress=False)
        report = indexer.rebuild(TINY_DOCS, progress=False)
        assert (report.deleted, report.points, report.version) == (len(EXTRA), len(TINY_DOCS), 2)
