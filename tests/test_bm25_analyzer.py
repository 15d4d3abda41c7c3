"""BM25's stopwords: Lucene's English list, so single letters and short words that name things ("vitamin D",
"T cell", "WHO") stay searchable; a collection built with the previous analyzer keeps it until rebuilt."""

from evals.reference import STOPWORDS as REFERENCE_STOPWORDS
from retrieval import Document, RetrievalSettings, RetrievalStack
from retrieval.encoders.sparse import LUCENE_STOPWORDS, Bm25Encoder

PREVIOUS = "nfkc_casefold+word"  # the analyzer before Lucene's stopwords (NLTK's 179 words) and NFKC_Casefold
DOCS = [
    Document("vit-d", "Vitamin D deficiency is common in winter; supplements restore serum levels."),
    Document("vit-a", "Vitamin A deficiency causes night blindness; supplements restore serum levels."),
    Document("vit-c", "Vitamin C deficiency causes scurvy; supplements restore serum levels."),
    Document("t-cell", "Each T cell carries a receptor that recognises one antigen."),
    Document("cell", "The cell membrane separates the interior of a cell from its surroundings."),
    Document("who", "WHO guidelines recommend exclusive breastfeeding for six months."),
    Document("guide", "National guidelines on screening were updated this year."),
]


def _sparse(stack: RetrievalStack, query: str) -> list[str]:
    return [h.doc_id for h in stack.retriever().search(query, k=3, variant="sparse", rerank=False)]


def _stack(tmp_path, dense_encoder, sparse=None) -> RetrievalStack:
    settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="an")
    return RetrievalStack(settings, dense=dense_encoder, sparse=sparse or Bm25Encoder())


def test_the_stopwords_are_lucenes_as_the_reference_bm25s():
    encoder = Bm25Encoder()
    assert LUCENE_STOPWORDS == REFERENCE_STOPWORDS
    assert all(not encoder.encode_query(word) for word in LUCENE_STOPWORDS)
    kept = ["d", "t", "i", "y", "o", "s", "who", "all", "can", "me", "do", "more", "between", "after", "under"]
    assert all(len(encoder.encode_query(word)) == 1 for word in kept)


def test_single_letters_and_short_words_that_name_things_are_searched(tmp_path, dense_encoder):
    """Under NLTK's list "vitamin D" searched "vitamin" (A, C and D tied), "T cell" searched "cell", "WHO" nothing."""
    with _stack(tmp_path, dense_encoder) as stack:
        stack.indexer().index(DOCS, progress=False)
        first, second, _ = stack.retriever().search("vitamin D", k=3, variant="sparse", rerank=False)
        assert first.doc_id == "vit-d" and first.score > second.score  # not tied with vitamin A and C
        assert _sparse(stack, "T cell")[0] == "t-cell"
        assert _sparse(stack, "WHO guidelines")[0] == "who"
        assert _sparse(stack, "WHO") == ["who"]
        assert _sparse(stack, "the") == []  # a stopword: no term (the CLI says so)


def test_a_collection_of_the_previous_analyzer_keeps_it_until_rebuilt(tmp_path, dense_encoder, caplog):
    """Built before Lucene's stopwords, a collection is searched and written with its analyzer (queries make the
    terms its documents made); a rebuild moves it to this release's."""
    with _stack(tmp_path, dense_encoder, Bm25Encoder.of_analyzer(PREVIOUS)) as old:
        old.indexer().index(DOCS, progress=False)
        assert old.check_schema().bm25_analyzer == PREVIOUS
    with _stack(tmp_path, dense_encoder) as new:
        assert new.check_schema().bm25_analyzer == PREVIOUS
        assert _sparse(new, "WHO") == []  # the previous analyzer's terms: "who" was a stopword
        with caplog.at_level("WARNING"):
            new.indexer().index([Document("wbr", "Call getUser\u200bById to fetch one account.")], progress=False)
        assert f"analyzer {PREVIOUS!r}" in caplog.text and "--rebuild" in caplog.text
        assert new.check_schema().bm25_analyzer == PREVIOUS
        assert _sparse(new, "getUser ById") == ["wbr"]  # written with the collection's terms (split at U+200B)
        new.indexer().rebuild([*DOCS, Document("wbr", "Call getUser\u200bById to fetch one account.")], progress=False)
        assert new.check_schema().bm25_analyzer == Bm25Encoder().analyzer == "nfkc_cf+lucene_stop+word"
        assert _sparse(new, "WHO") == ["who"]
        assert _sparse(new, "getUserById") == ["wbr"]


def test_a_collection_of_another_tokenizer_is_not_an_earlier_analyzer():
    """Only the settings' tokenizer under an earlier analysis is kept on writes: another is a changed setting."""
    encoder = Bm25Encoder()
    assert encoder.earlier(PREVIOUS).analyzer == PREVIOUS
    assert encoder.earlier("word").analyzer == "word"
    assert encoder.earlier("nfkc_casefold+multilingual") is None
    assert encoder.earlier(encoder.analyzer) is None
    assert Bm25Encoder.of_analyzer(PREVIOUS).earlier(encoder.analyzer) is None  # a later one is not earlier


def test_each_analyzer_is_recorded_by_its_name_and_has_its_own_cache_key():
    analyzers = ["word", PREVIOUS, "nfkc_cf+lucene_stop+word", "nfkc_cf+lucene_stop+multilingual"]
    encoders = [Bm25Encoder.of_analyzer(a) for a in analyzers]
    assert [e.analyzer for e in encoders] == analyzers
    assert len({e.cache_key for e in encoders}) == len(analyzers)
