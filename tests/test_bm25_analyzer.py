"""BM25's analyzer: BM25_STOPWORDS=lucene keeps single letters and short words that name things ("vitamin D",
"T cell", "WHO") searchable; each analyzer is recorded by name, and a collection built with an earlier release's
analyzer keeps it until rebuilt."""

import pytest

from evals.reference import STOPWORDS as REFERENCE_STOPWORDS
from retrieval import Document, RetrievalSettings, RetrievalStack
from retrieval.encoders.sparse import LUCENE_STOPWORDS, Bm25Encoder

PREVIOUS = "nfkc_casefold+word"  # the previous release's analyzer: soft hyphens the only invisible character dropped
DOCS = [
    Document("vit-d", "Vitamin D deficiency is common in winter; supplements restore serum levels."),
    Document("vit-a", "Vitamin A deficiency causes night blindness; supplements restore serum levels."),
    Document("vit-c", "Vitamin C deficiency causes scurvy; supplements restore serum levels."),
    Document("t-cell", "Each T cell carries a receptor that recognises one antigen."),
    Document("cell", "The cell membrane separates the interior of a cell from its surroundings."),
    Document("who", "WHO guidelines recommend exclusive breastfeeding for six months."),
    Document("guide", "National guidelines on screening were updated this year."),
    Document("wbr", "Call getUser\u200bById to fetch one account."),
]


def _sparse(stack: RetrievalStack, query: str) -> list[str]:
    return [h.doc_id for h in stack.retriever().search(query, k=3, variant="sparse", rerank=False)]


def _stack(tmp_path, dense_encoder, sparse=None) -> RetrievalStack:
    settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="an")
    return RetrievalStack(settings, dense=dense_encoder, sparse=sparse or Bm25Encoder())


def test_lucene_stopwords_are_the_reference_bm25s():
    encoder = Bm25Encoder(stopwords="lucene")
    assert LUCENE_STOPWORDS == REFERENCE_STOPWORDS
    assert all(not encoder.encode_query(word) for word in LUCENE_STOPWORDS)
    kept = ["d", "t", "i", "y", "o", "s", "who", "all", "can", "me", "do", "more", "between", "after", "under"]
    assert all(len(encoder.encode_query(word)) == 1 for word in kept)
    assert not any(Bm25Encoder().encode_query(word) for word in kept)  # the default: Qdrant's (NLTK's) list


def test_with_lucene_stopwords_single_letters_and_short_words_that_name_things_are_searched(
    tmp_path, dense_encoder, monkeypatch
):
    """Under NLTK's list "vitamin D" searches "vitamin" (A, C and D tied), "T cell" "cell", "WHO" nothing."""
    monkeypatch.setenv("HYBRID_RAG_BM25_STOPWORDS", "lucene")
    settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="an")
    with RetrievalStack(settings, dense=dense_encoder) as stack:
        stack.indexer().index(DOCS, progress=False)
        assert stack.check_schema().bm25_analyzer == "nfkc_cf+lucene_stop+word"
        first, second, _ = stack.retriever().search("vitamin D", k=3, variant="sparse", rerank=False)
        assert first.doc_id == "vit-d" and first.score > second.score  # not tied with vitamin A and C
        assert _sparse(stack, "T cell")[0] == "t-cell"
        assert _sparse(stack, "WHO guidelines")[0] == "who"
        assert _sparse(stack, "WHO") == ["who"]
        assert _sparse(stack, "the") == []  # a stopword: no term (the CLI says so)
    monkeypatch.setenv("HYBRID_RAG_BM25_STOPWORDS", "sklearn")
    with pytest.raises(ValueError, match="HYBRID_RAG_BM25_STOPWORDS=.sklearn. \\(environment\\)"):
        RetrievalSettings()


def test_a_collection_of_the_previous_analyzer_keeps_it_until_rebuilt(tmp_path, dense_encoder, caplog):
    """Built with the previous normalization (a zero-width space split a word), a collection is searched and written
    with its analyzer (queries make the terms its documents made); a rebuild moves it to this release's."""
    with _stack(tmp_path, dense_encoder, Bm25Encoder.of_analyzer(PREVIOUS)) as old:
        old.indexer().index(DOCS[:-1], progress=False)
    with _stack(tmp_path, dense_encoder) as new:
        assert new.check_schema().bm25_analyzer == PREVIOUS
        with caplog.at_level("WARNING"):
            new.indexer().index(DOCS[-1:], progress=False)
        assert f"analyzer {PREVIOUS!r}" in caplog.text and "--rebuild" in caplog.text
        assert new.check_schema().bm25_analyzer == PREVIOUS
        assert _sparse(new, "getUser ById") == ["wbr"]  # written with the collection's terms (split at U+200B)
        assert _sparse(new, "getUserById") == []
        new.indexer().rebuild(DOCS, progress=False)
        assert new.check_schema().bm25_analyzer == Bm25Encoder().analyzer == "nfkc_cf+word"
        assert _sparse(new, "getUserById") == ["wbr"]


def test_only_an_earlier_normalization_of_the_same_settings_is_kept_on_writes():
    """Another tokenizer or other stopwords are changed settings (the write is refused), not an earlier release."""
    encoder, lucene = Bm25Encoder(), Bm25Encoder(stopwords="lucene")
    assert encoder.earlier(PREVIOUS).analyzer == PREVIOUS
    assert encoder.earlier("word").analyzer == "word"
    assert encoder.earlier("nfkc_casefold+multilingual") is None
    assert encoder.earlier(encoder.analyzer) is None
    assert encoder.earlier(lucene.analyzer) is None and lucene.earlier(PREVIOUS) is None
    assert Bm25Encoder.of_analyzer(PREVIOUS).earlier(encoder.analyzer) is None  # a later one is not earlier
    assert encoder.earlier("nfkc_cf+stemmed+word") is None  # unknown


def test_each_analyzer_is_recorded_by_its_name_and_has_its_own_cache_key():
    analyzers = ["word", PREVIOUS, "nfkc_cf+word", "nfkc_cf+lucene_stop+word", "nfkc_cf+lucene_stop+multilingual"]
    encoders = [Bm25Encoder.of_analyzer(a) for a in analyzers]
    assert [e.analyzer for e in encoders] == analyzers
    assert len({e.cache_key for e in encoders}) == len(analyzers)
