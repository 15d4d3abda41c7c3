"""BM25 on text that is not English ASCII: words inside Chinese, Japanese and Thai running text (the multilingual
tokenizer), text a user sees as identical (NFKC, case folding, invisible characters), and collections built before."""

import json
import unicodedata
from dataclasses import asdict

import pytest

from retrieval import Document, RetrievalSettings, RetrievalStack
from retrieval.encoders.sparse import Bm25Encoder
from retrieval.store import SchemaMismatchError
from retrieval.store.base import MODEL_FIELDS, CollectionSchema
from retrieval.store.server import SCHEMA_KEY
from tests.conftest import BACKENDS, make_store

CJK_DOCS = [
    Document("panda", "熊猫主要生活在四川的竹林里，以竹子为食。"),
    Document("wall", "长城是中国古代的军事防御工程，全长两万多公里。"),
    Document("hotpot", "火锅是重庆和成都的特色美食，味道麻辣。"),
    Document("fuji", "富士山は日本で最も高い山で、標高は三七七六メートルです。"),
    Document("muaythai", "มวยไทยเป็นศิลปะการต่อสู้ที่ใช้หมัดเท้าเข่าและศอก"),
    Document("tomyum", "ต้มยำกุ้งเป็นอาหารไทยที่มีชื่อเสียงไปทั่วโลก"),
    Document("coffee", "Espresso is brewed by forcing hot water through finely ground coffee."),
]
# Text as users write it, and a query as they type it that names the same words.
EQUIVALENT = [
    (Document("dessert", unicodedata.normalize("NFD", "La crème brûlée est un dessert français.")), "crème brûlée"),
    (Document("pdf", "The oﬃce ﬁnance team reviewed the quarterly ﬁgures."), "office finance"),
    (Document("web", "Our con\u00adfig\u00adu\u00adra\u00adtion guide covers the sched\u00aduler."), "configuration"),
    (Document("spec", "The ＲＡＭ budget for ２０２４ is ５１２ gigabytes."), "RAM 2024"),
    (Document("trip", "İstanbul is a city on the Bosphorus."), "Istanbul"),
    (Document("street", "Die Hohe Straße ist eine Einkaufsstraße in Köln."), "STRASSE"),
    (Document("wiki", "Call getUser\u200bById(id) to fetch one account (copied from a wiki: <wbr>)."), "getUserById"),
]
# Invisible (default ignorable) characters a word can hold: zero-width space, non-joiner and joiner, word joiner,
# byte order mark, left-to-right mark, variation selector 16
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u200e", "\ufe0f"]


def _stack(tmp_path, dense_encoder, sparse=None, collection="ml", backend=None) -> RetrievalStack:
    settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection=collection)
    store = make_store(backend, tmp_path, collection) if backend else None
    return RetrievalStack(settings, dense=dense_encoder, sparse=sparse or Bm25Encoder(), store=store)


def _sparse_top(stack: RetrievalStack, query: str) -> str | None:
    hits = stack.retriever().search(query, k=1, variant="sparse", rerank=False)
    return hits[0].doc_id if hits else None


@pytest.fixture(scope="module")
def multilingual_stack(tmp_path_factory, dense_encoder):
    with _stack(tmp_path_factory.mktemp("ml"), dense_encoder, Bm25Encoder(tokenizer="multilingual")) as stack:
        stack.indexer().index(CJK_DOCS, progress=False)
        yield stack


@pytest.mark.parametrize(
    ("query", "doc_id"),
    [("熊猫", "panda"), ("长城", "wall"), ("富士山", "fuji"), ("มวยไทย", "muaythai"), ("ต้มยำกุ้ง", "tomyum")],
)
def test_multilingual_tokenizer_finds_a_word_inside_running_text(multilingual_stack, query, doc_id):
    """The Word tokenizer makes a clause between punctuation one term: no sparse hit for 熊猫 before."""
    [hit] = multilingual_stack.retriever().search(query, k=1, variant="sparse", rerank=False)
    assert (hit.doc_id, hit.sparse_rank) == (doc_id, 1)
    assert multilingual_stack.retriever().search(query, k=1, rerank=False)[0].doc_id == doc_id  # hybrid too


def test_multilingual_tokenizer_keeps_english_words_and_their_stems():
    word, multi = Bm25Encoder(), Bm25Encoder(tokenizer="multilingual")
    text = ["Running cats: the T-cells of vitamin B12"]
    assert word.encode_documents(text) == multi.encode_documents(text)


def test_equivalent_text_makes_the_same_terms(tmp_path, dense_encoder):
    """NFD accents, ligatures, soft hyphens, a zero-width space, full-width forms, İ and ß: the query typed plainly
    finds each."""
    with _stack(tmp_path, dense_encoder) as stack:
        stack.indexer().index([d for d, _ in EQUIVALENT], progress=False)
        found = {doc.id: _sparse_top(stack, query) for doc, query in EQUIVALENT}
    assert found == {doc.id: doc.id for doc, _ in EQUIVALENT}


@pytest.mark.parametrize("char", INVISIBLE, ids=[f"U+{ord(c):04X}" for c in INVISIBLE])
def test_an_invisible_character_inside_a_word_does_not_split_it(char):
    """Unicode's NFKC_Casefold drops them (as ICU's nfkc_cf does): a word pasted with one is the word typed."""
    encoder = Bm25Encoder()
    assert encoder.encode_documents([f"BRCA{char}1 and getUser{char}ById"]) == encoder.encode_documents(
        ["BRCA1 and getUserById"]
    )


def test_persian_words_written_with_or_without_a_zero_width_non_joiner_make_one_term():
    """Persian writes می‌خواهم ("I want") with a ZWNJ between its parts, or without: one term either way."""
    encoder = Bm25Encoder()
    assert encoder.encode_query("می\u200cخواهم") == encoder.encode_query("میخواهم")
    assert len(encoder.encode_query("می\u200cخواهم")) == 1


def _as_an_earlier_release_wrote_it(root) -> None:
    """Drop the BM25 analyzer from the collection's recorded schema, as every release before it was recorded."""
    paths = list(root.rglob("schema.json"))
    assert paths
    for path in paths:
        data = json.loads(path.read_text())
        del data["bm25_analyzer"]
        path.write_text(json.dumps(data))


def test_a_collection_built_before_keeps_its_terms_until_rebuilt(tmp_path, dense_encoder, caplog):
    """A collection built by the earlier analyzer (no normalization, Word) is searched and written with it, so
    queries return what they did and new documents make the same terms; a rebuild moves it to the settings'."""
    docs = [d for d, _ in EQUIVALENT]
    queries = ["oﬃce ﬁgures", "Straße", "ＲＡＭ", "dessert", "STRASSE"]
    with _stack(tmp_path, dense_encoder, Bm25Encoder.of_analyzer("word")) as old:
        old.indexer().index(docs, progress=False)
        before = {q: _sparse_top(old, q) for q in queries}
    _as_an_earlier_release_wrote_it(tmp_path / "index")
    assert before["oﬃce ﬁgures"] == "pdf" and before["STRASSE"] is None  # the earlier analyzer's terms

    with _stack(tmp_path, dense_encoder) as new:
        assert new.check_schema().bm25_analyzer == "word"
        with caplog.at_level("INFO"):
            assert {q: _sparse_top(new, q) for q in queries} == before
            new.indexer().index([Document("menu", "Crème brûlée and ﬂan.")], progress=False)
        assert "analyzer 'word'" in caplog.text and "--rebuild" in caplog.text
        assert new.check_schema().bm25_analyzer == "word"
        assert not _earlier_release_refuses(_record(new))  # they make the same terms: rolling back stays possible
        assert _sparse_top(new, "ﬂan") == "menu"  # written with the collection's terms
        new.indexer().rebuild(docs, progress=False)
        assert new.check_schema().bm25_analyzer == "nfkc_cf+word"
        assert _sparse_top(new, "STRASSE") == "street"
        assert _sparse_top(new, "oﬃce ﬁgures") == "pdf"


def _record(stack: RetrievalStack) -> dict:
    """The collection's schema as stored (schema.json, or the server collection's metadata)."""
    store = stack.store()
    if hasattr(store, "client"):
        physical = store.client.get_aliases().aliases[0].collection_name
        return store.client.get_collection(physical).config.metadata[SCHEMA_KEY]
    return json.loads((store.root / f"ml__v{store.current_version()}" / "schema.json").read_text())


def _as_the_release_before_this_one_recorded_it(stack: RetrievalStack) -> None:
    """The record of a release that knew the analyzer but recorded the sparse model as plain ``bm25``."""
    store, record = stack.store(), {**_record(stack), "sparse_model": "bm25"}
    if hasattr(store, "client"):
        physical = store.client.get_aliases().aliases[0].collection_name
        store.client.update_collection(physical, metadata={SCHEMA_KEY: record})
    else:
        (store.root / f"ml__v{store.current_version()}" / "schema.json").write_text(json.dumps(record))


def _earlier_release_refuses(record: dict) -> bool:
    """What releases before the analyzer was recorded check on every search and write: the four model fields,
    the sparse model by name (theirs is plain ``bm25``, whatever analyzer the collection used)."""
    theirs = asdict(CollectionSchema.from_dict({**record, "sparse_model": "bm25"}))
    return any(record[k] != theirs[k] for k in MODEL_FIELDS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokenizer", ["word", "multilingual"])
def test_releases_before_the_analyzer_was_recorded_refuse_a_collection_of_another(
    tmp_path, dense_encoder, backend, tokenizer
):
    """Rolled back, such a release would write its own (unnormalized Word) terms into the collection and search
    it with them, silently: the stored sparse model names the analyzer, so their model check refuses it."""
    with _stack(tmp_path, dense_encoder, Bm25Encoder(tokenizer=tokenizer), backend=backend) as stack:
        stack.indexer().index(CJK_DOCS, progress=False)
        record = _record(stack)
        assert record["sparse_model"] == f"bm25:nfkc_cf+{tokenizer}"
        assert _earlier_release_refuses(record)
        assert stack.check_schema() == stack.schema()  # this release reads it as the bm25 model it is
        assert stack.check_schema().sparse_model == "bm25"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_collection_the_release_before_recorded_is_marked_on_its_next_write_without_re_encoding(
    tmp_path, dense_encoder, backend
):
    with _stack(tmp_path, dense_encoder, backend=backend) as stack:
        stack.indexer().index(CJK_DOCS, progress=False)
        _as_the_release_before_this_one_recorded_it(stack)
        assert not _earlier_release_refuses(_record(stack))
        assert stack.check_schema().bm25_analyzer == "nfkc_cf+word"
        report = stack.indexer().index([Document("pdf", "The oﬃce ﬁnance team.")], progress=False)
        assert report.embedded == 1  # the new document only
        assert _earlier_release_refuses(_record(stack))
        assert _sparse_top(stack, "office finance") == "pdf"


def test_a_collection_recording_another_analyzer_is_searched_with_it_and_refuses_writes(tmp_path, dense_encoder):
    with _stack(tmp_path, dense_encoder, Bm25Encoder(tokenizer="multilingual")) as multi:
        multi.indexer().index(CJK_DOCS, progress=False)
    with _stack(tmp_path, dense_encoder) as word:
        assert _sparse_top(word, "熊猫") == "panda"  # queries split as the documents were
        with pytest.raises(SchemaMismatchError, match=r"bm25_analyzer: collection has 'nfkc_cf\+multi.*--rebuild"):
            word.indexer().index([Document("more", "熊猫很可爱。")], progress=False)


def test_word_tokenizer_warns_once_on_unspaced_scripts(caplog):
    word = Bm25Encoder()
    # an English manual naming 日本 in most sections (blocks of 64, as the indexer encodes): 2 of ~100 letters
    manual = [
        f"Section {i}: the 日本 region's servers keep snapshots for {i} days before compaction." for i in range(64)
    ]
    with caplog.at_level("WARNING", logger="retrieval.encoders.sparse"):
        for _ in range(3):
            word.encode_documents(manual)
        assert not caplog.records
        word.encode_documents([d.text for d in CJK_DOCS] * 20)  # the run: 120 CJK texts, 212 English ones
        word.encode_documents([d.text for d in CJK_DOCS])
        Bm25Encoder(tokenizer="multilingual").encode_documents([d.text for d in CJK_DOCS])
    [warning] = [r.getMessage() for r in caplog.records]
    assert "of the letters and digits in the 332 texts encoded" in warning, warning
    assert "HYBRID_RAG_BM25_TOKENIZER=multilingual" in warning and "drops numbers" in warning


def test_the_tokenizer_is_a_setting(tmp_path, monkeypatch, dense_encoder):
    monkeypatch.setenv("HYBRID_RAG_BM25_TOKENIZER", "multilingual")
    settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache")
    with RetrievalStack(settings, dense=dense_encoder) as stack:
        assert stack.schema().bm25_analyzer == "nfkc_cf+multilingual"
    monkeypatch.setenv("HYBRID_RAG_BM25_TOKENIZER", "jieba")
    with pytest.raises(ValueError, match="HYBRID_RAG_BM25_TOKENIZER=.jieba. \\(environment\\)"):
        RetrievalSettings()
