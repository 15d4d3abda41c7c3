"""Rebuilds write a new collection version and switch readers atomically; nothing is lost on the way."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import retrieval.indexer as indexer_module
import retrieval.store.base as store_base
from retrieval import Document, Indexer, RetrievalSettings, RetrievalStack
from retrieval.encoders import Bm25Encoder, DenseEncoder
from retrieval.store import (
    CollectionSchema,
    EdgeStore,
    QdrantStore,
    SchemaMismatchError,
    ServerStore,
    StoreError,
    connect,
)
from tests.conftest import BACKENDS, LEXICAL_QUERY, TINY_DOCS

NEW_DOCS = [
    *TINY_DOCS,
    *(Document(f"extra{i}", f"Maintenance note {i}: the QR-{1000 + i} pump needs a new seal.") for i in range(23)),
]


def store_pair(backend: str, root: Path, version: int | None = None) -> tuple[QdrantStore, QdrantStore]:
    """Two stores on one collection (a writer's and a reader's), as two parts of one process would hold them."""
    if backend == "edge":
        return EdgeStore(root, "test", version=version), EdgeStore(root, "test")
    client = connect(":memory:")
    writer = ServerStore(client, "test", version=version, location=":memory:", backoff_s=0.0)
    return writer, ServerStore(client, "test", location=":memory:", owns_client=False)


def physical_names(backend: str, root: Path, store: QdrantStore) -> set[str]:
    if backend == "edge":
        return {p.name for p in root.iterdir() if p.is_dir()}
    assert isinstance(store, ServerStore)
    return {c.name for c in store.client.get_collections().collections}


def settings_for(root: Path, **updates) -> RetrievalSettings:
    base = RetrievalSettings(qdrant_path=root, cache_dir=root / "cache", collection="test", embedding_cache=False)
    return base.model_copy(update={"rerank": False, **updates})


def crash_after_two_blocks(block_no: int) -> None:
    """An ``Indexer.after_batch`` hook that fails the write after its second block."""
    if block_no == 1:
        raise RuntimeError("injected failure after two blocks")


def small_block_indexer(root: Path, store: QdrantStore, dense, sparse, monkeypatch, **updates) -> Indexer:
    """An indexer on ``store`` that encodes and writes 8 chunks at a time (so a write has several blocks to fail
    between, see :func:`crash_after_two_blocks`)."""
    monkeypatch.setattr(indexer_module, "ENCODE_BLOCK", 8)
    settings = settings_for(root, upsert_batch_size=8, **updates)
    return RetrievalStack(settings, store=store, dense=dense, sparse=sparse).indexer()


def failed_rebuild(root: Path, store: QdrantStore, dense, sparse, monkeypatch) -> Indexer:
    """The small-block indexer after indexing TINY_DOCS and a rebuild to NEW_DOCS that failed after two blocks
    (its hook removed: the next write goes through)."""
    indexer = small_block_indexer(root, store, dense, sparse, monkeypatch)
    indexer.index(TINY_DOCS, progress=False)
    indexer.after_batch = crash_after_two_blocks
    with pytest.raises(RuntimeError, match="injected"):
        indexer.rebuild(NEW_DOCS, progress=False)
    indexer.after_batch = None
    return indexer


class ProjectedEncoder(DenseEncoder):
    """The real model's vectors cut to their first ``dim`` components: stands in for another dense model."""

    def __init__(self, base: DenseEncoder, dim: int = 128):
        super().__init__(base.model_name, device=base.device, batch_size=base.batch_size)
        self.model_name = f"{base.model_name}-first{dim}"
        self.__dict__["model"] = base.model  # share the loaded model
        self.dim = dim

    @property
    def dimension(self) -> int:
        return self.dim

    def _encode(self, texts: list[str], prompt: str, show_progress: bool) -> np.ndarray:
        vectors = super()._encode(texts, prompt, show_progress)[:, : self.dim]
        return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)


class OtherSparse(Bm25Encoder):
    """Stands in for another sparse model."""

    name = "other-sparse"
    uses_idf_modifier = False


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rebuild_under_continuous_search_loses_nothing(backend, tmp_path, dense_encoder, sparse_encoder, monkeypatch):
    root = tmp_path / "index"
    writer, reader = store_pair(backend, root)
    settings = settings_for(root, upsert_batch_size=8)
    indexer = RetrievalStack(settings, store=writer, dense=dense_encoder, sparse=sparse_encoder).indexer()
    first = indexer.index(TINY_DOCS, progress=False)
    assert first.version == 1 and physical_names(backend, root, writer) >= {"test__v1"}
    retriever = RetrievalStack(settings, store=reader, dense=dense_encoder, sparse=sparse_encoder).retriever()

    searches, failures, stop = [0], [], threading.Event()

    def search_forever() -> None:
        while not stop.is_set():
            try:
                hits = retriever.search(LEXICAL_QUERY[0], k=3)
                if not hits or hits[0].doc_id != LEXICAL_QUERY[1]:
                    failures.append(f"search {searches[0]}: {[h.doc_id for h in hits]}")
            except Exception as exc:  # noqa: BLE001 - every failure is a finding here
                failures.append(f"search {searches[0]}: {type(exc).__name__}: {exc}")
            searches[0] += 1

    def searches_meanwhile(block_no: int) -> None:  # several searches land while the new version is half built
        seen = searches[0]
        wait_for(lambda: searches[0] >= seen + 2)

    thread = threading.Thread(target=search_forever, daemon=True)
    thread.start()
    try:
        wait_for(lambda: searches[0] >= 2)
        monkeypatch.setattr(indexer_module, "ENCODE_BLOCK", 8)
        indexer.after_batch = searches_meanwhile
        report = indexer.rebuild(NEW_DOCS, progress=False)
        indexer.after_batch = None
        switched_at = searches[0]
        wait_for(lambda: searches[0] >= switched_at + 3)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not failures, failures[:5]
    assert report.rebuilt and report.version == 2 and report.points == len(NEW_DOCS)
    assert reader.count() == writer.count() == len(NEW_DOCS)
    # the readers see the new version (23 near-identical notes: the exact match is in the fused top 3)
    assert "extra17" in [h.doc_id for h in retriever.search("QR-1017 pump seal", k=3)]
    names = physical_names(backend, root, writer)
    assert "test__v2" in names and "test__v1" not in names  # the old version is gone
    writer.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unversioned_collection_keeps_working_and_is_replaced_by_a_rebuild(
    backend, tmp_path, dense_encoder, sparse_encoder
):
    root = tmp_path / "index"
    legacy, store = store_pair(backend, root, version=0)  # version 0: the layout before versioning
    settings = settings_for(root)
    RetrievalStack(settings, store=legacy, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS[:5], progress=False
    )
    if backend == "edge":
        assert (root / "test" / "schema.json").exists() and not (root / "test.current.json").exists()
    assert store.current_version() == 0

    indexer = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    report = indexer.index(TINY_DOCS, progress=False)  # incremental: a server writes the collection in place, ...
    written = 0 if backend == "server" else 1  # ... the embedded engine a copy of it (readers may hold it)
    assert (report.version, report.embedded, report.unchanged) == (written, 3, 5)
    retriever = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).retriever()
    assert retriever.search(LEXICAL_QUERY[0], k=1)[0].doc_id == LEXICAL_QUERY[1]

    rebuilt = indexer.rebuild(NEW_DOCS, progress=False)
    assert rebuilt.version == written + 1 and store.current_version() == written + 1
    assert retriever.search("QR-1003 pump seal", k=1)[0].doc_id == "extra3"
    assert store.count() == len(NEW_DOCS)
    assert f"test__v{written + 1}" in physical_names(backend, root, store)
    if backend == "edge":
        legacy.close()  # its holder lets go: the unversioned directory is deleted now
        assert not (root / "test").exists()
    else:  # on a server "test" is now the alias
        assert "test" not in physical_names(backend, root, store)
        assert {a.alias_name: a.collection_name for a in store.client.get_aliases().aliases} == {"test": "test__v1"}
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_incremental_index_writes_into_the_current_version(backend, tmp_path, dense_encoder, sparse_encoder):
    root = tmp_path / "index"
    store, _ = store_pair(backend, root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    indexer.rebuild(TINY_DOCS[:4], progress=False)
    report = indexer.index(NEW_DOCS[-3:], progress=False)
    current = 2 if backend == "server" else 3  # the embedded engine writes a copy of the published version
    assert report.version == current and store.count() == 4 + 3
    assert physical_names(backend, root, store) & {"test__v1", "test__v2", "test__v3"} == {f"test__v{current}"}
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_rebuild_leaves_readers_alone_and_resumes(backend, tmp_path, dense_encoder, sparse_encoder, monkeypatch):
    root = tmp_path / "index"
    store, _ = store_pair(backend, root)
    indexer = failed_rebuild(root, store, dense_encoder, sparse_encoder, monkeypatch)
    assert store.current_version() == 1 and store.count() == len(TINY_DOCS)  # readers never saw the half-built one
    resumed = indexer.rebuild(NEW_DOCS, progress=False)
    assert (resumed.version, resumed.unchanged, resumed.embedded) == (2, 16, len(NEW_DOCS) - 16)
    assert store.count() == len(NEW_DOCS)
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_rebuild_never_resumes_a_refused_version(backend, tmp_path, dense_encoder, sparse_encoder):
    """A rebuild staged and left unpublished (refused by the gate) is complete, not unfinished: the next rebuild
    starts a fresh version with a new number instead of resuming it (version numbers only grow)."""
    root = tmp_path / "index"
    store, _ = store_pair(backend, root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    refused = indexer.sync(indexer.chunk(NEW_DOCS), rebuild=True, publish=False, progress=False)
    assert refused.version == 2 and store.current_version() == 1
    again = indexer.rebuild(NEW_DOCS, progress=False)
    assert (again.version, again.unchanged, again.embedded) == (3, 0, len(NEW_DOCS))  # written afresh
    assert store.current_version() == 3 and store.count() == len(NEW_DOCS)
    assert not {"test__v1", "test__v2"} & physical_names(backend, root, store)
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_dense_model_is_refused_or_rebuilt_into_a_new_version(backend, tmp_path, dense_encoder, sparse_encoder):
    root = tmp_path / "index"
    store, reader = store_pair(backend, root)
    settings = settings_for(root)
    RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS, progress=False
    )
    old_retriever = RetrievalStack(settings, store=reader, dense=dense_encoder, sparse=sparse_encoder).retriever()
    assert old_retriever.search(LEXICAL_QUERY[0], k=1)

    other = ProjectedEncoder(dense_encoder, dim=128)
    indexer = RetrievalStack(settings, store=store, dense=other, sparse=sparse_encoder).indexer()
    names_before = physical_names(backend, root, store)
    with pytest.raises(SchemaMismatchError, match=r"dense_dim: collection has 384, settings give 128.*rebuild"):
        indexer.index(TINY_DOCS[:2], progress=False)
    assert physical_names(backend, root, store) == names_before and store.count() == len(TINY_DOCS)

    report = indexer.rebuild(TINY_DOCS, progress=False)
    assert report.version == 2 and store.schema().dense_dim == 128
    with pytest.raises(SchemaMismatchError, match="dense_dim"):  # readers with the old model refuse, clearly
        old_retriever.search(LEXICAL_QUERY[0], k=1)
    new_retriever = RetrievalStack(settings, store=reader, dense=other, sparse=sparse_encoder).retriever()
    assert new_retriever.search(LEXICAL_QUERY[0], k=1)[0].doc_id == LEXICAL_QUERY[1]
    store.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_sparse_model_is_refused_or_rebuilt(backend, tmp_path, dense_encoder, sparse_encoder):
    root = tmp_path / "index"
    store, _ = store_pair(backend, root)
    settings = settings_for(root)
    RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS, progress=False
    )
    indexer = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=OtherSparse()).indexer()
    with pytest.raises(SchemaMismatchError, match="sparse_model: collection has 'bm25', settings give 'other-sparse'"):
        indexer.index(TINY_DOCS, progress=False)
    assert store.schema().sparse_model == "bm25"
    indexer.rebuild(TINY_DOCS, progress=False)
    assert store.schema().sparse_model == "other-sparse" and store.count() == len(TINY_DOCS)
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_drop_removes_every_version(backend, tmp_path, dense_encoder, sparse_encoder):
    root = tmp_path / "index"
    store, _ = store_pair(backend, root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS[:2], progress=False)
    indexer.rebuild(TINY_DOCS[:3], progress=False)
    store.drop()
    assert store.schema() is None and store.current_version() is None
    if backend == "edge":
        assert [p.name for p in root.iterdir() if p.name.startswith("test")] == ["test.write.lock"]
    else:
        assert not physical_names(backend, root, store) and not store.client.get_aliases().aliases
    store.close()


def test_dropped_version_held_by_a_reader_is_kept_until_it_follows_the_next_version(
    tmp_path, dense_encoder, sparse_encoder
):
    root = tmp_path / "index"
    writer, reader = store_pair("edge", root)
    settings = settings_for(root)
    indexer = RetrievalStack(settings, store=writer, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    retriever = RetrievalStack(settings, store=reader, dense=dense_encoder, sparse=sparse_encoder).retriever()
    assert retriever.search(LEXICAL_QUERY[0], k=1)
    writer.drop()
    assert (root / "test__v1").is_dir()  # the reader still holds it ...
    assert retriever.search(LEXICAL_QUERY[0], k=1)[0].doc_id == LEXICAL_QUERY[1]  # ... and keeps answering
    report = indexer.index(TINY_DOCS[:3], progress=False)  # a new collection: a new version
    assert report.version == 2
    assert {h.doc_id for h in retriever.search(LEXICAL_QUERY[0], k=8)} == {"valve", "pasta", "moon"}  # followed
    assert not (root / "test__v1").exists()  # the reader left the dropped version last: it is gone
    reader.close()
    writer.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_staged_version_is_invisible_until_published(backend, tmp_path, dense_encoder, sparse_encoder):
    """The asset graph's flow: stage a copy with the changes, score it (pinned store), then publish it."""
    root = tmp_path / "index"
    writer, reader = store_pair(backend, root)
    settings = settings_for(root)
    indexer = RetrievalStack(settings, store=writer, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    retriever = RetrievalStack(settings, store=reader, dense=dense_encoder, sparse=sparse_encoder).retriever()
    before = [h.chunk_id for h in retriever.search(LEXICAL_QUERY[0], k=3)]

    changed = [d for d in NEW_DOCS if d.id != "valve"]
    report = indexer.sync(indexer.chunk(changed), prune=True, progress=False, publish=False)
    assert report.version == 2 and (report.embedded, report.deleted) == (len(NEW_DOCS) - len(TINY_DOCS), 1)
    assert reader.current_version() == 1 and reader.count() == len(TINY_DOCS)  # readers: the published version
    assert [h.chunk_id for h in retriever.search(LEXICAL_QUERY[0], k=3)] == before
    staged = writer.pinned(2)
    assert staged.count() == len(changed)  # the staged copy holds the changes
    with writer.write_lock():
        writer.publish(staged)
    staged.close()
    assert retriever.search(LEXICAL_QUERY[0], k=1)[0].doc_id != "valve" and reader.count() == len(changed)
    assert "test__v1" not in physical_names(backend, root, writer)
    with pytest.raises(StoreError, match="version 2 was published after it"):
        writer.publish(writer.pinned(1))
    writer.close()
    reader.close()


def test_server_writers_of_one_process_are_serialised() -> None:
    """Qdrant has no lock primitive: the server backend serialises the writers of one process (threads wait, or
    fail clearly after the timeout; re-entrant in one thread), per server and collection; not processes."""
    client = connect(":memory:")
    a, b, other = (ServerStore(client, name, location=":memory:", owns_client=False) for name in ("test", "test", "x"))
    order: list[str] = []
    held, release = threading.Event(), threading.Event()

    def first() -> None:
        with a.write_lock():
            held.set()
            release.wait(30)
            order.append("first")

    def second() -> None:
        with b.write_lock(timeout_s=30):
            order.append("second")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert held.wait(30)
    busy = "'test' at :memory: is being written by another thread of this process"
    with pytest.raises(StoreError, match=busy), b.write_lock(timeout_s=0.1):
        pass
    with other.write_lock(timeout_s=0.1):  # another collection is not held
        pass
    threads[1].start()
    release.set()
    for t in threads:
        t.join(30)
    assert order == ["first", "second"]
    with a.write_lock(), b.write_lock(timeout_s=0):  # re-entrant in one thread (a sync inside a publish)
        pass
    client.close()


HOLD_WRITE_LOCK = """
import sys, time
from retrieval.store import EdgeStore
with EdgeStore(sys.argv[1], "test").write_lock():
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.slow
def test_concurrent_writers_are_serialised_with_a_clear_message(tmp_path, dense_encoder, sparse_encoder):
    import subprocess
    import sys

    root = tmp_path / "index"
    repo = Path(__file__).resolve().parents[1]

    def holder(seconds: float) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD_WRITE_LOCK, str(root), str(seconds)],
            cwd=repo,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "locked"
        return proc

    impatient = RetrievalStack(
        settings_for(root),
        store=EdgeStore(root, "test", lock_timeout_s=0.5),
        dense=dense_encoder,
        sparse=sparse_encoder,
    ).indexer()
    proc = holder(60)
    try:
        with pytest.raises(
            StoreError, match=rf"'test' at {root} is being written by another process \(pid {proc.pid} "
        ):
            impatient.index(TINY_DOCS, progress=False)
        assert not (root / "test.current.json").exists()  # it wrote nothing
    finally:
        proc.kill()
        proc.wait()
    patient = RetrievalStack(
        settings_for(root), store=EdgeStore(root, "test"), dense=dense_encoder, sparse=sparse_encoder
    ).indexer()
    proc = holder(1.5)  # the second writer waits for the first one, then writes
    report = patient.index(TINY_DOCS, progress=False)
    assert proc.wait(timeout=30) == 0 and report.version == 1 and patient.store.count() == len(TINY_DOCS)
    patient.store.close()
    impatient.store.close()


def with_prompt(dense: DenseEncoder, prompt: str) -> DenseEncoder:
    """The session's model with another document prompt (the loaded model shared)."""
    other = copy.copy(dense)
    other.document_prompt = prompt
    return other


# (what changes, the settings of the stack, its encoders given the session's): each changes the stored vectors
INDEX_TIME_CHANGES = {
    "bm25": (
        {"bm25_k1": 3.0, "bm25_b": 0.1},
        lambda d, s: (d, Bm25Encoder(k1=3.0, b=0.1)),
        "bm25_k1: collection has 1.2",
    ),
    "prompt": ({}, lambda d, s: (with_prompt(d, "passage: "), s), "document_prompt: collection has '', settings give"),
    "chunks": ({"chunk_tokens": 48, "chunk_overlap": 8}, lambda d, s: (d, s), "chunk_tokens: collection has 256"),
    "whitespace": ({"chunk_at_whitespace": True}, lambda d, s: (d, s), "chunk_at_whitespace: collection has False"),
}


@pytest.mark.parametrize("change", INDEX_TIME_CHANGES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_other_index_time_settings_are_refused_or_rebuilt_never_mixed(
    backend, change, tmp_path, dense_encoder, sparse_encoder
):
    root = tmp_path / "index"
    store, reader = store_pair(backend, root)
    RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS, progress=False
    )
    updates, encoders, message = INDEX_TIME_CHANGES[change]
    dense, sparse = encoders(dense_encoder, sparse_encoder)
    stack = RetrievalStack(settings_for(root, **updates), store=store, dense=dense, sparse=sparse)
    edited = [Document(d.id, d.text + " Edited.", title=d.title, metadata=d.metadata) for d in TINY_DOCS[:1]]
    before = store.stored_hashes()
    for write in (
        lambda: stack.indexer().index(TINY_DOCS, prune=True, progress=False),
        lambda: stack.indexer().index(edited, progress=False),
    ):
        with pytest.raises(SchemaMismatchError, match=rf"other index-time settings \({message}.*--rebuild"):
            write()
    assert store.stored_hashes() == before and store.current_version() == 1  # nothing written
    reader_stack = RetrievalStack(settings_for(root, **updates), store=reader, dense=dense, sparse=sparse)
    assert reader_stack.retriever().search(LEXICAL_QUERY[0], k=1)  # searching with other settings stays free

    report = stack.indexer().rebuild(TINY_DOCS, progress=False)
    assert report.unchanged == 0 and report.embedded == report.chunks  # everything re-encoded
    recorded = store.schema()
    assert (recorded.bm25_k1, recorded.bm25_b, recorded.document_prompt, recorded.chunk_tokens) == (
        sparse.k1,
        sparse.b,
        dense.document_prompt,
        stack.settings.chunk_tokens,
    )
    assert recorded.chunk_at_whitespace is stack.settings.chunk_at_whitespace
    assert stack.indexer().index(edited, progress=False).embedded >= 1  # and the new settings write freely
    store.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_rebuild_is_resumed_only_with_the_same_settings(
    backend, tmp_path, dense_encoder, sparse_encoder, monkeypatch
):
    root = tmp_path / "index"
    store, _ = store_pair(backend, root)
    failed_rebuild(root, store, dense_encoder, sparse_encoder, monkeypatch)
    other = RetrievalStack(
        settings_for(root, upsert_batch_size=8, bm25_k1=3.0, bm25_b=0.1),
        store=store,
        dense=dense_encoder,
        sparse=Bm25Encoder(k1=3.0, b=0.1),
    ).indexer()
    report = other.rebuild(NEW_DOCS, progress=False)  # the half-built copy has the old BM25: not resumed
    assert (report.unchanged, report.embedded) == (0, len(NEW_DOCS))
    assert store.schema().bm25_k1 == 3.0 and store.count() == len(NEW_DOCS)
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_collection_that_does_not_record_its_settings_keeps_working(
    backend, tmp_path, dense_encoder, sparse_encoder, caplog, monkeypatch
):
    """A collection made before the encoding settings were recorded: writes go on (one warning), never a rebuild."""
    root = tmp_path / "index"
    store, _ = store_pair(backend, root)
    stack = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder)
    full = stack.schema()
    old = CollectionSchema(full.dense_model, full.dense_dim, full.sparse_model, full.sparse_idf)
    store.ensure(old)  # as an older release wrote it
    monkeypatch.setattr(store_base, "_warned_unrecorded", set())
    with caplog.at_level("WARNING", logger="retrieval.store.base"):
        stack.indexer().index(TINY_DOCS[:3], progress=False)
        stack.indexer().index(TINY_DOCS[3:], progress=False)  # a copy of the published version: nothing lost
    [warning] = [r.getMessage() for r in caplog.records if "does not record" in r.getMessage()]  # once
    assert "document_prompt, bm25_k1, bm25_b, bm25_avg_len, chunk_tokens, chunk_overlap" in warning
    assert store.count() == len(TINY_DOCS) and store.schema() == old
    assert stack.retriever().search(LEXICAL_QUERY[0], k=1)[0].doc_id == LEXICAL_QUERY[1]
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_bundled_model_under_its_other_name_is_the_same_model(backend, tmp_path, dense_encoder, sparse_encoder):
    root = tmp_path / "index"
    store, reader = store_pair(backend, root)
    RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS[:3], progress=False
    )
    assert dense_encoder.model_name == "sentence-transformers/all-MiniLM-L6-v2"
    short = copy.copy(dense_encoder)
    short.model_name = "all-MiniLM-L6-v2"
    stack = RetrievalStack(
        settings_for(root, dense_model="all-MiniLM-L6-v2"), store=store, dense=short, sparse=sparse_encoder
    )
    stack.indexer().index(TINY_DOCS[3:], progress=False)  # written into a copy of the collection: nothing lost
    assert store.count() == len(TINY_DOCS)
    reading = RetrievalStack(settings_for(root), store=reader, dense=short, sparse=sparse_encoder).retriever()
    assert reading.search(LEXICAL_QUERY[0], k=1)[0].doc_id == LEXICAL_QUERY[1]
    store.close()
    reader.close()


def test_a_model_folder_by_relative_or_absolute_path_is_one_model(tmp_path, monkeypatch):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    relative = CollectionSchema("models/mine", 384, "bm25", True)
    absolute = CollectionSchema(str(tmp_path / "models" / "mine"), 384, "bm25", True)
    assert relative.differences(absolute) == []
    assert CollectionSchema("models/other", 384, "bm25", True).differences(absolute)
