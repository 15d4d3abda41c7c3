"""Sparse encoders: BM25 term weights (Qdrant Edge's tokenizer) and SPLADE (sentence-transformers)."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import regex

from retrieval.encoders.language import SAMPLE_WORDS, StopwordCounts
from retrieval.encoders.runtime import fork_guard
from retrieval.errors import InvalidArgumentError, not_one_string
from retrieval.settings import Bm25Language, Bm25Stopwords, Bm25Tokenizer, check_bm25_language
from retrieval.wording import counted

LEGACY_ANALYZER = "word"  # what earlier releases used (no normalization); a collection that records none used it
# The stopwords of Lucene's (and Elasticsearch's) English analyzer, as bm25s and Pyserini use for BEIR: articles,
# conjunctions, prepositions and pronouns only, no single letters or words such as "who", "all" and "can" (Qdrant's
# default English list, NLTK's 179 words, drops the "D" of "vitamin D" and the "T" of "T cell"). BM25_STOPWORDS=lucene.
# fmt: off
LUCENE_STOPWORDS = frozenset([
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of",
    "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with",
])
# fmt: on
_IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}+")  # invisible: ZWSP, ZWJ, ZWNJ, BOM, soft hyphen...
_SOFT_HYPHEN = {ord("\u00ad"): None}
# Scripts written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar): the Word tokenizer makes a
# whole clause one term
UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1780-\u17ff\u1000-\u109f]")
UNSPACED_SHARE = 0.05  # of the letters and digits an encoder has encoded: above it, the word tokenizer warns (once)
_ALNUM = re.compile(r"[^\W_]")  # a letter or digit

log = logging.getLogger(__name__)


def normalize_text(text: str) -> str:
    """Text as BM25 reads it: Unicode's NFKC_Casefold, as ICU's ``nfkc_cf`` normalizer (Lucene, Elasticsearch)
    applies it: NFKC (composed accents, ligatures and full-width forms as plain letters and digits), case-folded
    (``ß`` -> ``ss``; ``İ`` -> ``i``), without the invisible (default ignorable) characters that would split a
    word: soft hyphen, zero-width space (what ``<wbr>`` becomes), zero-width joiner and non-joiner, word joiner,
    byte order mark, direction marks, variation selectors."""
    return _nfkc_casefold(_IGNORABLE.sub("", text))


def _nfkc_casefold(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return unicodedata.normalize("NFKC", folded.replace("i\u0307", "i"))  # casefold keeps İ's dot as a mark


def _normalize_v1(text: str) -> str:
    """The normalization of analyzer ``nfkc_casefold`` (kept for its collections): as :func:`normalize_text`, but
    of the invisible characters only soft hyphens are removed."""
    return _nfkc_casefold(text.translate(_SOFT_HYPHEN))


# The text normalization of each release's analyzer, by the name it records (first in the analyzer's name; "": the
# earliest releases', none), oldest first. Collections keep theirs until rebuilt; new ones get NORMALIZATION.
NORMALIZATIONS = {"": None, "nfkc_casefold": _normalize_v1, "nfkc_cf": normalize_text}
NORMALIZATION = "nfkc_cf"
_STOPWORDS = {Bm25Stopwords.NLTK: None, Bm25Stopwords.LUCENE: LUCENE_STOPWORDS}  # None: Qdrant's, of the language
_LUCENE_STOP = "lucene_stop"  # in an analyzer's name: BM25_STOPWORDS=lucene (none: nltk)


@dataclass(frozen=True)
class SparseVec:
    """A sparse vector as parallel arrays of term ids and weights."""

    indices: list[int]
    values: list[float]

    def __len__(self) -> int:
        return len(self.indices)


class Bm25Encoder:
    """BM25 document weights (saturated, length-normalized term frequency) and query term counts as query
    weights (as Okapi BM25 and Lucene score a repeated query term; Qdrant's ``embed_query`` gives every term
    weight 1, which lost 0.06 nDCG@10 on long SciFact queries).

    Term ids are hashes of the stemmed token, so no vocabulary is stored; the IDF factor is applied by
    Qdrant from the collection's statistics (sparse vector modifier ``idf``). Texts (documents and queries) are
    normalized first (:func:`normalize_text`), then split by ``tokenizer`` (``word`` or ``multilingual``);
    ``stopwords`` (``nltk``: Qdrant's default, NLTK's list of ``language``; ``lucene``: :data:`LUCENE_STOPWORDS`,
    English only) are dropped and the rest stemmed by Qdrant's Snowball stemmer of ``language`` (English by
    default; none for a language Snowball lacks). The normalization, the language, the stopwords and the tokenizer
    make the :attr:`analyzer` a collection records; the normalizations of earlier releases (:data:`NORMALIZATIONS`)
    are kept for their collections (:meth:`of_analyzer`).
    """

    name = "bm25"
    uses_idf_modifier = True

    def __init__(
        self,
        k1: float = 1.2,
        b: float = 0.75,
        avg_len: float = 256.0,
        tokenizer: str = "word",
        stopwords: str = "nltk",
        normalization: str = NORMALIZATION,
        language: str = "english",
    ):
        if tokenizer not in tuple(Bm25Tokenizer):
            raise InvalidArgumentError(f"BM25 tokenizer {tokenizer!r} is not one of {', '.join(Bm25Tokenizer)}")
        if stopwords not in tuple(Bm25Stopwords):
            raise InvalidArgumentError(f"BM25 stopwords {stopwords!r} are not one of {', '.join(Bm25Stopwords)}")
        if normalization not in NORMALIZATIONS:
            raise InvalidArgumentError(f"unknown BM25 normalization {normalization!r}")
        try:
            self.language = str(check_bm25_language(language))
        except ValueError as exc:
            raise InvalidArgumentError(f"BM25 language {language!r}: {exc}") from None
        if stopwords == Bm25Stopwords.LUCENE and self.language != Bm25Language.ENGLISH:
            raise InvalidArgumentError(f"BM25 stopwords 'lucene' are English words: not for language {language!r}")
        self.k1, self.b, self.avg_len = k1, b, avg_len
        self.tokenizer, self.stopwords, self.normalization = str(tokenizer), str(stopwords), normalization
        self._normalize, self._stopwords = NORMALIZATIONS[normalization], _STOPWORDS[Bm25Stopwords(stopwords)]
        self.lock = threading.RLock()  # held around each call, as for every encoder
        self._warned = False
        self._seen = [0, 0, 0]  # documents encoded: texts, letters and digits, and those of unspaced scripts
        self._stopwords_seen: StopwordCounts | None = StopwordCounts()  # None: the documents' language was judged

    @property
    def analyzer(self) -> str:
        """How texts become terms, as a collection records it:
        ``<normalization>[+<language>][+lucene_stop]+<tokenizer>`` (``nfkc_cf+word`` by default, ``nfkc_cf+german+word``
        for German: English, the default, is not named), or the tokenizer alone (``word``) for the analyzer of the
        earliest releases."""
        steps = [self.normalization] if self.normalization else []
        steps += [self.language] if self.language != Bm25Language.ENGLISH else []
        steps += [_LUCENE_STOP] if self.stopwords == Bm25Stopwords.LUCENE else []
        return "+".join([*steps, self.tokenizer])

    @classmethod
    def of_analyzer(cls, analyzer: str, k1: float = 1.2, b: float = 0.75, avg_len: float = 256.0) -> Bm25Encoder:
        """The encoder of a recorded :attr:`analyzer`."""
        *steps, tokenizer = analyzer.split("+")
        stopwords = Bm25Stopwords.LUCENE if steps[-1:] == [_LUCENE_STOP] else Bm25Stopwords.NLTK
        steps = steps[:-1] if stopwords == Bm25Stopwords.LUCENE else steps
        language = steps.pop() if steps[-1:] and steps[-1] in tuple(Bm25Language) else Bm25Language.ENGLISH
        if len(steps) > 1 or (steps and steps[0] not in NORMALIZATIONS) or steps == [""]:
            raise InvalidArgumentError(f"unknown BM25 analyzer {analyzer!r}")
        normalization = steps[0] if steps else ""
        return cls(
            k1=k1,
            b=b,
            avg_len=avg_len,
            tokenizer=tokenizer,
            stopwords=stopwords,
            normalization=normalization,
            language=language,
        )

    def with_analyzer(self, analyzer: str | None) -> Bm25Encoder:
        """This encoder, or one with the same parameters and the recorded ``analyzer`` (None: this one)."""
        if analyzer is None or analyzer == self.analyzer:
            return self
        return Bm25Encoder.of_analyzer(analyzer, k1=self.k1, b=self.b, avg_len=self.avg_len)

    def earlier(self, analyzer: str | None) -> Bm25Encoder | None:
        """The encoder of ``analyzer`` (a collection's) when an earlier release made it from this encoder's settings:
        an earlier normalization with the same language, stopwords and tokenizer (None otherwise: this analyzer,
        other settings, or unknown)."""
        try:
            theirs = self.with_analyzer(analyzer)
        except InvalidArgumentError:
            return None
        order = list(NORMALIZATIONS)
        earlier = order.index(theirs.normalization) < order.index(self.normalization)
        same = (theirs.tokenizer, theirs.stopwords, theirs.language) == (self.tokenizer, self.stopwords, self.language)
        return theirs if earlier and same else None

    def _config(self, **kwargs):
        import qdrant_edge

        tokenizer = qdrant_edge.TokenizerType.Multilingual if self.tokenizer == "multilingual" else None
        if self._stopwords is not None:
            kwargs["stopwords"] = qdrant_edge.StopwordsSet(custom=set(self._stopwords))
        return qdrant_edge.Bm25Config(**kwargs, tokenizer=tokenizer, language=self.language)

    def _prepared(self, texts: Sequence[str]) -> list[str]:
        return [self._normalize(t) for t in texts] if self._normalize else list(texts)

    @cached_property
    def _model(self):
        import qdrant_edge

        return qdrant_edge.Bm25(self._config(k=self.k1, b=self.b, avg_len=self.avg_len))

    @cached_property
    def _counts(self):
        """The same tokenizer with neither saturation nor length normalization: weights are term counts."""
        import qdrant_edge

        return qdrant_edge.Bm25(self._config(k=1e9, b=0.0))

    @property
    def cache_key(self) -> str:
        return hashlib.sha256(f"bm25|{self.k1}|{self.b}|{self.avg_len}|{self.analyzer}".encode()).hexdigest()[:16]

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVec]:
        not_one_string(texts, "encode_documents", "texts")
        if self.tokenizer == "word" and not self._warned:
            self._count_unspaced(texts)
        prepared = self._prepared(texts)
        if self._stopwords_seen is not None:
            self._judge_language(prepared)
        return [_from_edge(self._model.embed_document(t)) for t in prepared]

    def _judge_language(self, texts: Sequence[str]) -> None:
        """Warn once when the documents this encoder has encoded (a run's first :data:`SAMPLE_WORDS` words) look
        like another language than :attr:`language` (:meth:`StopwordCounts.looks`): BM25 then keeps their
        inflections apart and their stopwords as terms."""
        seen = self._stopwords_seen
        seen.add(texts, self.tokenizer)
        looks = seen.looks(self.language)
        if looks is not None:
            log.warning(
                "documents look %s (%.0f%% of the %s encoded so far are %s stopwords, %.0f%% %s): set "
                "HYBRID_RAG_BM25_LANGUAGE=%s and rebuild the collection (hybrid-rag index --rebuild) so that BM25 "
                "drops their stopwords and stems their words",
                looks.capitalize(),
                100 * seen.share(looks),
                counted(seen.words, "word"),
                looks.capitalize(),
                100 * seen.share(self.language),
                self.language.capitalize(),
                looks,
            )
        if looks is not None or seen.words >= SAMPLE_WORDS:
            self._stopwords_seen = None

    def _count_unspaced(self, texts: Sequence[str]) -> None:
        """Warn once when, over all the documents this encoder has encoded (a run's), more than
        :data:`UNSPACED_SHARE` of the letters and digits are of scripts written without spaces: an occasional
        Chinese word in English text is no reason to change the tokenizer."""
        seen = self._seen
        seen[0] += len(texts)
        seen[1] += sum(len(_ALNUM.findall(t)) for t in texts)
        seen[2] += sum(len(UNSPACED.findall(t)) for t in texts)
        if seen[2] > UNSPACED_SHARE * seen[1]:
            self._warned = True
            log.warning(
                "%.0f%% of the letters and digits in the %s encoded so far are Chinese, Japanese or Thai, which "
                "BM25's word tokenizer cannot split into words (a clause becomes one term: the sparse channel misses "
                "words inside it); for a corpus mostly in these languages set HYBRID_RAG_BM25_TOKENIZER=multilingual "
                "and rebuild the collection (hybrid-rag index --rebuild): it splits them into words but drops numbers "
                "(COVID-19 -> covid, 2024 -> nothing), which costs English text a little",
                100 * seen[2] / seen[1],
                counted(seen[0], "text"),
            )

    def encode_queries(self, texts: Sequence[str]) -> list[SparseVec]:
        not_one_string(texts, "encode_queries", "texts")
        return [_from_edge(self._counts.embed_document(t), rounded=True) for t in self._prepared(texts)]

    def encode_query(self, text: str) -> SparseVec:
        return self.encode_queries([text])[0]


class SpladeEncoder:
    """Learned sparse vectors from a sentence-transformers ``SparseEncoder`` (e.g. SPLADE)."""

    uses_idf_modifier = False

    def __init__(self, model_name: str, device: str | None = None, batch_size: int = 32):
        self.name = model_name
        self.device = device
        self.batch_size = batch_size
        self.lock = threading.RLock()  # held around each call: a tokenizer switches truncation settings per call
        self._fingerprint: str | None = None  # taken when the model is loaded

    @cached_property
    def model(self):
        from sentence_transformers import SparseEncoder

        from retrieval.encoders.fingerprint import model_fingerprint
        from retrieval.encoders.runtime import check_device, load_float32, select_device
        from retrieval.errors import ModelLoadError

        device = select_device(self.device)
        check_device(device)  # a ModelLoadError naming HYBRID_RAG_DENSE_DEVICE, which SPLADE runs on too
        if self._fingerprint is None:  # before loading: a change meanwhile gives another one next time
            self._fingerprint = model_fingerprint(self.name)
        try:
            model = load_float32(SparseEncoder, self.name, device)  # float32 whatever its checkpoint's dtype
        except (OSError, ValueError) as exc:
            raise ModelLoadError.wrapping(
                exc, "sparse", self.name, "HYBRID_RAG_SPARSE_MODEL: bm25, or a SPLADE model name or path"
            ) from exc
        if self._fingerprint == "hub:?":  # downloaded by the load
            self._fingerprint = model_fingerprint(self.name)
        return model

    @property
    def fingerprint(self) -> str:
        """What identifies the model's content (:func:`~retrieval.encoders.fingerprint.model_fingerprint`), taken
        once, without loading it: a SPLADE folder saved in place (e.g. fine-tuned) is another model."""
        if self._fingerprint is None:
            from retrieval.encoders.fingerprint import model_fingerprint

            self._fingerprint = model_fingerprint(self.name)
        return self._fingerprint

    @property
    def cache_key(self) -> str:
        """The model's name and content (a Dagster ``sparse_vectors`` table records it)."""
        return hashlib.sha256(f"splade|{self.name}|{self.fingerprint}".encode()).hexdigest()[:16]

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVec]:
        not_one_string(texts, "encode_documents", "texts")
        with fork_guard(str(self.model.device)):
            return self._convert(self.model.encode_document(list(texts), batch_size=self.batch_size))

    def encode_queries(self, texts: Sequence[str]) -> list[SparseVec]:
        not_one_string(texts, "encode_queries", "texts")
        with fork_guard(str(self.model.device)):
            return self._convert(self.model.encode_query(list(texts), batch_size=self.batch_size))

    def encode_query(self, text: str) -> SparseVec:
        return self.encode_queries([text])[0]

    @staticmethod
    def _convert(embeddings) -> list[SparseVec]:
        dense = (
            embeddings.to_dense().float().cpu().numpy()
            if hasattr(embeddings, "to_dense")
            else np.stack([e.to_dense().float().cpu().numpy() for e in embeddings])
        )
        out = []
        for row in np.atleast_2d(dense):
            nz = np.flatnonzero(row)
            out.append(SparseVec(nz.astype(int).tolist(), row[nz].astype(float).tolist()))
        return out


def _from_edge(vec, rounded: bool = False) -> SparseVec:
    values = [float(round(v)) for v in vec.values] if rounded else list(vec.values)
    return SparseVec(list(vec.indices), values)


def make_sparse_encoder(
    name: str,
    *,
    k1: float = 1.2,
    b: float = 0.75,
    avg_len: float = 256.0,
    tokenizer: str = "word",
    stopwords: str = "nltk",
    language: str = "english",
    device: str | None = None,
) -> Bm25Encoder | SpladeEncoder:
    """``bm25`` for BM25; any other value is a SPLADE model name or path."""
    if name.lower() == "bm25":
        return Bm25Encoder(k1=k1, b=b, avg_len=avg_len, tokenizer=tokenizer, stopwords=stopwords, language=language)
    return SpladeEncoder(name, device=device)
