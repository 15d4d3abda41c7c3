"""Which supported language a corpus looks like, by the share of its words that are each language's stopwords
(the lists BM25 drops: Qdrant's, NLTK's; the classic stopword-count language guess). It tells BM25 that the
documents are not in ``BM25_LANGUAGE``: their words then keep inflections apart and their stopwords count as terms."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

from retrieval.settings import Bm25Language

MIN_WORDS = 500  # words counted before a corpus's language is judged
SAMPLE_WORDS = 20_000  # words counted at most (a run's first documents): the cost stays bounded
LEAD = 2.0  # another language's stopword share must be at least this many times the configured language's...
MIN_SHARE = 0.2  # ...and at least this share of the words (natural text: 0.3 to 0.5 in its own language)
# Hinglish's list holds English's words (English text has more Hinglish than English stopwords): never guessed
CANDIDATES = tuple(language for language in Bm25Language if language != Bm25Language.HINGLISH)


@dataclass
class StopwordCounts:
    """Words counted and, per language, those that are its stopwords."""

    words: int = 0
    stopwords: Counter[str] = field(default_factory=Counter)

    def share(self, language: str) -> float:
        return self.stopwords[language] / self.words if self.words else 0.0

    def add(self, texts: Sequence[str], tokenizer: str = "word") -> None:
        """Count ``texts`` (normalized as BM25 reads them), split as ``tokenizer`` splits them, until
        :data:`SAMPLE_WORDS` words are counted."""
        everything, languages = _models(tokenizer)
        for text in texts:
            if self.words >= SAMPLE_WORDS:
                return
            words = _token_count(everything, text)
            self.words += words
            for language, model in languages.items():
                self.stopwords[language] += words - _token_count(model, text)

    def looks(self, configured: str) -> str | None:
        """The language the counted text looks like when it clearly is not ``configured``: its stopwords are at
        least :data:`MIN_SHARE` of the words and :data:`LEAD` times ``configured``'s share; None otherwise (or
        before :data:`MIN_WORDS` words)."""
        if self.words < MIN_WORDS:
            return None
        best = max(CANDIDATES, key=self.share)
        share = self.share(best)
        if best == configured or share < MIN_SHARE or share < LEAD * self.share(configured):
            return None
        return best


def _token_count(model, text: str) -> int:
    """The words of ``text`` that ``model`` (weights that are term counts) keeps."""
    return round(sum(model.embed_document(text).values))


@cache
def _models(tokenizer: str):
    """Qdrant Edge BM25 models whose weights are term counts, without stemming: one dropping no word, and one per
    language dropping its stopwords (Qdrant Edge does not expose the lists themselves)."""
    import qdrant_edge

    def model(stopwords):
        kind = qdrant_edge.TokenizerType.Multilingual if tokenizer == "multilingual" else None
        config = qdrant_edge.Bm25Config(
            k=1e9, b=0.0, tokenizer=kind, stopwords=stopwords, stemmer=qdrant_edge.DisabledStemmer()
        )
        return qdrant_edge.Bm25(config)

    none = model(qdrant_edge.StopwordsSet(custom=set()))
    return none, {str(lang): model(getattr(qdrant_edge.Language, lang.capitalize())) for lang in Bm25Language}
