"""Interrupted and damaged state of a collection's versions: a failed write's staged copy is resumed only by the
same write, a lost or damaged version pointer never costs the intact versions, and a full disk fails in one line
and leaves no copy behind."""

from __future__ import annotations

import pytest

import retrieval.indexer as indexer_module
from retrieval import Document, RetrievalStack
from tests.conftest import TINY_DOCS
from tests.test_reliability_versions import NEW_DOCS, settings_for, store_pair

OTHER_DOCS = [Document("unrelated", "The red planet Mars has two small moons, Phobos and Deimos.")]


def doc_ids(store) -> set[str]:
    return {doc_id for doc_id, _ in store.stored_hashes().values()}


def crash_after_two_blocks(block_no: int) -> None:
    if block_no == 1:
        raise RuntimeError("injected failure after two blocks")


# A server writes an incremental index into the live collection (batch by batch, no staged copy): not staged here.
STAGED_WRITES = [("edge", False), ("edge", True), ("server", True)]


@pytest.mark.parametrize(("backend", "first"), STAGED_WRITES, ids=["edge-incremental", "edge-first", "server-first"])
def test_another_write_never_publishes_a_failed_writes_half_written_copy(
    backend, first, tmp_path, dense_encoder, sparse_encoder, monkeypatch
):
    """An index of other documents after a failed one starts from the published version (or from nothing, for a
    first build): the failed write's documents never reach readers; the same write repeated still resumes."""
    root = tmp_path / "index"
    store, reader = store_pair(backend, root)
    indexer = RetrievalStack(
        settings_for(root, upsert_batch_size=8), store=store, dense=dense_encoder, sparse=sparse_encoder
    ).indexer()
    base = [] if first else TINY_DOCS[:2]
    if base:
        indexer.index(base, progress=False)
    monkeypatch.setattr(indexer_module, "ENCODE_BLOCK", 8)
    indexer.after_batch = crash_after_two_blocks
    with pytest.raises(RuntimeError, match="injected"):
        indexer.index(NEW_DOCS, progress=False)
    indexer.after_batch = None
    other = indexer.index(OTHER_DOCS, progress=False)
    expected = {d.id for d in [*base, *OTHER_DOCS]}
    assert doc_ids(reader) == expected and other.points == len(expected)
    assert reader.current_version() == other.version

    indexer.after_batch = crash_after_two_blocks  # the same write, failed and run again, resumes its own copy
    with pytest.raises(RuntimeError, match="injected"):
        indexer.index(NEW_DOCS, progress=False)
    indexer.after_batch = None
    resumed = indexer.index(NEW_DOCS, progress=False)
    assert resumed.unchanged >= 16 and doc_ids(reader) == expected | {d.id for d in NEW_DOCS}
    store.close()
    reader.close()
