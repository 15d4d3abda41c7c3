"""Interrupted and damaged state of a collection's versions: a failed write's staged copy is resumed only by the
same write, a lost or damaged version pointer never costs the intact versions, and a full disk fails in one line
and leaves no copy behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from qdrant_client import models as qm

import retrieval.indexer as indexer_module
import retrieval.store.edge as edge
from retrieval import Document, RetrievalStack
from retrieval.store import EdgeStore, StoreError, collection_names
from tests.conftest import BACKENDS, TINY_DOCS
from tests.test_reliability_versions import NEW_DOCS, crash_after_two_blocks, settings_for, store_pair
from tests.test_server_path import cli, write_docs  # noqa: F401 - cli is a fixture

OTHER_DOCS = [Document("unrelated", "The red planet Mars has two small moons, Phobos and Deimos.")]


def doc_ids(store) -> set[str]:
    return {doc_id for doc_id, _ in store.stored_hashes().values()}


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


def two_versions(backend, tmp_path, dense_encoder, sparse_encoder):
    """A collection after a first build and an incremental index (version 2; 1 on a server, written in place)."""
    root = tmp_path / "index"
    store, reader = store_pair(backend, root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS[:2], progress=False)
    indexer.index(TINY_DOCS, progress=False)
    assert store.current_version() == (2 if backend == "edge" else 1)
    return root, store, reader, indexer


def lose_pointer(backend, root, store, damage: str) -> None:
    if backend == "server":
        store.client.update_collection_aliases(
            change_aliases_operations=[qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name="test"))]
        )
        return
    pointer = root / "test.current.json"
    if damage == "missing":
        pointer.unlink()
    else:
        pointer.write_text({"empty": "", "absent": json.dumps({"version": 7})}[damage])


@pytest.mark.parametrize(
    ("backend", "damage"), [("edge", "missing"), ("edge", "empty"), ("edge", "absent"), ("server", "missing")]
)
def test_a_lost_or_damaged_pointer_never_costs_the_intact_version(
    backend, damage, tmp_path, dense_encoder, sparse_encoder
):
    """No pointer (or alias), an unreadable one, or one naming an absent version: writes refuse with a message
    naming the intact version and how to restore it, and the version is kept; restoring it as told works."""
    root, store, reader, indexer = two_versions(backend, tmp_path, dense_encoder, sparse_encoder)
    version = store.current_version()
    lose_pointer(backend, root, store, damage)
    hint = json.dumps({"version": version}) if backend == "edge" else f"test__v{version}"
    with pytest.raises(StoreError, match="pointer") as refused:
        indexer.index(OTHER_DOCS, progress=False)
    assert hint in str(refused.value)
    fresh = EdgeStore(root, "test") if backend == "edge" else reader
    with pytest.raises(StoreError, match="pointer"):  # readers are told the same, not "index documents first"
        fresh.schema()
    assert doc_ids(store.pinned(version)) == {d.id for d in TINY_DOCS}  # the intact version is still there
    if backend == "edge":
        (root / "test.current.json").write_text(hint)
    else:
        store.client.update_collection_aliases(
            change_aliases_operations=[
                qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=hint, alias_name="test"))
            ]
        )
    indexer.index(OTHER_DOCS, progress=False)
    assert doc_ids(reader) == {d.id for d in [*TINY_DOCS, *OTHER_DOCS]}
    store.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("marker", [{"base": None, "complete": True}, {"rebuild": True, "complete": True}])
def test_a_version_an_earlier_release_built_is_intact_when_its_pointer_is_lost(
    backend, marker, tmp_path, dense_encoder, sparse_encoder
):
    """A first build or rebuild published by the previous release records neither the write's fingerprint nor
    ``published``: a lost pointer must not make it an abandoned staging (the next write deleted it)."""
    root = tmp_path / "index"
    store, reader = store_pair(backend, root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    store._set_stage_info(1, marker)  # as the previous release recorded it
    lose_pointer(backend, root, store, "missing")
    with pytest.raises(StoreError, match="pointer") as refused:
        indexer.index(OTHER_DOCS, progress=False)
    assert "earlier release" in str(refused.value)
    assert doc_ids(store.pinned(1)) == {d.id for d in TINY_DOCS}
    store.close()
    reader.close()


def test_a_reader_whose_pointer_is_lost_keeps_its_version_and_says_how_to_repair(
    tmp_path, dense_encoder, sparse_encoder, caplog
):
    """A long-lived reader goes on serving the version it holds when the pointer is lost or unreadable, and warns
    once with the repair (it warned on every search that the collection 'looks damaged', or failed every search)."""
    root, store, reader, _ = two_versions("edge", tmp_path, dense_encoder, sparse_encoder)
    retriever = RetrievalStack(settings_for(root), store=reader, dense=dense_encoder, sparse=sparse_encoder).retriever()
    assert retriever.search("valve gasket", k=2)
    pointer = root / "test.current.json"
    for damage in ("missing", "empty"):
        lose_pointer("edge", root, store, damage)
        caplog.clear()
        with caplog.at_level("WARNING", logger="retrieval.store.edge"):
            for _ in range(3):
                assert [h.doc_id for h in retriever.search("valve gasket", k=2)][0] == "valve"
        warnings = [r.getMessage() for r in caplog.records]
        assert len(warnings) == 1 and '{"version": 2}' in warnings[0] and "damaged" not in warnings[0], warnings
        pointer.write_text(json.dumps({"version": 2}))
    store.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_first_build_is_not_taken_for_a_lost_pointer(backend, tmp_path, dense_encoder, sparse_encoder):
    """A first build staged and left unpublished (refused by the gate) has no pointer either: the next write
    replaces it rather than refusing."""
    root = tmp_path / "index"
    store, reader = store_pair(backend, root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    refused = indexer.sync(indexer.chunk(TINY_DOCS), prune=True, publish=False, progress=False)
    assert refused.version == 1 and reader.current_version() is None
    again = indexer.index(OTHER_DOCS, progress=False)
    assert again.version == 2 and doc_ids(reader) == {"unrelated"}
    store.close()
    reader.close()


def test_cli_names_a_lost_pointer_and_keeps_the_version(cli, tmp_path):  # noqa: F811 - the cli fixture
    """r8/r7: `collections`, `search` and `index` say the pointer is lost and how to restore it; nothing is deleted."""
    docs = write_docs(tmp_path / "docs.jsonl", TINY_DOCS[:2])
    assert cli("index", docs, "-c", "lost")[0] == 0
    assert cli("index", write_docs(tmp_path / "more.jsonl", TINY_DOCS), "-c", "lost")[0] == 0
    index = tmp_path / "data/index"
    (index / "lost.current.json").unlink()
    for args in (("collections",), ("search", "valve gasket", "-c", "lost"), ("index", docs, "-c", "lost")):
        code, out = cli(*args)
        assert code == 2 and "pointer" in out and '{"version": 2}' in out, (args, out)
    assert (index / "lost__v2" / "schema.json").is_file()


STAGE_UNDER_LIMIT = """
import json, resource, sys
from retrieval.store import EdgeStore, StoreError, collection_names
root, name, copy, limit = sys.argv[1], sys.argv[2], sys.argv[3] == "copy", int(sys.argv[4])
store = EdgeStore(root, name)
schema = EdgeStore(root, "test").schema()
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # the test's stand-in for a full disk: EFBIG
try:
    print(json.dumps({"staged": store.stage(schema, copy_current=copy).version}))
except StoreError as exc:
    print(json.dumps({"error": str(exc)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("write", ["copy", "first_build"])
def test_a_full_disk_fails_in_one_line_and_leaves_no_copy(write, tmp_path, dense_encoder, sparse_encoder):
    """r9: staging under a file size limit (EFBIG, as a full disk gives ENOSPC) names the disk problem and the
    path, and removes its temporary copy; the published version is untouched."""
    root, store, reader, _ = two_versions("edge", tmp_path, dense_encoder, sparse_encoder)
    store.close()
    name = "test" if write == "copy" else "fresh"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    run = subprocess.run(
        [sys.executable, "-c", STAGE_UNDER_LIMIT, str(root), name, write, str(1 << 20)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    error = json.loads(run.stdout)["error"]
    assert "file size limit" in error.lower() or "File too large" in error
    assert "EFBIG" in error and str(root) in error and "damaged" not in error
    assert not list(root.glob("*.copy-*"))  # the failed copy is gone
    assert reader.current_version() == 2 and doc_ids(reader) == {d.id for d in TINY_DOCS}
    reader.close()


def test_a_killed_copys_leftover_is_no_collection_and_the_next_write_removes_it(
    tmp_path, dense_encoder, sparse_encoder
):
    root, store, reader, indexer = two_versions("edge", tmp_path, dense_encoder, sparse_encoder)
    leftover = root / "test__v3.copy-0123abcd"  # what a write killed during its copy leaves
    shutil.copytree(root / "test__v2", leftover)
    assert collection_names(settings_for(root)) == ["test"]
    indexer.index(OTHER_DOCS, progress=False)
    assert not leftover.exists() and doc_ids(reader) == {d.id for d in [*TINY_DOCS, *OTHER_DOCS]}
    store.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_qdrant_index_assets_rerun_resumes_its_staged_copy(
    backend, tmp_path, dense_encoder, sparse_encoder, monkeypatch
):
    """The `qdrant_index` asset's call (its own vectors, prune, publish=False) run again after a failure with the
    same input resumes the failed run's staged copy instead of embedding and writing everything again."""
    root, store, reader, indexer = two_versions(backend, tmp_path, dense_encoder, sparse_encoder)
    chunks = indexer.chunk(NEW_DOCS)
    vectors = (indexer.encode_dense(chunks)[0], indexer.encode_sparse(chunks))
    monkeypatch.setattr(indexer_module, "ENCODE_BLOCK", 8)
    settings = settings_for(root).model_copy(update={"upsert_batch_size": 8})
    indexer = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.after_batch = crash_after_two_blocks
    with pytest.raises(RuntimeError, match="injected"):
        indexer.sync(chunks, vectors=vectors, prune=True, publish=False, progress=False)
    indexer.after_batch = None
    again = indexer.sync(chunks, vectors=vectors, prune=True, publish=False, progress=False)
    new = len(NEW_DOCS) - len(TINY_DOCS)
    assert again.embedded < new and again.unchanged > len(TINY_DOCS)  # resumed: the first blocks are not rewritten
    assert doc_ids(store.pinned(again.version)) == {d.id for d in NEW_DOCS}
    store.close()
    reader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_qdrant_index_assets_rerun_reuses_its_complete_staged_version(
    backend, tmp_path, dense_encoder, sparse_encoder
):
    """A run stopped after `qdrant_index` staged its version (complete, not published), then run again with the same
    chunks: that version is taken as it is (nothing written); another write does not take it, nor does a publishing
    write of the same chunks (the CLI: it would publish without the gate that staged writes wait for)."""
    root, store, reader, indexer = two_versions(backend, tmp_path, dense_encoder, sparse_encoder)
    chunks = indexer.chunk(NEW_DOCS)
    vectors = (indexer.encode_dense(chunks)[0], indexer.encode_sparse(chunks))
    staged = indexer.sync(chunks, vectors=vectors, prune=True, publish=False, progress=False)
    again = indexer.sync(chunks, vectors=vectors, prune=True, publish=False, progress=False)
    assert staged.written == len(NEW_DOCS) - len(TINY_DOCS)
    assert (again.version, again.written, again.deleted) == (staged.version, 0, 0)  # old: a new version, 23 written
    assert again.reused_staged and not staged.reused_staged
    assert again.unchanged == again.points == len(chunks) and doc_ids(store.pinned(again.version)) == {
        d.id for d in NEW_DOCS
    }
    fewer = (chunks[1:], (vectors[0][1:], vectors[1][1:]))  # another write
    other = indexer.sync(fewer[0], vectors=fewer[1], prune=True, publish=False, progress=False)
    assert other.version == staged.version + 1 and not other.reused_staged
    published = indexer.sync(fewer[0], vectors=fewer[1], prune=True, progress=False)  # the same, publishing
    assert published.version not in (staged.version, other.version) and not published.reused_staged
    assert doc_ids(reader) == {c.doc_id for c in fewer[0]}
    store.close()
    reader.close()


@pytest.mark.parametrize("write", ["copy", "first_build"])
def test_a_write_the_filesystem_has_no_room_for_is_refused_before_staging(
    write, tmp_path, monkeypatch, dense_encoder, sparse_encoder
):
    """The engine writes through memory maps: a filesystem that runs out of blocks under them kills the process with
    SIGBUS (tmpfs, 20 MiB free). A write checks the free space first and refuses in one line with both figures."""
    root, store, reader, _ = two_versions("edge", tmp_path, dense_encoder, sparse_encoder)
    store.close()
    monkeypatch.setattr(edge, "STAGE_FREE_MARGIN", shutil.disk_usage(root).total, raising=False)  # > free
    name = "test" if write == "copy" else "fresh"
    schema = reader.schema()
    with pytest.raises(StoreError) as raised:
        EdgeStore(root, name).stage(schema, copy_current=write == "copy")
    error = str(raised.value)
    assert f"not enough free space on the filesystem of {root} to write collection {name!r}" in error
    assert "MiB free" in error and "SIGBUS" in error and "nothing was changed" in error
    assert ("a copy of test__v2" in error) == (write == "copy")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test__v2"]  # nothing staged
    assert reader.current_version() == 2 and doc_ids(reader) == {d.id for d in TINY_DOCS}
    reader.close()
