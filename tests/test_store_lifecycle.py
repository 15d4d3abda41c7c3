"""The embedded engine's handles over a process' life: forked children open their own and leave the parent's
alone; closing a stack is final; a retriever's close leaves its stack's store open; an unclosed store lets go of
its version when garbage-collected. Real engine, real encoders, real ``os.fork`` and processes."""

from __future__ import annotations

import gc
import os
import pickle
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retrieval import Document, RetrievalStack
from retrieval.errors import ClosedError
from retrieval.store import EdgeStore, StoreError, edge
from tests.conftest import BACKENDS, LEXICAL_QUERY, TINY_DOCS
from tests.test_reliability_writes import edge_stack, holding

QUERY = LEXICAL_QUERY[0]
FORK_TIMEOUT_S = 60.0


def ids(hits: list) -> list[str]:
    return [h.chunk_id for h in hits]


def held(root: Path) -> list[str]:
    """The shard directories under ``root`` this process has open."""
    return [key for key in edge._open_shards if key.startswith(str(root.resolve()))]


def view_of(root: Path) -> Path | None:
    """The view through which this process reads the one version under ``root`` it has open."""
    (key,) = held(root)
    return edge._open_shards[key][2]


def in_forked_child(work: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", work())`` or ``("error", "<type>: <message>")``, run in a child made by ``os.fork``; a child still
    running after FORK_TIMEOUT_S (hung) is killed and the test fails."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read)
            try:
                result: tuple[str, Any] = ("ok", work())
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = ("error", f"{type(exc).__name__}: {exc}")
            with os.fdopen(write, "wb") as out:
                pickle.dump(result, out)
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + FORK_TIMEOUT_S
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            pytest.fail(f"the forked child did not finish within {FORK_TIMEOUT_S:.0f}s: it hung")
        time.sleep(0.05)
    with os.fdopen(read, "rb") as inp:
        data = inp.read()
    return pickle.loads(data) if data else ("error", "the child wrote no result")


def test_a_forked_child_searches_the_version_its_parent_searched(indexed_stack) -> None:
    """gunicorn --preload with a warm-up search, a fork pool: the child does not reuse the parent's shard (the
    engine's threads did not survive the fork) but opens its own, and the parent's stays usable."""
    stack = indexed_stack("edge", collection="forked")
    retriever = stack.retriever(rerank=False)
    encoded = retriever.encode([QUERY])  # the child tests the engine, not the encoder
    expected = ids(retriever.search(QUERY, k=5, encoded=encoded))  # the parent has the version open now
    assert expected and held(stack.store().root)

    assert in_forked_child(lambda: ids(retriever.search(QUERY, k=5, encoded=encoded))) == ("ok", expected)
    assert ids(retriever.search(QUERY, k=5, encoded=encoded)) == expected


@pytest.mark.slow
def test_a_forked_child_leaves_its_parents_view_and_lock_alone(tmp_path, dense_encoder, sparse_encoder) -> None:
    """Another process holds the version, so the parent reads it through its view (``views/<parent pid>-…``). A
    child that closes its stack and runs the exit handlers deletes neither that view nor releases its WAL lock,
    and the parent closes cleanly afterwards; an engine error at close is a StoreError."""
    root = tmp_path / "index"
    with edge_stack(root, dense_encoder, sparse_encoder) as writer:
        writer.indexer().index(TINY_DOCS, progress=False)
    with holding(root):
        stack = edge_stack(root, dense_encoder, sparse_encoder)
        retriever = stack.retriever(rerank=False)
        expected = ids(retriever.search(QUERY, k=5))
        view = view_of(root)
        assert view is not None and view.name.startswith(f"{os.getpid()}-")

        def close_and_exit() -> None:  # what a gunicorn worker's exit does: its hooks, then the exit handlers
            stack.close()
            edge._release_at_exit()

        assert in_forked_child(close_and_exit) == ("ok", None)
        assert view.is_dir() and edge._locked(view / "wal")
        assert ids(retriever.search(QUERY, k=5)) == expected
        stack.close()
        assert not view.exists() and not held(root)

        direct = EdgeStore(root, "test")  # its view deleted under it: the engine cannot close it cleanly
        assert direct.count() == len(TINY_DOCS)
        view = view_of(root)
        assert view is not None
        shutil.rmtree(view)
        with pytest.raises(StoreError, match="closing .* failed"):
            direct.close()
        assert not held(root)


def test_closing_a_retriever_leaves_its_stacks_store_open(indexed_stack) -> None:
    """A retriever per request, closed after it: the stack's store (and its other retrievers) go on with the
    shard they have open, not a shard loaded again; the closed retriever refuses to search."""
    stack = indexed_stack("edge", collection="per-request")
    shared = stack.retriever(rerank=False)
    expected = ids(shared.search(QUERY, k=3))
    (shard,) = [edge._open_shards[key][0] for key in held(stack.store().root)]
    closed = []
    for _ in range(3):
        retriever = stack.retriever(rerank=False)
        assert ids(retriever.search(QUERY, k=3)) == expected
        retriever.close()
        closed.append(retriever)
    assert [edge._open_shards[key][0] for key in held(stack.store().root)] == [shard]
    assert ids(shared.search(QUERY, k=3)) == expected
    with pytest.raises(ClosedError, match="retriever of collection 'per-request' is closed"):
        closed[0].search(QUERY)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_closed_stack_stays_closed(indexed_stack, backend: str) -> None:
    """After stack.close() its retrievers and the stack refuse, naming why; the embedded version is not opened
    again (it would stay held until the process exits, and another process could not delete it)."""
    stack = indexed_stack(backend, collection="closed")
    retriever = stack.retriever(rerank=False)
    assert retriever.search(QUERY, k=3)
    store = stack.store()
    stack.close()
    assert backend == "server" or not held(store.root)
    with pytest.raises(ClosedError, match="store is closed"):
        retriever.search(QUERY, k=3)
    with pytest.raises(ClosedError, match="RetrievalStack is closed"):
        stack.retriever()
    with pytest.raises(ClosedError, match="RetrievalStack is closed"):
        stack.indexer().index([Document("new", "a document after close")], progress=False)
    assert backend == "server" or not held(store.root)
    stack.close()  # closing again is harmless


def test_an_unclosed_stack_lets_go_of_its_version_when_collected(settings, dense_encoder, sparse_encoder) -> None:
    """A notebook cell run again rebinds its stack without close(): the dropped stack's version is let go of
    (the engine's WAL lock too, so another process may delete it), with a ResourceWarning."""
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    stack = RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder)
    assert stack.retriever(rerank=False).search(QUERY, k=3)
    (key,) = held(settings.qdrant_path)
    assert edge._locked(Path(key) / "wal")
    with pytest.warns(ResourceWarning, match="unclosed store of collection 'test'"):
        del stack
        gc.collect()
    assert not held(settings.qdrant_path) and not edge._locked(Path(key) / "wal")
