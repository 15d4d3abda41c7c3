"""Indexing is idempotent, replaces changed documents and never loses what was indexed."""

import dataclasses
import json
import time

import pytest

from retrieval import BadInputError, Document, read_documents
from tests.conftest import BACKENDS, TINY_DOCS
from tests.test_reliability_versions import crash_after_two_blocks


@pytest.fixture(params=BACKENDS)
def indexer(request, indexed_stack):
    stack = indexed_stack(request.param, [])
    yield stack.indexer()
    stack.close()


def test_second_run_changes_nothing(indexer):
    first = indexer.index(TINY_DOCS, progress=False)
    assert first.points == first.chunks == len(TINY_DOCS)
    ids_before = set(indexer.store.stored_hashes())
    second = indexer.index(TINY_DOCS, progress=False)
    assert (second.embedded, second.unchanged, second.deleted) == (0, len(TINY_DOCS), 0)
    assert second.points == first.points
    assert set(indexer.store.stored_hashes()) == ids_before


def test_the_reported_time_covers_the_whole_write(indexed_stack):
    """``report.seconds`` runs from the first document read off the iterable, not from the write step: a source
    that takes 2 s to yield its documents (a slow reader) is in it."""
    stack = indexed_stack("edge", [], collection="timed")

    def slow_source():
        for doc in TINY_DOCS:
            time.sleep(2.0 / len(TINY_DOCS))
            yield doc

    started = time.perf_counter()
    report = stack.indexer().index(slow_source(), progress=False)
    wall = time.perf_counter() - started
    assert report.points == len(TINY_DOCS)
    assert 2.0 <= report.seconds <= wall


def test_changed_document_replaces_its_chunks_and_drops_stale_ones(indexer):
    long_text = " ".join(f"paragraph {i} about valves, gaskets and pressure." for i in range(120))
    docs = [*TINY_DOCS[1:], dataclasses.replace(TINY_DOCS[0], text=long_text)]
    indexer.index(docs, progress=False)
    many = indexer.store.count({"doc_id": "valve"})
    assert many > 1
    report = indexer.index(TINY_DOCS, progress=False)  # the document shrinks back to one chunk
    assert indexer.store.count({"doc_id": "valve"}) == 1
    assert report.deleted == many - 1 and report.embedded == 1
    assert report.points == len(TINY_DOCS)


def test_prune_removes_documents_missing_from_the_source(indexer):
    indexer.index(TINY_DOCS, progress=False)
    report = indexer.index(TINY_DOCS[:5], prune=True, progress=False)
    assert report.deleted == len(TINY_DOCS) - 5
    assert {d for d, _ in indexer.store.stored_hashes().values()} == {d.id for d in TINY_DOCS[:5]}


def test_bad_input_fails_before_touching_the_index(indexer, tmp_path):
    indexer.index(TINY_DOCS, progress=False)
    source = tmp_path / "docs.jsonl"
    lines = [json.dumps({"_id": "new", "text": "fresh text"}), "{not json", json.dumps({"_id": "x", "text": "y"})]
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=r"docs\.jsonl:2: malformed JSON"):
        docs, _ = read_documents(source)
        indexer.index(docs, prune=True, progress=False)
    assert indexer.store.count() == len(TINY_DOCS)


def test_interrupted_run_resumes_without_duplicates_or_re_embedding(indexed_stack):
    docs = [Document(f"d{i}", f"document number {i} about topic {i % 7}") for i in range(40)]
    clean = indexed_stack("edge", docs, upsert_batch_size=8)
    expected = clean.store().stored_hashes()
    clean.close()

    import retrieval.indexer as indexer_module

    broken = indexed_stack("edge", [], upsert_batch_size=8, embedding_cache=False).indexer()
    original_block = indexer_module.ENCODE_BLOCK
    indexer_module.ENCODE_BLOCK = 16
    try:
        broken.after_batch = crash_after_two_blocks
        with pytest.raises(RuntimeError, match="injected"):
            broken.index(docs, progress=False)
        assert broken.store.current_version() is None  # readers never see a half-written version ...
        assert broken.store.pinned(1).count() == 32  # ... that the next run resumes
        broken.after_batch = None
        resumed = broken.index(docs, progress=False)
    finally:
        indexer_module.ENCODE_BLOCK = original_block
    assert resumed.embedded == 8 and resumed.unchanged == 32  # only the missing block was embedded
    assert broken.store.stored_hashes() == expected
    broken.store.close()


def test_text_mostly_unknown_to_the_dense_model_is_warned_about_once(indexed_stack, caplog):
    # Thai is [UNK] to the English-only default model: every such chunk gets the same dense vector
    thai = ["ต้มยำกุ้งเป็นอาหารไทยที่มีชื่อเสียงไปทั่วโลก", "มวยไทยเป็นศิลปะการต่อสู้ที่ใช้หมัดเท้าเข่าและศอก"]
    docs = [Document(f"th-{i}", t) for i, t in enumerate(thai)] + TINY_DOCS
    stack = indexed_stack("edge", [])
    try:
        with caplog.at_level("WARNING", logger="retrieval.indexer"):
            stack.indexer().index(docs, progress=False)
        warnings = [r.getMessage() for r in caplog.records if "[UNK]" in r.getMessage()]
        assert len(warnings) == 1, warnings
        assert "2 of " in warnings[0] and "'th-0'" in warnings[0] and "HYBRID_RAG_DENSE_MODEL=" in warnings[0]
        caplog.clear()
        with caplog.at_level("WARNING", logger="retrieval.indexer"):
            stack.indexer().index(TINY_DOCS, progress=False)  # English only: no warning
        assert not [r for r in caplog.records if "[UNK]" in r.getMessage()]
    finally:
        stack.close()


def test_an_id_stored_in_another_unicode_normalization_is_the_same_document(indexed_stack, tmp_path):
    # an earlier release stored a macOS file name decomposed; the same file now read composed updates it
    import unicodedata

    nfc, nfd = "résumé.txt", unicodedata.normalize("NFD", "résumé.txt")
    stack = indexed_stack("edge", [])
    try:
        indexer = stack.indexer()
        indexer.index([Document(nfd, "Curriculum vitae of Ana Lopez.")], progress=False)
        report = indexer.index([Document(nfc, "Curriculum vitae of Ana López, updated.")], progress=False)
        assert (report.documents, report.points) == (1, 1)  # not a second document
        hits = stack.retriever(rerank=False).search("curriculum vitae", k=5)
        assert [(h.doc_id, h.text) for h in hits] == [(nfd, "Curriculum vitae of Ana López, updated.")]
        deleted = indexer.delete_documents([nfc])  # the id as typed names the stored one
        assert (deleted.documents, deleted.points, deleted.missing, deleted.stored_as) == (1, 0, [], {nfc: nfd})
    finally:
        stack.close()
