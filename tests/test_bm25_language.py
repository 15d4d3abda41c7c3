"""BM25_LANGUAGE: documents in another language get its stopwords and its Snowball stemmer (German "Häuser" matches
"Haus"); the language is part of the analyzer a collection records, and English collections keep theirs unchanged."""

import pytest

from retrieval import Document, RetrievalSettings, RetrievalStack
from retrieval.encoders.sparse import Bm25Encoder
from retrieval.settings import Bm25Language
from retrieval.store import SchemaMismatchError

# A toy German corpus; each query names its document's words in other inflected forms.
GERMAN_DOCS = [
    Document("haeuser", "Die alten Häuser am Marktplatz wurden im Mittelalter gebaut."),
    Document("kinder", "Die Kinder spielten den ganzen Nachmittag im Garten."),
    Document("buecher", "In der Bibliothek stehen tausende Bücher über Geschichte."),
    Document("zuege", "Die Züge nach München fahren heute mit Verspätung."),
    Document("aepfel", "Im Herbst ernten die Bauern reife Äpfel von den Bäumen."),
    Document("staedte", "Viele Städte bauen neue Radwege für den Verkehr."),
    Document("lehrer", "Der Lehrer erklärte den Schülern die Regeln der Grammatik."),
    Document("wetter", "Das Wetter wird morgen sonnig und warm."),
]
GERMAN_QUERIES = {
    "altes Haus": "haeuser",
    "ein Kind spielt": "kinder",
    "Buch": "buecher",
    "Zug Verspätungen": "zuege",
    "Apfel vom Baum": "aepfel",
    "Stadt": "staedte",
    "Schüler": "lehrer",
    "sonniges Wetter": "wetter",
}
ENGLISH_TEXT = "The houses were running; Häuser und Kinder spielten."


def _stack(tmp_path, dense_encoder, **settings) -> RetrievalStack:
    values = {"qdrant_path": tmp_path / "index", "cache_dir": tmp_path / "cache", "collection": "de", **settings}
    return RetrievalStack(RetrievalSettings(_env_file=None, **values), dense=dense_encoder)


def _sparse(stack: RetrievalStack, query: str) -> list[str]:
    return [h.doc_id for h in stack.retriever().search(query, k=3, variant="sparse", rerank=False)]


def test_the_languages_are_qdrants():
    import qdrant_edge

    assert set(Bm25Language) == {name.lower() for name in dir(qdrant_edge.Language) if not name.startswith("_")}
    assert all(Bm25Encoder(language=language).encode_query("Haus") for language in Bm25Language)


def test_german_documents_are_searched_with_german_stems_and_stopwords(tmp_path, dense_encoder):
    """English stems leave "Häuser" and "Haus" two terms, and "und" and "die" count as words."""
    with _stack(tmp_path, dense_encoder, bm25_language="german") as german:
        german.indexer().index(GERMAN_DOCS, progress=False)
        assert german.check_schema().bm25_analyzer == "nfkc_cf+german+word"
        assert _sparse(german, "Haus") == ["haeuser"]
        assert _sparse(german, "Kind") == ["kinder"]
        assert _sparse(german, "spielt") == ["kinder"]
        assert _sparse(german, "und die") == []  # German stopwords: no term
    with _stack(tmp_path, dense_encoder, collection="en") as english:
        english.indexer().index(GERMAN_DOCS, progress=False)
        assert _sparse(english, "Haus") == [] and _sparse(english, "Kind") == []
        assert _sparse(english, "und die")  # English keeps them as terms


def test_the_language_is_a_checked_setting(monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_BM25_LANGUAGE", " German")
    assert RetrievalSettings(_env_file=None).bm25_language == "german"
    monkeypatch.setenv("HYBRID_RAG_BM25_LANGUAGE", "deutsch")
    with pytest.raises(ValueError, match=r"BM25_LANGUAGE='deutsch' \(environment\): .*did you mean german\?.*turkish"):
        RetrievalSettings(_env_file=None)
    monkeypatch.setenv("HYBRID_RAG_BM25_LANGUAGE", "frnech")
    with pytest.raises(ValueError, match=r"not a language BM25 supports \(did you mean french\?\); supported: arab"):
        RetrievalSettings(_env_file=None)
    monkeypatch.setenv("HYBRID_RAG_BM25_LANGUAGE", "french")
    monkeypatch.setenv("HYBRID_RAG_BM25_STOPWORDS", "lucene")
    conflict = r"BM25_STOPWORDS='lucene' \(environment\) is a list of English words: with HYBRID_RAG_BM25_LANGUAGE="
    with pytest.raises(ValueError, match=conflict):
        RetrievalSettings(_env_file=None)
    with pytest.raises(ValueError, match="BM25 language 'klingon': not a language"):
        Bm25Encoder(language="klingon")
    with pytest.raises(ValueError, match="'lucene' are English words"):
        Bm25Encoder(language="french", stopwords="lucene")


def test_english_analyzers_terms_and_cache_keys_are_unchanged():
    """The values the release before this setting gave: English collections and embedding caches stay valid."""
    for encoder in (Bm25Encoder(), Bm25Encoder(language="english"), Bm25Encoder.of_analyzer("nfkc_cf+word")):
        assert (encoder.analyzer, encoder.cache_key) == ("nfkc_cf+word", "edbd23de273f34c7")
        vector = encoder.encode_documents([ENGLISH_TEXT])[0]
        assert vector.indices == [164058840, 243905464, 729545593, 1790279870, 1888595001, 2146087727]
        assert vector.values == pytest.approx([1.665287] * 6, abs=1e-6)
        assert encoder.encode_query("running houses houses").values == [1.0, 2.0]
    lucene = Bm25Encoder(stopwords="lucene", tokenizer="multilingual")
    assert (lucene.analyzer, lucene.cache_key) == ("nfkc_cf+lucene_stop+multilingual", "579f7e4e80218b02")


def test_each_language_is_its_own_analyzer():
    german = Bm25Encoder(language="german")
    assert Bm25Encoder.of_analyzer("nfkc_cf+german+word").analyzer == german.analyzer == "nfkc_cf+german+word"
    assert Bm25Encoder.of_analyzer("nfkc_cf+chinese+multilingual").language == "chinese"
    assert len({german.cache_key, Bm25Encoder().cache_key, Bm25Encoder(language="french").cache_key}) == 3
    assert german.earlier("nfkc_casefold+word") is None  # English terms: another setting, not an earlier release
    assert german.encode_query("Häuser").indices == german.encode_query("Haus").indices
    assert Bm25Encoder().encode_query("Häuser").indices != Bm25Encoder().encode_query("Haus").indices


def test_an_english_collection_keeps_its_analyzer_under_another_language(tmp_path, dense_encoder, caplog):
    """As for another tokenizer or stopwords: searched with the collection's analyzer, a write refused until a
    rebuild, which moves it to the language's."""
    with _stack(tmp_path, dense_encoder) as english:
        english.indexer().index(GERMAN_DOCS, progress=False)
    with _stack(tmp_path, dense_encoder, bm25_language="german") as german:
        assert german.check_schema().bm25_analyzer == "nfkc_cf+word"
        with caplog.at_level("INFO", logger="retrieval.search"):
            assert _sparse(german, "Häuser") == ["haeuser"] and _sparse(german, "Haus") == []  # English terms
        assert "analyzer 'nfkc_cf+word' (settings: 'nfkc_cf+german+word')" in caplog.text
        with pytest.raises(SchemaMismatchError, match=r"bm25_analyzer: collection has 'nfkc_cf\+word'.*--rebuild"):
            german.indexer().index([Document("more", "Noch ein Haus.")], progress=False)
        german.indexer().rebuild(GERMAN_DOCS, progress=False)
        assert german.check_schema().bm25_analyzer == "nfkc_cf+german+word"
        assert _sparse(german, "Haus") == ["haeuser"]
