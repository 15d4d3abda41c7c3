"""Erasure: deleting documents (``delete``, a sync without them) leaves no trace of their text on disk in the
published version (the embedded engine copies a version to write it, so its new version must not carry the
deleted points' payloads or WAL records on), nor in the embedding cache, nor in a stale staged copy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from retrieval import Document
from retrieval.embedding_cache import text_hash
from retrieval.store import StoreError
from tests.conftest import TINY_DOCS
from tests.test_dagster_data_safety import _pipeline

MARKER = b"ZEBRA-SECRET-4711"
SECRET = Document(
    "secret-1",
    "The enzyme kinetics of ZEBRA-SECRET-4711 were measured in mice with a new assay.",
    title="Patient ZEBRA-SECRET-4711",
    metadata={"owner": "ZEBRA-SECRET-4711-owner"},
)


def holding(root: Path, marker: bytes = MARKER) -> list[str]:
    """The files under ``root`` whose bytes contain ``marker``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and marker in p.read_bytes())


def cached(stack, docs) -> dict[str, bool]:
    """For each chunk text of ``docs``: whether the stack's embedding cache holds a row of it."""
    texts = [c.embed_text for c in stack.indexer().chunk(docs)]
    with sqlite3.connect(stack.cache.path) as conn:
        held = {h for (h,) in conn.execute("SELECT hash FROM vectors")}
    return {t: text_hash(t) in held for t in texts}


@pytest.fixture
def secret_stack(indexed_stack):
    stack = indexed_stack("edge", [*TINY_DOCS, SECRET])
    yield stack
    stack.close()


def test_a_delete_leaves_no_trace_of_the_text_in_the_published_version(secret_stack):
    root = Path(secret_stack.settings.qdrant_path)
    assert holding(root)  # the marker is on disk before the delete (the check can see it)
    report = secret_stack.indexer().delete_documents([SECRET.id])
    assert report.documents == 1 and report.points == len(TINY_DOCS)
    assert holding(root) == []
    assert secret_stack.store().count() == len(TINY_DOCS)  # the other documents are all still there
    assert not any(cached(secret_stack, [SECRET]).values())  # nor is its embedding kept in the cache
    assert all(cached(secret_stack, TINY_DOCS).values())
    hits = secret_stack.retriever().search("valve gasket", k=3)
    assert hits and all(h.doc_id != SECRET.id for h in hits)


@pytest.mark.parametrize("how", ["delete", "sync"])
def test_a_stop_right_after_the_publish_leaves_no_cache_row_of_the_erased_text(secret_stack, monkeypatch, how):
    """SIGTERM/Ctrl-C (a KeyboardInterrupt in the CLI) landing just after the version without the document is
    published: its texts' cache rows are gone all the same (a rerun finds nothing left to delete, so it could not
    forget them later)."""
    indexer = secret_stack.indexer()
    publish = indexer.store.publish

    def publish_then_stop(*args, **kwargs):
        publish(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(indexer.store, "publish", publish_then_stop)
    with pytest.raises(KeyboardInterrupt):
        if how == "delete":
            indexer.delete_documents([SECRET.id])
        else:
            indexer.index(TINY_DOCS, prune=True, progress=False)
    assert secret_stack.store().count() == len(TINY_DOCS)  # published
    assert not any(cached(secret_stack, [SECRET]).values())
    assert all(cached(secret_stack, TINY_DOCS).values())


def test_a_sync_without_the_document_and_later_writes_leave_no_trace(secret_stack):
    root = Path(secret_stack.settings.qdrant_path)
    indexer = secret_stack.indexer()
    report = indexer.index(TINY_DOCS, prune=True, progress=False)
    assert report.deleted == 1
    assert holding(root) == []
    assert not any(cached(secret_stack, [SECRET]).values())
    assert all(cached(secret_stack, TINY_DOCS).values())
    indexer.index([Document("later", "A later document about zebrafish heart regeneration.")], progress=False)
    assert holding(root) == []
    assert secret_stack.store().count() == len(TINY_DOCS) + 1


def test_an_edit_that_removes_the_text_leaves_no_trace_of_the_old_text(secret_stack):
    """A document edited to remove a secret (same id, same number of chunks: its point is overwritten, none
    deleted): the old text leaves the disk and the cache as a deleted document's does."""
    root = Path(secret_stack.settings.qdrant_path)
    edited = Document(SECRET.id, "The enzyme kinetics of the compound were measured in mice with a new assay.")
    report = secret_stack.indexer().index([edited], progress=False)
    assert (report.written, report.deleted) == (1, 0)
    assert holding(root) == []
    assert not any(cached(secret_stack, [SECRET]).values())
    assert all(cached(secret_stack, [edited, *TINY_DOCS]).values())
    assert [h.doc_id for h in secret_stack.retriever().search("enzyme kinetics assay", k=1)] == [SECRET.id]


def test_a_delete_erases_the_documents_from_a_stale_staged_copy_too(indexed_stack):
    """Server path: a copy staged before a delete into the live collection is stale (never published) and holds
    the deleted document no longer."""
    stack = indexed_stack("server", [*TINY_DOCS, SECRET])
    store, indexer = stack.store(), stack.indexer()
    staged = indexer.sync(
        indexer.chunk([Document("new", "A staged document about pump seals.")]), progress=False, publish=False
    )
    copy = store.pinned(staged.version)
    assert SECRET.id in {doc_id for doc_id, _ in copy.stored_hashes().values()}
    indexer.delete_documents([SECRET.id])
    assert {doc_id for doc_id, _ in copy.stored_hashes().values()} == {d.id for d in TINY_DOCS} | {"new"}
    with pytest.raises(StoreError, match="written in place"):  # still stale: it misses the delete's version
        store.publish(copy)
    stack.close()


def test_a_failed_rewrite_leaves_the_published_version_and_a_rerun_erases(secret_stack, monkeypatch):
    import retrieval.store.edge as edge

    root = Path(secret_stack.settings.qdrant_path)

    def failing(shard):
        raise RuntimeError("injected: killed while rewriting")
        yield  # pragma: no cover - a generator, as _pages is

    monkeypatch.setattr(edge, "_pages", failing)
    with pytest.raises(RuntimeError, match="injected"):
        secret_stack.indexer().delete_documents([SECRET.id])
    assert secret_stack.store().current_version() == 1 and secret_stack.store().count() == len(TINY_DOCS) + 1
    assert not list(root.glob(f"*/{edge.SHARD_DIR}{edge.REWRITE_MARK}*"))  # the half-written shard is gone
    monkeypatch.undo()
    assert secret_stack.indexer().delete_documents([SECRET.id]).points == len(TINY_DOCS)
    assert holding(root) == []


def test_a_sync_killed_while_swapping_in_the_rewritten_shard_is_resumed(secret_stack, monkeypatch):
    """Killed between moving the old shard aside and moving the new one in: the re-run resumes the staged version
    (its shard moved back), writes it again and publishes it clean."""
    import retrieval.store.edge as edge

    root = Path(secret_stack.settings.qdrant_path)
    renames = []

    def rename(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise KeyboardInterrupt  # as a kill would stop it
        return edge.os.replace(src, dst)

    monkeypatch.setattr(edge.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        secret_stack.indexer().index(TINY_DOCS, prune=True, progress=False)
    monkeypatch.undo()
    assert list(root.glob(f"*/{edge.SHARD_DIR}{edge.REWRITE_MARK}{edge.OLD_MARK}*"))  # the old shard, moved aside
    report = secret_stack.indexer().index(TINY_DOCS, prune=True, progress=False)
    assert report.points == len(TINY_DOCS) and secret_stack.store().current_version() == report.version
    assert holding(root) == []


@pytest.mark.slow
def test_a_dagster_run_without_the_file_leaves_no_trace_of_it(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    for doc in [*TINY_DOCS[:5], SECRET]:
        (drop / f"{doc.id}.md").write_text(f"# {doc.title}\n{doc.text}")
    materialize, points = _pipeline(tmp_path, f"    source: {drop}\n    format: dir\n")
    assert materialize().success and points() == 6
    assert holding(tmp_path / "index")
    (drop / f"{SECRET.id}.md").unlink()
    assert materialize().success and points() == 5
    assert holding(tmp_path / "index") == []
