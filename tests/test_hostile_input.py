"""Hostile input cannot break a collection (exploratory report 9C): a version the engine cannot open again is never
published, one damaged collection does not stop `collections` listing the others, and a corpora file's paths are
strings. (Deep and oversized metadata are refused when documents are read: tests/test_documents.py.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from assets.corpora import CorpusConfigError, load_corpora
from orchestration.cli import app
from retrieval import Chunk
from retrieval.encoders.sparse import SparseVec
from retrieval.store import CollectionSchema, EdgeStore, StoreError

SCHEMA = CollectionSchema(dense_model="toy", dense_dim=4, sparse_model="bm25", sparse_idf=True)


def nested(levels: int, leaf="leaf"):
    for _ in range(levels):
        leaf = {"d": leaf}
    return leaf


def write(store: EdgeStore, version, doc_ids: list[str], metadata=None) -> None:
    """Upsert one chunk per document into ``version`` (a pinned store), bypassing document validation."""
    chunks = [Chunk(d, 0, f"text of {d}", "", metadata or {}) for d in doc_ids]
    dense = np.tile(np.asarray([[0.5, 0.5, 0.5, 0.5]], np.float32), (len(chunks), 1))
    version.upsert(chunks, dense, [SparseVec([1], [1.0]) for _ in chunks])
    version.flush()


def published_with(root: Path, name: str, doc_ids: list[str]) -> EdgeStore:
    store = EdgeStore(root, name)
    staged = store.stage(SCHEMA)
    try:
        write(store, staged, doc_ids)
        store.seal(staged)
        store.publish(staged)
    finally:
        staged.close()
    return store


@pytest.mark.parametrize("held", [True, False], ids=["writer-holds-it", "published-later"])
def test_a_version_the_engine_cannot_open_again_is_not_published(tmp_path, held):
    """r9C-1, defence in depth: the engine accepted a payload nested 130 levels but could not replay its WAL, and
    publishing it deleted the previous version. Now the staged version is loaded again first; readers keep theirs.
    ``held``: the writer still holds the staged version (Indexer), or it was closed first (Dagster's publish step)."""
    root = tmp_path / "index"
    store = published_with(root, "shared", ["a", "b"])
    staged = store.stage(SCHEMA, copy_current=True)
    write(store, staged, ["evil"], {"x": nested(130)})
    store.seal(staged)
    if not held:
        staged.close()
        staged = store.pinned(staged.version)
    with pytest.raises(
        StoreError, match=r"not publishing version 2 of 'shared' .*cannot open it again.*keep version 1"
    ):
        store.publish(staged)
    staged.close()
    store.close()
    reader = EdgeStore(root, "shared")  # a fresh process' view: the previous version, whole
    try:
        assert reader.current_version() == 1 and reader.count() == 2
    finally:
        reader.close()
    good = EdgeStore(root, "shared")  # the next write replaces the refused version and publishes
    staged = good.stage(SCHEMA, copy_current=True)
    try:
        write(good, staged, ["c"])
        good.seal(staged)
        good.publish(staged)
    finally:
        staged.close()
    assert good.current_version() == 3 and good.count() == 3
    good.close()
    assert not (root / "shared__v2").exists() and not (root / "shared__v1").exists()


def test_collections_lists_the_readable_ones_and_names_the_damaged_one(tmp_path, monkeypatch):
    """r9C-1: one unreadable collection made `collections` fail for every collection."""
    root = tmp_path / "index"
    published_with(root, "alpha", ["a", "b"]).close()
    damaged = published_with(root, "broken", ["a"])
    # what an earlier release let through: written into the published version in place
    write(damaged, damaged, ["evil"], {"x": nested(130)})
    damaged.close()
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(root))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["collections", "--json"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    rows = {row["collection"]: row for row in json.loads(result.stdout)}
    assert rows["alpha"]["points"] == 2 and "error" not in rows["alpha"]
    assert rows["broken"]["points"] is None and "broken__v1/shard" in rows["broken"]["error"]
    assert re.search(r"error: broken: cannot open embedded Qdrant data directory", result.output)
    table = CliRunner().invoke(app, ["collections"])
    assert table.exit_code == 2 and "alpha" in table.output and "error: broken:" in table.output


@pytest.mark.parametrize(
    ("source", "shown"),
    [("!!binary aGVsbG8=", "b'hello'"), ("2024", "2024"), ("[a, b]", "['a', 'b']"), ("{path: x}", "{'path': 'x'}")],
)
def test_a_corpus_source_that_is_not_a_string_is_refused_when_the_file_is_loaded(tmp_path, source, shown):
    """r9C observation: `source: !!binary aGVsbG8=` loaded, and a run failed on a path named "b'hello'"."""
    file = tmp_path / "corpora.yaml"
    file.write_text(f"corpora:\n  notes:\n    source: {source}\n    format: dir\n")
    message = f"{file}, line 2: corpus 'notes': 'source' must be a path (a string), got {shown}"
    with pytest.raises(CorpusConfigError, match=re.escape(message)):
        load_corpora(file).get("notes")  # when loaded; only the runs of that corpus fail
    file.write_text("corpora:\n  notes: {source: n, qrels: 7}\n  kb: {source: k, watch: 'no'}\n")
    with pytest.raises(CorpusConfigError, match=r"corpus 'notes': 'qrels' must be a path \(a string\), got 7"):
        load_corpora(file).get("notes")
    file.write_text("corpora:\n  kb: {source: k, watch: 'no'}\n")
    with pytest.raises(CorpusConfigError, match=r"corpus 'kb': 'watch' must be true or false \(unquoted\), got 'no'"):
        load_corpora(file).get("kb")
