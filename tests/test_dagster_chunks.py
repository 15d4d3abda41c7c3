"""The ``chunks`` asset chunks only the documents changed since its previous materialization, and its table is the
one chunking every document gives, row for row. Real Dagster runs of ``raw_documents`` and ``chunks`` on a copy
of the sample corpus, the real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from assets import chunks, raw_documents
from assets.ingest import tokenizer_of
from assets.resources import CorporaResource, RetrievalResource
from assets.tables import MODEL_KEY, chunks_to_table, table_model, table_to_chunks
from retrieval import Chunk, read_documents
from retrieval.chunking import Chunker
from retrieval.indexer import DocumentChunk
from tests.test_dagster_pipeline import Sandbox
from tests.test_dagster_versions import PARTITION, corpus_copy, read_docs, write_docs


class ChunkRuns:
    """Runs of ``raw_documents`` and ``chunks`` of one partition on one instance, counting the documents cut."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch):
        self.sandbox = Sandbox(root)
        self.data, self.corpora = corpus_copy(root, "chunked")
        self.instance = dg.DagsterInstance.ephemeral()
        self.cut: list[str] = []
        cut = Chunker.chunk

        def counted(chunker: Chunker, doc):
            self.cut.append(doc.id)
            return cut(chunker, doc)

        monkeypatch.setattr(Chunker, "chunk", counted)

    def run(self, retrieval: RetrievalResource | None = None) -> dict:
        """One run; the chunks asset's metadata, with ``cut``: the documents its chunker cut."""
        self.cut.clear()
        resources = self.sandbox.resources(corpora=CorporaResource(path=str(self.corpora)))
        if retrieval is not None:
            resources["retrieval"] = retrieval
        result = dg.materialize(
            [raw_documents, chunks], partition_key=PARTITION, resources=resources, instance=self.instance
        )
        [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("chunks")]
        meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
        return {**meta, "cut": list(self.cut)}

    @property
    def table_path(self) -> Path:
        return self.sandbox.assets / "chunks" / f"{PARTITION}.parquet"

    def expected(self, retrieval: RetrievalResource | None = None):
        """The table chunking every document of the corpus gives (no reuse), and the tokenizer model."""
        docs, _ = read_documents(self.data)
        with (retrieval or self.sandbox.retrieval).indexer("chunked-expected") as indexer:
            tokenizer = tokenizer_of(indexer.dense)
            return chunks_to_table(indexer.chunk(docs), tokenizer=tokenizer), tokenizer


def assert_same_table(path: Path, expected) -> None:
    table, model = expected
    stored = pq.read_table(path)
    assert stored.equals(table), "the chunks table differs from chunking every document"
    assert table_model(stored) == model


@pytest.mark.slow  # Dagster runs
def test_chunks_are_cut_only_for_documents_changed_since_the_previous_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = ChunkRuns(tmp_path, monkeypatch)
    first = runs.run()
    docs = read_docs(runs.data)
    assert first["chunked_documents"] == len(docs) and first["reused_documents"] == 0
    assert first["mostly_unknown_chunks"] == 0  # English: the dense model knows its tokens
    assert sorted(runs.cut) == sorted(d["_id"] for d in docs)
    assert_same_table(runs.table_path, runs.expected())

    again = runs.run()  # nothing changed: nothing is cut
    assert again["cut"] == [] and again["chunked_documents"] == 0 and again["reused_documents"] == len(docs)
    assert again["chunks"] == first["chunks"]
    assert_same_table(runs.table_path, runs.expected())

    # An edit (longer: more chunks), an addition in the middle, a deletion.
    edited, removed = docs[3]["_id"], docs[7]["_id"]
    docs[3] = {**docs[3], "text": docs[3]["text"] + " Revised." + " More findings were added later." * 60}
    docs.insert(10, {"_id": "added-1", "title": "Added", "text": "A new note on zebrafish heart regeneration."})
    docs.insert(11, {"_id": "added-th", "text": "มวยไทยเป็นศิลปะการต่อสู้ที่ใช้หมัดเท้าเข่าและศอก"})  # all [UNK]
    del docs[7]
    write_docs(runs.data, docs)
    changed = runs.run()
    assert sorted(changed["cut"]) == sorted([edited, "added-1", "added-th"])
    assert changed["chunked_documents"] == 3 and changed["reused_documents"] == len(docs) - 3
    assert changed["mostly_unknown_chunks"] == 1
    assert removed not in pq.read_table(runs.table_path, columns=["doc_id"])["doc_id"].to_pylist()
    assert_same_table(runs.table_path, runs.expected())

    # Another chunk budget changes every fingerprint: every document is cut again, with the new budget.
    smaller = RetrievalResource(
        qdrant_path=runs.sandbox.retrieval.qdrant_path, cache_dir=runs.sandbox.retrieval.cache_dir, chunk_tokens=128
    )
    rebudgeted = runs.run(smaller)
    assert sorted(rebudgeted["cut"]) == sorted(d["_id"] for d in docs) and rebudgeted["reused_documents"] == 0
    assert rebudgeted["chunks"] > changed["chunks"]
    assert_same_table(runs.table_path, runs.expected(smaller))


@pytest.mark.slow  # Dagster runs
def test_chunks_of_another_tokenizer_or_an_earlier_release_are_not_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A previous table cut with another model's tokenizer, written by the previous release (no fingerprint
    columns, no tokenizer recorded), or unreadable, is not reused: every document is cut again, and the result is
    the same."""
    runs = ChunkRuns(tmp_path, monkeypatch)
    n_docs = runs.run()["chunked_documents"]
    table = pq.read_table(runs.table_path)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, MODEL_KEY: b"other/model"}), runs.table_path)
    assert runs.run()["chunked_documents"] == n_docs
    assert_same_table(runs.table_path, runs.expected())

    # the model's name alone (its folder may have been saved in place with another tokenizer since)
    name = runs.sandbox.retrieval.settings().dense_model.encode()
    table = pq.read_table(runs.table_path)
    pq.write_table(table.replace_schema_metadata({**table.schema.metadata, MODEL_KEY: name}), runs.table_path)
    assert runs.run()["chunked_documents"] == n_docs
    assert_same_table(runs.table_path, runs.expected())

    table = pq.read_table(runs.table_path)
    old = table.drop_columns(["doc_hash", "doc_chunks"])
    earlier = {k: v for k, v in old.schema.metadata.items() if k != MODEL_KEY}
    pq.write_table(old.replace_schema_metadata(earlier), runs.table_path)
    assert runs.run()["chunked_documents"] == n_docs
    assert_same_table(runs.table_path, runs.expected())

    runs.table_path.write_bytes(b"not a parquet file")  # damaged: read as no previous table, with a warning
    assert runs.run()["chunked_documents"] == n_docs
    assert_same_table(runs.table_path, runs.expected())


def test_a_chunks_table_round_trips_fingerprinted_chunks_and_reads_an_earlier_releases_as_bare_chunks() -> None:
    chunks_ = [
        DocumentChunk("a", 0, "one", "A", {"k": 1}, doc_hash="h", doc_chunks=2),
        DocumentChunk("a", 1, "two", "A", {"k": 1}, doc_hash="h", doc_chunks=2),
        Chunk("b", 0, "bare"),
    ]
    table = chunks_to_table(chunks_)
    assert table_to_chunks(table) == chunks_
    assert [c.payload() for c in table_to_chunks(table)] == [c.payload() for c in chunks_]
    earlier = table.drop_columns(["doc_hash", "doc_chunks"])  # as the previous release wrote it
    assert table_to_chunks(earlier) == [
        Chunk(c.doc_id, c.chunk_index, c.text, c.title, c.metadata, c.embed_title) for c in chunks_
    ]
    assert json.loads(table.schema.metadata[b"hybrid_rag.skipped"]) == []
