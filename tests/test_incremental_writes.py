"""An incremental write costs what it touches: unchanged documents are not chunked again (each point stores its
document's fingerprint), a plain write and a delete read only the points of their documents, a sync reads the
collection once. Results stay those of a full comparison, on both backends."""

import dataclasses
import json

import numpy as np
import pytest

import retrieval.store.base as store_base
from retrieval import Document, RetrievalStack
from retrieval.encoders import DenseEncoder
from retrieval.store import SchemaMismatchError
from tests.conftest import BACKENDS, TINY_DOCS

LONG = " ".join(f"paragraph {i} about valves, gaskets and pressure." for i in range(120))


@pytest.fixture(params=BACKENDS)
def indexer(request, indexed_stack):
    stack = indexed_stack(request.param, [])
    yield stack.indexer()
    stack.close()


@pytest.fixture
def chunked(indexer, monkeypatch):
    """The ids of the documents the indexer's chunker cuts (in order)."""
    seen: list[str] = []
    original = indexer.chunker.chunk

    def chunk(doc):
        seen.append(doc.id)
        return original(doc)

    monkeypatch.setattr(indexer.chunker, "chunk", chunk)
    return seen


@pytest.fixture
def scanned(monkeypatch):
    """How many stored points the hash reads (every backend's ``stored_hashes``/``stored_chunks``) returned."""
    count = [0]
    original = store_base.scrolled

    def scrolled(scroll):
        for record in original(scroll):
            count[0] += 1
            yield record

    monkeypatch.setattr(store_base, "scrolled", scrolled)
    return count


def expected_points(indexer, docs):
    return {c.id: (c.doc_id, c.content_hash) for c in indexer.chunk(docs)}


def test_unchanged_documents_are_not_chunked_again(indexer, chunked):
    indexer.index(TINY_DOCS, progress=False)
    chunked.clear()
    edited = [dataclasses.replace(TINY_DOCS[0], text="Check the ZX-4471 valve gasket every year."), *TINY_DOCS[1:]]
    report = indexer.index(edited, progress=False)
    assert chunked == [TINY_DOCS[0].id]  # only the changed document was cut
    assert (report.embedded, report.unchanged, report.chunks) == (1, len(TINY_DOCS) - 1, len(TINY_DOCS))
    chunked.clear()
    again = indexer.index(edited, prune=True, progress=False)  # `index --sync` with nothing changed
    assert chunked == []
    assert (again.embedded, again.deleted, again.unchanged, again.points) == (0, 0, len(TINY_DOCS), len(TINY_DOCS))
    assert indexer.store.stored_hashes() == expected_points(indexer, edited)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_edit_encodes_only_the_changed_chunks(backend, indexed_stack, monkeypatch):
    """A chunk of an edited document that keeps its id and text is rewritten (its point carries the document's new
    fingerprint) with the vectors its point has, read back, not encoded again: with the embedding cache off the
    model sees only the changed chunks, and the report tells encoded from reused."""
    stack = indexed_stack(backend, [], embedding_cache=False)
    indexer = stack.indexer()
    doc = Document("long", LONG, title="Valves")
    indexer.index([doc], progress=False)
    ids = sorted(indexer.store.stored_chunks())
    before = indexer.store.stored_vectors(ids)
    edited = dataclasses.replace(doc, text=LONG.replace("paragraph 119 about", "paragraph 119, the last one, about"))
    new_chunks = indexer.chunk([edited])
    old_chunks = {c.id: c.content_hash for c in indexer.chunk([doc])}
    changed = [c.embed_text for c in new_chunks if old_chunks.get(c.id) != c.content_hash]
    assert 0 < len(changed) < len(new_chunks) - 1
    encoded: list[str] = []
    original = indexer.dense.encode_documents
    monkeypatch.setattr(indexer.dense, "encode_documents", lambda texts: (encoded.extend(texts), original(texts))[1])
    report = indexer.index([edited], progress=False)
    assert sorted(encoded) == sorted(changed)
    kept = len(new_chunks) - len(changed)
    assert (report.written, report.embedded, report.reused, report.reused_from_cache) == (
        len(new_chunks),
        len(changed),
        kept,
        0,
    )
    after = indexer.store.stored_vectors(ids)
    same = [c.id for c in new_chunks if old_chunks.get(c.id) == c.content_hash]
    for pid in same:  # the vectors they had (a server normalizes dense ones again: within a float32 step)
        np.testing.assert_allclose(after[pid][0], before[pid][0], rtol=0, atol=1e-7)
        assert after[pid][1] == before[pid][1]
    assert indexer.store.stored_hashes() == expected_points(indexer, [edited])
    encoded.clear()
    again = indexer.index([edited], progress=False)  # every point carries the new fingerprint: nothing to do
    assert (again.written, again.unchanged, encoded) == (0, len(new_chunks), [])
    stack.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_metadata_edit_encodes_nothing(backend, indexed_stack, monkeypatch):
    """Metadata is stored, not embedded: a document whose metadata alone changed (a front-matter tag) is rewritten
    with its stored vectors, the model not called, with the embedding cache off; filters see the new metadata."""
    stack = indexed_stack(backend, [], embedding_cache=False)
    indexer = stack.indexer()
    doc = Document("long", LONG, title="Valves", metadata={"tags": ["draft"]})
    indexer.index([doc], progress=False)
    encoded: list[str] = []
    original = indexer.dense.encode_documents
    monkeypatch.setattr(indexer.dense, "encode_documents", lambda texts: (encoded.extend(texts), original(texts))[1])
    report = indexer.index([dataclasses.replace(doc, metadata={"tags": ["final"]})], progress=False)
    chunks = len(indexer.chunk([doc]))
    assert (report.written, report.embedded, report.reused, encoded) == (chunks, 0, chunks, [])
    hits = stack.retriever().search("valves", k=3, filter={"tags": "final"})
    assert hits and {h.metadata["tags"][0] for h in hits} == {"final"}
    retitled = indexer.index([dataclasses.replace(doc, title="Pumps", metadata={"tags": ["final"]})], progress=False)
    assert (retitled.embedded, retitled.reused) == (chunks, 0)  # the title is embedded: encoded again
    stack.close()


def test_a_sync_keeps_unchanged_documents_and_deletes_absent_ones(indexer, chunked):
    indexer.index(TINY_DOCS, progress=False)
    chunked.clear()
    extra = Document("extra", "A brand new document about zebrafish heart regeneration.")
    report = indexer.index([*TINY_DOCS[1:], extra], prune=True, progress=False)
    assert chunked == ["extra"]
    assert (report.embedded, report.deleted, report.unchanged) == (1, 1, len(TINY_DOCS) - 1)
    assert indexer.store.stored_hashes() == expected_points(indexer, [*TINY_DOCS[1:], extra])


def test_a_document_a_bare_chunk_write_shortened_is_chunked_again(indexer, chunked):
    """Points keep the fingerprint of the document they were written from; a write of bare chunks (the Dagster
    path) that drops some of a document's points leaves the rest with it: the stored chunk count tells."""
    long_doc = Document("long", LONG)
    first = indexer.index([long_doc, *TINY_DOCS], progress=False)
    many = indexer.store.count({"doc_id": "long"})
    assert many > 1
    head = indexer.chunker.chunk(Document("long", indexer.chunk([long_doc])[0].text))
    assert len(head) == 1
    indexer.sync(head, progress=False)  # chunk 0 is unchanged (kept, with its fingerprint); the rest is deleted
    assert indexer.store.count({"doc_id": "long"}) == 1
    chunked.clear()
    report = indexer.index([long_doc, *TINY_DOCS], progress=False)
    assert chunked == ["long"] and (report.written, report.reused) == (many, 1)  # chunk 0: its stored vectors
    assert report.points == first.points
    assert indexer.store.stored_hashes() == expected_points(indexer, [long_doc, *TINY_DOCS])


def test_points_without_a_fingerprint_are_compared_by_chunk(indexer, chunked):
    """A collection an earlier release wrote (no fingerprint in its payloads) keeps working: its documents are
    chunked and compared as before, nothing unchanged is rewritten, and a document gains the fast path when it
    is next written."""
    bare = [c for doc in TINY_DOCS for c in indexer.chunker.chunk(doc)]  # chunks as an earlier release wrote them
    indexer.sync(bare, progress=False)
    chunked.clear()
    report = indexer.index(TINY_DOCS, prune=True, progress=False)
    assert sorted(chunked) == sorted(d.id for d in TINY_DOCS)
    assert (report.embedded, report.deleted, report.unchanged) == (0, 0, len(TINY_DOCS))
    edited = [dataclasses.replace(TINY_DOCS[0], title="Boiler manual, 2nd edition"), *TINY_DOCS[1:]]
    assert indexer.index(edited, progress=False).embedded == 1
    chunked.clear()
    assert indexer.index(edited, progress=False).embedded == 0
    assert sorted(chunked) == sorted(d.id for d in TINY_DOCS[1:])  # the rewritten document is skipped now
    assert indexer.store.stored_hashes() == expected_points(indexer, edited)


def test_a_plain_write_and_a_delete_read_only_their_documents_points(indexer, scanned):
    indexer.index([Document("long", LONG), *TINY_DOCS], progress=False)
    total = indexer.store.count()
    scanned[0] = 0
    added = indexer.index([Document("new-1", "A brand new document about zebrafish.")], progress=False)
    assert scanned[0] == 0 and added.points == total + 1  # a new document: no stored point of it to read
    scanned[0] = 0
    indexer.index([dataclasses.replace(TINY_DOCS[1], text="Salt the water before the noodles go in.")], progress=False)
    assert scanned[0] == 1  # the one point of the changed document
    scanned[0] = 0
    deleted = indexer.delete_documents(["valve", "unknown"])
    assert scanned[0] == 1 and (deleted.deleted, deleted.missing, deleted.points) == (1, ["unknown"], total)
    scanned[0] = 0
    assert indexer.delete_documents(["unknown"]).points == total and scanned[0] == 0


def test_a_sync_reads_the_collection_once(indexer, scanned):
    docs = [Document("long", LONG), *TINY_DOCS]
    indexer.index(docs, progress=False)
    total = indexer.store.count()
    scanned[0] = 0
    assert not indexer.index(docs, prune=True, progress=False).embedded
    assert scanned[0] == total
    scanned[0] = 0
    report = indexer.index(docs[:-1], prune=True, progress=False)  # one document gone
    assert report.deleted == 1 and scanned[0] == total  # not once more on the staged copy


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failed_sync_resumes_with_unchanged_documents_skipped(backend, indexed_stack, monkeypatch):
    """The re-run of a failed sync finds the same unchanged documents (not chunked) and finishes the failed run's
    staged copy (the embedded engine) or the live collection (a server): what it read of the copy is the copy's."""
    import retrieval.indexer as indexer_module
    from tests.test_reliability_versions import crash_after_two_blocks

    stack = indexed_stack(backend, TINY_DOCS, upsert_batch_size=8, embedding_cache=False)
    indexer = stack.indexer()
    new = [Document(f"n{i}", f"new document number {i} about topic {i % 7}") for i in range(40)]
    docs = [*TINY_DOCS[1:], *new]
    monkeypatch.setattr(indexer_module, "ENCODE_BLOCK", 8)
    indexer.after_batch = crash_after_two_blocks
    with pytest.raises(RuntimeError, match="injected"):
        indexer.index(docs, prune=True, progress=False)
    indexer.after_batch = None
    resumed = indexer.index(docs, prune=True, progress=False)
    assert resumed.embedded == len(new) - 16 and resumed.unchanged == len(TINY_DOCS) - 1 + 16
    assert resumed.deleted == 1
    assert indexer.store.stored_hashes() == expected_points(indexer, docs)
    stack.close()


def test_fingerprinted_chunks_are_the_chunkers_chunks(indexer):
    """A chunk that carries its document's fingerprint embeds and stores what the chunker cut: a long title's head,
    the whole title in the payload (a fingerprint once landed in the embedded title)."""
    doc = Document("long-title", LONG, title=" ".join(f"word{i}" for i in range(200)))
    plain = indexer.chunker.chunk(doc)
    carried = indexer.chunk([doc])
    assert [(c.id, c.embed_text, c.content_hash) for c in carried] == [
        (c.id, c.embed_text, c.content_hash) for c in plain
    ]
    assert all(c.payload()["title"] == doc.title for c in carried)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hits_carry_their_offsets_in_the_document_text(backend, indexed_stack):
    """A chunk id names a position in its document: after a paragraph inserted near the top, the ids hold the text
    now at those positions. Each hit carries where its text lies in the document's text (``start``, ``end``), to
    anchor a citation; a point written without them (an earlier release) gives None."""
    from assets.tables import chunks_to_table, table_to_chunks

    text = "Intro: caf\u00e9 \U0001f44d\U0001f3fd.\n\n" + LONG
    doc = Document("long", text, title="Valves")
    stack = indexed_stack(backend, [doc])
    indexer = stack.indexer()
    chunks = indexer.chunk([doc])
    assert len(chunks) > 2 and all(text[c.start : c.end] == c.text for c in chunks)
    assert table_to_chunks(chunks_to_table(chunks)) == chunks  # the Dagster chunks table keeps them
    hits = stack.retriever(rerank=False).search("paragraph 60 about valves", k=20)
    assert hits and all(h.start is not None and text[h.start : h.end] == h.text for h in hits)
    edited = dataclasses.replace(doc, text=text.replace("Intro:", "Intro: " + "a new paragraph " * 40))
    report = indexer.index([edited], progress=False)
    by_index = {h.chunk_index: h for h in stack.retriever(rerank=False).search("paragraph valves", k=50)}
    assert all(edited.text[h.start : h.end] == h.text for h in by_index.values())
    assert report.embedded > 0 and report.written == report.chunks
    bare = [dataclasses.replace(c, start=None, end=None) for c in indexer.chunker.chunk(doc)]
    indexer.sync(bare, progress=False)  # points as an earlier release wrote them
    assert {(h.start, h.end) for h in stack.retriever(rerank=False).search("paragraph", k=50)} == {(None, None)}
    stack.close()


@pytest.mark.parametrize(("backend", "prune"), [("edge", False), ("server", True)])
def test_an_unchanged_reindex_loads_no_model(backend, prune, indexed_stack):
    """A re-index that finds every document stored as it is compares fingerprints with the chunk budget the
    collection records and never loads the dense model (``hybrid-rag index`` of an unchanged source spent ~6 s of
    its 6.3 s importing torch and loading it); a changed document loads it, once, and is embedded again."""
    stack = indexed_stack(backend, TINY_DOCS, embedding_cache=False)  # written with the session's loaded model
    fresh = DenseEncoder()  # the same model, not loaded: a new process's
    indexer = RetrievalStack(stack.settings, dense=fresh, sparse=stack.sparse, store=stack.store()).indexer()
    report = indexer.index(TINY_DOCS, prune=prune, progress=False)
    assert (report.changed, report.unchanged, report.written) == (False, len(TINY_DOCS), 0)
    assert "model" not in vars(fresh) and fresh.loads == 0
    edited = [dataclasses.replace(TINY_DOCS[0], text=TINY_DOCS[0].text + " Checked yearly."), *TINY_DOCS[1:]]
    report = indexer.index(edited, prune=prune, progress=False)
    assert (report.embedded, report.unchanged, fresh.loads) == (1, len(TINY_DOCS) - 1, 1)
    assert indexer.store.stored_hashes() == expected_points(indexer, edited)


def test_an_unchanged_reindex_with_other_settings_is_refused_before_writing(indexed_stack):
    """Settings that differ from the collection's (here the chunk overlap) are not taken for a match by the check
    made without the model: the write loads it and refuses, as before."""
    stack = indexed_stack("edge", TINY_DOCS, embedding_cache=False)
    version = stack.store().current_version()
    fresh = DenseEncoder()
    other = stack.settings.in_use_copy(chunk_overlap=stack.settings.chunk_overlap + 1)
    indexer = RetrievalStack(other, dense=fresh, sparse=stack.sparse, store=stack.store()).indexer()
    with pytest.raises(SchemaMismatchError, match="chunk_overlap"):
        indexer.index(TINY_DOCS, progress=False)
    assert stack.store().current_version() == version and fresh.loads == 1


def test_a_collection_recording_no_whitespace_rule_reindexes_unchanged_and_refuses_the_other_rule(
    indexed_stack, caplog, monkeypatch
):
    """A collection an earlier release made records no ``CHUNK_AT_WHITESPACE``: its chunks were cut between words
    (off), so an unchanged re-index finds every document as it is, loads no model and warns of nothing; with the
    setting on, a plain write is refused as for ``CHUNK_TOKENS`` (it added chunks of the other rule silently)."""
    stack = indexed_stack("edge", TINY_DOCS, embedding_cache=False)
    store = stack.store()
    path = store._schema_path()
    record = json.loads(path.read_text())
    record.pop("chunk_at_whitespace", None)
    path.write_text(json.dumps(record))  # as an earlier release recorded it
    monkeypatch.setattr(store_base, "_warned_unrecorded", set())
    fresh = DenseEncoder()
    indexer = RetrievalStack(stack.settings, dense=fresh, sparse=stack.sparse, store=store).indexer()
    with caplog.at_level("WARNING"):
        report = indexer.index(TINY_DOCS, progress=False)
    assert (report.changed, report.unchanged, fresh.loads) == (False, len(TINY_DOCS), 0)
    assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    on = stack.settings.in_use_copy(chunk_at_whitespace=True)
    version = store.current_version()
    refused = r"chunk_at_whitespace: collection has False, settings give True\).*--rebuild"
    with pytest.raises(SchemaMismatchError, match=refused):
        RetrievalStack(on, dense=fresh, sparse=stack.sparse, store=store).indexer().index(TINY_DOCS, progress=False)
    assert store.current_version() == version


def test_an_unchanged_reindex_of_a_collection_not_recording_its_models_content_checks_the_model(indexed_stack):
    """A collection an earlier release made records no model content (``dense_fingerprint``) even once a write
    recorded its chunk budget: its dense dimension is then the one check of the model, so a re-index with
    another model loads it and refuses (it was reported unchanged, the stale vectors kept, without a word)."""
    stack = indexed_stack("edge", TINY_DOCS, embedding_cache=False)
    store = stack.store()
    old = dataclasses.replace(store.schema(), dense_fingerprint=None, dense_precision=None, dense_dim=768)
    store._record_schema(old)  # an earlier release's record (and model: another dimension), upgraded by a write
    assert store.schema().chunk_budget is not None
    fresh = DenseEncoder()
    indexer = RetrievalStack(stack.settings, dense=fresh, sparse=stack.sparse, store=store).indexer()
    with pytest.raises(SchemaMismatchError, match="dense_dim: collection has 768"):
        indexer.index(TINY_DOCS, progress=False)
    assert fresh.loads == 1
