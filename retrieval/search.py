"""Hybrid search: dense and sparse candidates from Qdrant, fused by chunk (by document with ``group_by="doc"``;
retrieval.fusion), then reranked (retrieval.rerank) and, when asked, diversified (retrieval.diversity)."""

from __future__ import annotations

import asyncio
import html
import logging
import math
import numbers
import threading
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.adapted import query_encoder_now
from retrieval.chunking import point_id
from retrieval.diversity import mmr_order
from retrieval.documents import has_lone_surrogate, short_repr
from retrieval.encoders import Bm25Encoder
from retrieval.encoders.sparse import SparseVec
from retrieval.errors import ClosedError, EmptyQueryError, InvalidArgumentError, choice, requires_extra
from retrieval.fusion import Fused, fuse, top_z
from retrieval.parts import Parts, describe
from retrieval.rerank import EmbeddingReranker, RerankConfig
from retrieval.settings import FusionMethod, HeldSettings, RerankMode, absolute_path, parse_payload_indexes, redact_url
from retrieval.store import CollectionSchema, EdgeStore, QueryPlan, StoredHit
from retrieval.store.base import filter_conditions, score_order
from retrieval.wording import counted

if TYPE_CHECKING:  # the adapters' extras stay optional: imported by the calls that return them
    from retrieval.haystack import HaystackRetriever
    from retrieval.langchain import LangChainRetriever
    from retrieval.llamaindex import LlamaIndexRetriever
    from retrieval.stack import RetrievalStack

log = logging.getLogger(__name__)


class Variant(StrEnum):
    """Which channels answer a query."""

    DENSE = "dense"
    SPARSE = "sparse"
    HYBRID = "hybrid"
    HYBRID_RERANK = "hybrid+rerank"

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels whose query vectors a search of this variant needs."""
        return {Variant.DENSE: ("dense",), Variant.SPARSE: ("sparse",)}.get(self, ("dense", "sparse"))


class GroupBy(StrEnum):
    """What one hit stands for: a chunk (default), or a document (its best chunk)."""

    CHUNK = "chunk"
    DOC = "doc"


MAX_K = 1_000_000_000  # hits per query; checked before the engine (whose limits are 64-bit, 64 * k for group_by="doc")

# group_by="doc": a channel list is deepened (its limit doubled) until it holds the documents wanted, reading at
# most this many chunks per document wanted
GROUP_MAX_CHUNKS_PER_DOC = 64


@dataclass(frozen=True)
class QueryVectors:
    """Queries encoded for the channels (:meth:`HybridRetriever.encode`), to search them again without encoding
    them again: ``dense`` (one row per query) made by the query encoder ``encoder``, ``sparse`` (one per query);
    None for a channel not encoded."""

    dense: np.ndarray | None = field(default=None, repr=False)
    sparse: list[SparseVec] | None = field(default=None, repr=False)
    encoder: Any = field(default=None, repr=False, compare=False)  # the DenseEncoder that made ``dense``

    def __len__(self) -> int:
        return len(self.dense if self.dense is not None else self.sparse or ())


@dataclass
class Hit:
    """One retrieved chunk with where it came from. ``dense_vector`` (the chunk's stored dense vector) is set only
    on :meth:`HybridRetriever.first_stage` hits asked ``with_vectors=True``; a search's hits never carry it."""

    doc_id: str
    chunk_id: str
    text: str
    score: float  # orders one query's hits; a hybrid search's comes from ranks: not comparable across queries
    chunk_index: int | None = None
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    dense_rank: int | None = None
    sparse_rank: int | None = None
    fused_rank: int | None = None
    dense_score: float | None = None  # the channel's raw score (cosine); None when not in its list
    sparse_score: float | None = None  # the channel's raw score (BM25); None when not in its list
    rerank_score: float | None = None
    start: int | None = None  # where ``text`` lies in the document's text (``text[start:end]``); None: not stored
    end: int | None = None
    dense_vector: np.ndarray | None = field(default=None, repr=False, compare=False)

    __repr__ = short_repr  # a listing of hits: each text's head and length, not 256 tokens of it

    @classmethod
    def from_fused(cls, fused: Fused, point: StoredHit, fused_rank: int | None = None) -> Hit:
        hit = cls(
            doc_id=fused.doc_id,
            chunk_id=fused.id,
            text="",
            score=fused.score,
            dense_rank=fused.ranks.get("dense"),
            sparse_rank=fused.ranks.get("sparse"),
            fused_rank=fused_rank,
            dense_score=fused.scores.get("dense"),
            sparse_score=fused.scores.get("sparse"),
            dense_vector=point.dense_vector,
        )
        if point.payload:
            hit.fill(point.payload)
        return hit

    def fill(self, payload: dict[str, Any]) -> None:
        """The stored fields of the chunk (text, title, metadata, chunk index, offsets) from its point's payload."""
        self.doc_id = str(payload.get("doc_id", self.doc_id))
        self.chunk_index = payload.get("chunk_index")
        self.text = payload.get("text", "")
        self.title = payload.get("title") or ""  # a string: "" for none
        self.metadata = payload.get("metadata", {}) or {}
        self.start, self.end = payload.get("start"), payload.get("end")  # None: written by an earlier release


SNIPPET_CHARS = 160  # of a hit's text in a notebook's table of hits


class Hits(list[Hit]):
    """A search's hits: a plain ``list`` of :class:`Hit` (equality, slicing, ``json``, pickling as a list) that a
    notebook shows as a table (rank, score, document id, title, the head of the text) instead of their reprs."""

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{name}</th>" for name in ("rank", "score", "doc_id", "title", "text"))
        rows = [
            f'<tr><td style="text-align: right">{rank}</td><td style="text-align: right">{hit.score:.4f}</td>'
            f'<td style="text-align: left">{html.escape(hit.doc_id)}</td>'
            f'<td style="text-align: left">{html.escape(hit.title)}</td>'
            f'<td style="text-align: left">{html.escape(_snippet(hit.text))}</td></tr>'
            for rank, hit in enumerate(self, 1)
        ]
        caption = f"<caption>{counted(len(self), 'hit')}</caption>"
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _snippet(text: str) -> str:
    """``text`` on one line, cut to :data:`SNIPPET_CHARS` characters (then ``…``)."""
    line = " ".join(text.split())
    return line if len(line) <= SNIPPET_CHARS else line[: SNIPPET_CHARS - 1] + "…"


class HybridRetriever:
    """``search(query)`` -> ranked :class:`Hit` list (:class:`Hits`); batched with ``search_batch``.

    Safe to share between threads. Each search first follows a rebuild of the collection (the embedded engine
    reopens the new version; a server resolves the alias), checks the schema again after a switch, reads that
    one version for all its requests (``store.reading()``), even when a writer publishes another meanwhile, and
    follows the collection's adapted query encoder (a new one saved by ``adapt``, or none after its removal).
    :attr:`last_timings` says where the calling thread's last search spent its time.
    """

    settings = HeldSettings()

    def __init__(self, parts: Parts):
        """A retriever over ``parts``; :meth:`retrieval.RetrievalStack.retriever` builds one (sharing its parts)."""
        if parts.settings.query_model and parts.query_encoder is None:
            raise InvalidArgumentError(
                f"settings name a query model ({parts.settings.query_model!r}): build the retriever with "
                "RetrievalStack(settings).retriever(), which loads it"
            )
        self.settings, self.store = parts.settings, parts.store
        self.dense, self.sparse = parts.dense, parts.sparse
        self._sparse = parts.sparse  # the settings' encoder; self.sparse: the one the collection's terms need
        self._query = parts.query_encoder  # an adapted one is followed on every search: no restart after `adapt`
        self.query_encoder = query_encoder_now(self._query, self.dense)
        self.reranker = EmbeddingReranker(
            self.dense, RerankConfig.from_settings(self.settings), query_encoder=self.query_encoder
        )
        self._checked = False
        self._closed = False
        self._timings = _Timings()
        self._owned: _OwnedStack | None = None  # the stack it opened for itself (reopened: unpickled, from_dict)

    @property
    def last_timings(self) -> dict[str, float]:
        """Where the calling thread's last search (``search``, ``search_batch``, ``first_stage``) spent its time,
        in seconds: ``open_s`` following the collection's current version (opening it, or reopening it after
        another process's write) and checking its schema (the first search loads the dense model here),
        ``encode_s`` encoding the queries, ``qdrant_s`` the engine's requests and fusion, ``rerank_s`` reranking
        (reranked searches only), ``diversity_s`` picking diverse hits (searches with a ``diversity`` only). Their
        sum is the search's wall time (within about a millisecond: checking the arguments).
        Kept per thread: threads sharing this retriever each read their own search's."""
        return self._timings.last

    def __repr__(self) -> str:
        return describe("HybridRetriever", self.store)

    # -- copies and pickles --------------------------------------------------------------------------------
    def __copy__(self) -> HybridRetriever:
        """A retriever on the same store, encoders and cache (nothing opened or loaded again), with its own
        :attr:`last_timings` and closing; its settings are read-only, so a deep copy is the same."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other._timings = _Timings()
        if self._owned is not None and not self._closed:
            self._owned.join()
        return other

    def __deepcopy__(self, memo: dict[int, Any]) -> HybridRetriever:
        return self.__copy__()

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any], int | None]]:
        """Pickled as what reopens it (:meth:`saved`): unpickling opens the collection again, on a stack of its
        own whose encoders load once per process (:func:`~retrieval.stack.reopen`)."""
        from retrieval.stack import reopen  # the stack module imports this one

        self._check_open()
        return reopen, self.saved()

    def saved(self) -> tuple[dict[str, Any], int | None]:
        """What reopens this retriever in another process (``pickle``, a saved Haystack pipeline): its collection,
        where it is (``qdrant_path``, ``qdrant_url``) and the settings that differ from the defaults (never the API
        key: the reopening process reads ``HYBRID_RAG_QDRANT_API_KEY``), and its pinned version (None: the published
        one). Refused (:class:`TypeError`) for a store the settings do not locate (one given to the stack, an
        in-memory one), and for a URL holding a password (:class:`InvalidArgumentError`)."""
        settings, store = self.settings, self.store
        url = settings.qdrant_url
        if url and redact_url(url) != url:
            raise InvalidArgumentError(
                f"cannot save a retriever whose Qdrant URL {redact_url(url)} holds credentials: give the URL "
                "without them and the key as HYBRID_RAG_QDRANT_API_KEY (read again where it is reopened)"
            )
        if isinstance(store, EdgeStore):
            located = not url and store.root == absolute_path(settings.qdrant_path)
        else:
            located = bool(url) and store.location == url and url != ":memory:"
        if not located:
            raise TypeError(
                f"cannot save {self!r}: its store was not opened from its settings (given to its RetrievalStack, or "
                "in memory), so they cannot reopen it elsewhere: pickle the RetrievalSettings and call "
                "RetrievalStack(settings).retriever() there (copy.deepcopy shares the store in this process)"
            )
        saved = settings.model_dump(mode="json", exclude={"qdrant_api_key"}, exclude_defaults=True)
        where = settings.model_dump(mode="json", include={"qdrant_path", "qdrant_url"})
        return saved | where | {"collection": store.collection}, store.version

    def own(self, stack: RetrievalStack) -> None:
        """Take ``stack`` as this retriever's own (it was opened for it): :meth:`close` closes it, once this
        retriever and its copies are all closed."""
        self._owned = _OwnedStack(stack)

    @property
    def own_stack(self) -> RetrievalStack | None:
        """The stack a reopened retriever (unpickled, a loaded Haystack pipeline's) opened for itself; None for
        one a stack handed out."""
        return self._owned.stack if self._owned is not None else None

    def check_schema(self) -> None:
        """Refuse to query a collection that is missing or whose vectors came from other models; encode BM25
        queries with the analyzer the collection's documents were encoded with (see :meth:`_follow_analyzer`)."""
        if not self._checked:
            self._follow_analyzer(self.store.check_schema(CollectionSchema.of(self.dense, self.sparse)))
            self._warn_missing_indexes()
            self._checked = True

    def _warn_missing_indexes(self) -> None:
        """Say which ``PAYLOAD_INDEXES`` the collection lacks (or has with another type): filters on such a key
        scan every point until a write adds the index."""
        wanted = parse_payload_indexes(self.settings.payload_indexes)
        missing = wanted and self.store.missing_payload_indexes(wanted)
        seen = (describe("", self.store), tuple(sorted(missing.items()))) if missing else None
        if seen is not None and seen not in _warned_indexes:  # once per process, not per retriever (one per request)
            _warned_indexes.add(seen)
            log.warning(
                "collection %r has no payload index for %s (PAYLOAD_INDEXES): filters on it scan every point until "
                "the next write (hybrid-rag index) adds it",
                self.store.collection,
                ", ".join(f"{key}:{kind}" for key, kind in missing.items()),
            )

    def _follow_analyzer(self, schema: CollectionSchema | None) -> None:
        """Queries must become the terms the documents became: a collection built with another BM25 analyzer
        (an earlier release's, or another ``BM25_TOKENIZER``, ``BM25_STOPWORDS`` or ``BM25_LANGUAGE``) keeps it until
        it is rebuilt."""
        recorded = schema.bm25_analyzer if schema is not None else None
        if not isinstance(self._sparse, Bm25Encoder) or recorded is None or recorded == self.sparse.analyzer:
            return
        self.sparse = self._sparse.with_analyzer(recorded)
        if self.sparse is self._sparse:
            return
        if self._sparse.earlier(recorded) is not None:  # an earlier release's, kept for writes too
            log.info(
                "collection %r holds BM25 terms made by analyzer %r (settings: %r): queries use it; rebuild the "
                "collection (hybrid-rag index --rebuild) to change it",
                self.store.collection,
                recorded,
                self._sparse.analyzer,
            )
            return
        seen = (describe("", self.store), recorded, self._sparse.analyzer)
        if seen in _warned_analyzers:  # once per process, not per retriever (one per request)
            return
        _warned_analyzers.add(seen)
        theirs, ours = self.sparse.language, self._sparse.language
        log.warning(
            "collection %r holds BM25 terms made by analyzer %r%s, not the settings' %r%s: searches use the "
            "collection's; rebuild it (hybrid-rag index --rebuild) to change it, or match the settings to it (a "
            "write with these is refused)",
            self.store.collection,
            recorded,
            f" (language {theirs})" if theirs != ours else "",
            self._sparse.analyzer,
            f" (HYBRID_RAG_BM25_LANGUAGE={ours})" if theirs != ours else "",
        )

    async def asearch(
        self,
        query: str,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        rerank: bool | None = None,
        variant: Variant | str = Variant.HYBRID,
        *,
        group_by: GroupBy | str = GroupBy.CHUNK,
        score_threshold: float | None = None,
        encoded: QueryVectors | None = None,
        diversity: float | None = None,
        diversity_depth: int | None = None,
    ) -> list[Hit]:
        """:meth:`search` in a worker thread, for event loops (the async adapters await it); afterwards the
        awaiting thread's :attr:`last_timings` are this search's."""

        def run() -> tuple[list[Hit], dict[str, float]]:
            hits = self.search(
                query,
                k,
                filter,
                rerank,
                variant,
                group_by=group_by,
                score_threshold=score_threshold,
                encoded=encoded,
                diversity=diversity,
                diversity_depth=diversity_depth,
            )
            return hits, dict(self._timings.last)

        hits, timings = await asyncio.to_thread(run)
        self._timings.last = timings
        return hits

    def search(
        self,
        query: str,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        rerank: bool | None = None,
        variant: Variant | str = Variant.HYBRID,
        *,
        group_by: GroupBy | str = GroupBy.CHUNK,
        score_threshold: float | None = None,
        encoded: QueryVectors | None = None,
        diversity: float | None = None,
        diversity_depth: int | None = None,
    ) -> list[Hit]:
        """The ``k`` best hits for ``query``; see :meth:`search_batch` for the arguments."""
        return self.search_batch(
            [query],
            k=k,
            filter=filter,
            rerank=rerank,
            variant=variant,
            group_by=group_by,
            score_threshold=score_threshold,
            encoded=encoded,
            diversity=diversity,
            diversity_depth=diversity_depth,
        )[0]

    def search_batch(
        self,
        queries: Sequence[str],
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        rerank: bool | None = None,
        variant: Variant | str = Variant.HYBRID,
        *,
        group_by: GroupBy | str = GroupBy.CHUNK,
        score_threshold: float | None = None,
        encoded: QueryVectors | None = None,
        diversity: float | None = None,
        diversity_depth: int | None = None,
    ) -> list[list[Hit]]:
        """Search many queries: one encoder call per channel, one batched Qdrant request for the channel lists
        (ids, scores and doc ids only), fusion here, then one request for the payloads of the hits kept.

        ``k`` (default: settings) hits per query; ``filter``: metadata conditions (see
        :func:`~retrieval.store.base.filter_conditions`); ``rerank`` (default: settings); ``variant``: the channels,
        ``dense``, ``sparse``, ``hybrid`` (default) or ``hybrid+rerank`` (hybrid reranked); ``group_by="doc"``:
        one hit per document, its best chunk (each channel's list then holds documents, ranked by their best chunk;
        fusion and reranking rank documents); ``score_threshold``: drop hits whose final ``score`` is lower (a
        hybrid search's score comes from the hit's ranks, so there it cuts by rank: warned once; to drop
        irrelevant hits, test ``dense_score``);
        ``encoded``: the queries' vectors from :meth:`encode` (not encoded again: searching the same queries
        several ways encodes them once); ``diversity``: from 0 to 1, maximal marginal relevance over the top
        ``diversity_depth`` candidates (default: settings, ``RERANK_DEPTH``), after fusion and reranking: each next
        hit trades its score for being unlike the hits before it (:mod:`retrieval.diversity`; None or 0: off).
        Empty queries, ``k`` or ``diversity_depth`` outside 1 to :data:`MAX_K`, ``rerank`` other than a bool or
        None (or one the ``variant`` contradicts: ``hybrid+rerank`` with False, ``dense``/``sparse`` with True), a
        ``score_threshold`` that is no finite number, a ``diversity`` outside 0 to 1, a bad filter and unknown names
        raise :class:`~retrieval.errors.InvalidArgumentError` before anything is encoded or queried.
        """
        k, group_by, pool = self._check_arguments(
            queries, k, group_by, score_threshold, rerank, filter, diversity, diversity_depth
        )
        variant, rerank = self._resolve_variant(variant, rerank)
        if score_threshold is not None and variant is Variant.HYBRID:
            _warn_threshold_by_rank()
        diverse = bool(diversity)
        pool = max(k, pool) if diverse else k  # the candidates MMR picks from
        depth = max(pool, self.reranker.config.depth) if rerank else pool  # chunks, or documents (group_by="doc")
        # Reranking by feedback and MMR need the candidates' stored vectors, not their text: payloads are then read
        # for the final hits only (the listwise prompt needs the candidates' text, so it reads them all).
        deferred = (rerank or diverse) and not (rerank and self.reranker.config.mode is RerankMode.PROMPT)
        with self._one_version():
            query_vectors, candidates = self.first_stage(
                queries,
                variant,
                depth,
                filter,
                with_vectors=rerank or diverse,
                with_payload=not deferred,
                group_by=group_by,
                encoded=encoded,
            )
            ranked = self._rerank_batch(queries, query_vectors, candidates) if rerank else candidates
            if diverse:
                ranked = self._diversify_batch(ranked, pool, k, diversity, score_threshold)
            results = [_finish(hits, k, score_threshold) for hits in ranked]
            for hit in (h for hits in results for h in hits):
                hit.dense_vector = None  # the reranker's input: hits have one shape whatever the variant
            return [Hits(hits) for hits in (self._fill_payloads(results) if deferred else results)]

    def check_arguments(
        self,
        k: int | None = None,
        filter: dict[str, Any] | None = None,
        rerank: bool | None = None,
        variant: Variant | str = Variant.HYBRID,
        group_by: GroupBy | str = GroupBy.CHUNK,
        score_threshold: float | None = None,
        diversity: float | None = None,
        diversity_depth: int | None = None,
    ) -> None:
        """Raise what :meth:`search` would raise for these arguments, without searching (the adapters check the
        arguments they are built with, so a bad ``k`` fails where it is given, not at the first query)."""
        self._check_arguments([], k, group_by, score_threshold, rerank, filter, diversity, diversity_depth)
        self._resolve_variant(variant, rerank)

    @contextmanager
    def _one_version(self) -> Iterator[None]:
        """Every store request inside reads the version current when the block begins, its schema checked
        (re-entrant); the outermost block starts this thread's :attr:`last_timings` with ``open_s``."""
        self._check_open()
        timings = self._timings
        started = time.perf_counter()
        if not timings.depth:
            timings.last = {}
        timings.depth += 1
        try:
            with self.store.reading() as switched:
                if switched:
                    self._checked = False
                self.check_schema()
                if timings.depth == 1:
                    timings.last["open_s"] = time.perf_counter() - started
                yield
        finally:
            timings.depth -= 1

    def _resolve_variant(self, variant: Variant | str, rerank: bool | None) -> tuple[Variant, bool]:
        """The first-stage variant and whether to rerank (``hybrid+rerank`` is hybrid reranked; only hybrid
        candidates are reranked; ``rerank=None``: as the settings say). An explicit ``rerank`` the variant
        contradicts (True for dense or sparse, False for ``hybrid+rerank``) is refused: it was ignored silently."""
        variant = choice(Variant, variant, "variant")
        if variant is Variant.HYBRID_RERANK:
            if rerank is False:
                raise InvalidArgumentError("variant 'hybrid+rerank' with rerank=False: use variant 'hybrid'")
            variant, rerank = Variant.HYBRID, True
        if rerank is True and variant is not Variant.HYBRID:
            raise InvalidArgumentError(
                f"rerank=True with variant {variant.value!r}: the reranker reorders hybrid candidates only "
                "(search variant 'hybrid', or leave rerank to the settings)"
            )
        rerank = self.settings.rerank if rerank is None else rerank
        return variant, rerank and variant is Variant.HYBRID

    def _rerank_batch(
        self, queries: Sequence[str], query_vectors: np.ndarray | None, candidates: list[list[Hit]]
    ) -> list[list[Hit]]:
        """Each query's candidates reranked (under the query encoder's lock: the reranker may encode)."""
        started = time.perf_counter()
        out = []
        for i, (query, hits) in enumerate(zip(queries, candidates, strict=True)):
            if hits:
                with self.reranker.query_encoder.lock:
                    hits = self._rerank(query, query_vectors[i], hits)
            out.append(hits)
        self._timings.last["rerank_s"] = time.perf_counter() - started
        return out

    def _diversify_batch(
        self, ranked: list[list[Hit]], pool: int, k: int, diversity: float, score_threshold: float | None
    ) -> list[list[Hit]]:
        """Each query's ``k`` hits picked by MMR (:func:`~retrieval.diversity.mmr_order`) from its top ``pool``
        candidates whose score passes ``score_threshold``; each keeps its score."""
        started = time.perf_counter()
        out = []
        for hits in ranked:
            hits = [h for h in hits[:pool] if score_threshold is None or h.score >= score_threshold]
            if hits:
                scores, vectors = np.array([h.score for h in hits]), np.stack([h.dense_vector for h in hits])
                hits = [hits[i] for i in mmr_order(scores, vectors, k, diversity)]
            out.append(hits)
        self._timings.last["diversity_s"] = time.perf_counter() - started
        return out

    def _fill_payloads(self, results: list[list[Hit]]) -> list[list[Hit]]:
        """Read the payloads of the final hits in one request (a point deleted meanwhile is dropped)."""
        started = time.perf_counter()
        points = self.store.points(sorted({h.chunk_id for hits in results for h in hits}))
        for hits in results:
            for hit in hits:
                if hit.chunk_id in points:
                    hit.fill(points[hit.chunk_id].payload)
        timings = self._timings.last
        timings["qdrant_s"] = timings.get("qdrant_s", 0.0) + time.perf_counter() - started
        return [[h for h in hits if h.chunk_id in points] for hits in results]

    def _check_arguments(
        self,
        queries: Sequence[str],
        k: int | None,
        group_by: GroupBy | str,
        score_threshold: float | None,
        rerank: bool | None,
        filter: dict[str, Any] | None,
        diversity: float | None = None,
        diversity_depth: int | None = None,
    ) -> tuple[int, GroupBy, int]:
        """``k``, ``group_by`` and the MMR candidates' depth checked (and the defaults filled in), the other
        arguments checked."""
        if isinstance(queries, str):
            raise InvalidArgumentError("search_batch takes a list of queries, not one string (use search)")
        for position, query in enumerate(queries):
            where = "" if len(queries) == 1 else f" (queries[{position}])"
            if not isinstance(query, str):
                raise InvalidArgumentError(f"query{where} must be a string, got {type(query).__name__} {query!r:.80}")
            if has_lone_surrogate(query):
                raise InvalidArgumentError(f"query{where} is not valid Unicode (lone surrogate, e.g. a cut emoji)")
            if not _visible(query):
                raise EmptyQueryError(f"empty query{where}: give some text to search for")
        k = _count("k", self.settings.k if k is None else k)
        depth = _count("diversity_depth", self.settings.rerank_depth if diversity_depth is None else diversity_depth)
        if diversity is not None and not (_finite(diversity) and 0 <= diversity <= 1):
            raise InvalidArgumentError(
                f"diversity must be a number from 0 (relevance only) to 1 (the most diverse), or None (off), "
                f"got {diversity!r}"
            )
        if score_threshold is not None and not _finite(score_threshold):
            raise InvalidArgumentError(f"score_threshold must be a finite number or None, got {score_threshold!r}")
        if rerank is not None and not isinstance(rerank, bool):
            raise InvalidArgumentError(f"rerank must be True, False or None (the settings), got {rerank!r}")
        filter_conditions(filter)  # a bad filter is refused here, before the queries are encoded
        return k, choice(GroupBy, group_by, "group_by"), depth

    def first_stage(
        self,
        queries: Sequence[str],
        variant: Variant | str,
        depth: int,
        filter: dict[str, Any] | None = None,
        with_vectors: bool = False,
        with_payload: bool = True,
        group_by: GroupBy | str = GroupBy.CHUNK,
        encoded: QueryVectors | None = None,
    ) -> tuple[np.ndarray | None, list[list[Hit]]]:
        """The query vectors (None for sparse only) and each query's top ``depth`` hits (documents with
        ``group_by="doc"``), before reranking (from one version of the collection); ``encoded``: the queries'
        vectors from :meth:`encode`."""
        with self._one_version():
            return self._first_stage(
                queries, variant, depth, filter, with_vectors, with_payload, GroupBy(group_by), encoded
            )

    def encode(self, queries: Sequence[str], variant: Variant | str = Variant.HYBRID) -> QueryVectors:
        """``queries`` encoded for the channels ``variant`` searches (the dense ones by the query encoder now), as a
        search encodes them: pass them to :meth:`search_batch` (``encoded=``) to search the same queries again."""
        variant = choice(Variant, variant, "variant")
        self.query_encoder = self.reranker.query_encoder = query_encoder_now(self._query, self.dense)
        dense_q, sparse_q = None, None
        if "dense" in variant.channels:
            encoder = self.query_encoder
            with encoder.lock:
                _warn_truncated(encoder, queries)
                dense_q = encoder.encode_queries(queries)
        if "sparse" in variant.channels:
            if not self._checked:
                self._follow_analyzer(self.store.schema())
            with self.sparse.lock:
                sparse_q = self.sparse.encode_queries(queries)
        return QueryVectors(dense_q, sparse_q, self.query_encoder)

    def _check_encoded(self, encoded: QueryVectors, n: int, variant: Variant) -> None:
        """Refuse vectors that do not fit the search: another number of queries, a channel the variant searches
        missing, dense vectors of another query encoder than the one queries use now."""
        if len(encoded) != n:
            raise InvalidArgumentError(
                f"encoded holds the vectors of {counted(len(encoded), 'query')}, not of the {n:,} searched"
            )
        missing = [name for name in variant.channels if getattr(encoded, name) is None]
        if missing:
            raise InvalidArgumentError(
                f"variant {variant.value} searches the {' and '.join(missing)} channel, but encoded has no "
                f"{' or '.join(missing)} vectors: encode the queries with retriever.encode(queries, {variant.value!r})"
            )
        if encoded.dense is not None and encoded.encoder is not self.query_encoder:
            raise InvalidArgumentError(
                f"encoded's dense vectors were made by another query encoder than the one queries use now "
                f"({self.query_encoder.model_name!r}; an adapted one was saved or removed since): encode them again"
            )

    def _first_stage(
        self,
        queries: Sequence[str],
        variant: Variant | str,
        depth: int,
        filter: dict[str, Any] | None,
        with_vectors: bool,
        with_payload: bool,
        group_by: GroupBy,
        encoded: QueryVectors | None = None,
    ) -> tuple[np.ndarray | None, list[list[Hit]]]:
        variant = Variant(variant)  # under _one_version: the schema is checked
        t0 = time.perf_counter()
        if encoded is None:
            encoded = self.encode(queries, variant)
        else:
            self.query_encoder = self.reranker.query_encoder = query_encoder_now(self._query, self.dense)
            self._check_encoded(encoded, len(queries), variant)
        dense_q = encoded.dense if "dense" in variant.channels else None
        sparse_q = encoded.sparse if "sparse" in variant.channels else None
        t1 = time.perf_counter()
        try:
            out = self.candidates(dense_q, sparse_q, depth, filter, with_vectors, with_payload, group_by)
        except Exception:
            self._checked = False  # was the collection rebuilt with other models meanwhile? Say so if it was.
            self.check_schema()
            raise
        self._timings.last.update(encode_s=t1 - t0, qdrant_s=time.perf_counter() - t1)
        return dense_q, out

    def candidates(
        self,
        dense_q: np.ndarray | None,
        sparse_q: Sequence[SparseVec] | None,
        depth: int,
        filter: dict[str, Any] | None = None,
        with_vectors: bool = False,
        with_payload: bool = True,
        group_by: GroupBy | str = GroupBy.CHUNK,
    ) -> list[list[Hit]]:
        """The Qdrant part of a search, from query vectors: one batched request for the channel lists (ids,
        scores, doc ids), fusion, then one request for the payloads (and vectors) of each query's top ``depth``.
        Without ``with_payload`` the hits carry ids, doc ids, ranks, scores (and vectors) only.

        ``group_by="doc"``: ``depth`` counts documents; each channel's list is deepened until it holds as many
        documents as a chunk list holds chunks (or the channel has no more), and fused by document
        (:meth:`fuse_documents`)."""
        self._check_open()
        names = [name for name, q in (("dense", dense_q), ("sparse", sparse_q)) if q is not None]
        n = len(dense_q if dense_q is not None else sparse_q)
        hybrid = len(names) == 2
        channel_k = max(self.settings.prefetch_k, depth) if hybrid else depth
        plans = []
        for i in range(n):
            if dense_q is not None:
                plans.append(QueryPlan(dense=dense_q[i], limit=channel_k, filter=filter, with_payload=("doc_id",)))
            if sparse_q is not None:
                plans.append(QueryPlan(sparse=sparse_q[i], limit=channel_k, filter=filter, with_payload=("doc_id",)))
        results = self.store.query_batch(plans)
        by_doc = GroupBy(group_by) is GroupBy.DOC
        if by_doc:
            results = self._deepened(plans, results, channel_k)
        results = self._written(results)
        fuse = self.fuse_documents if by_doc else self.fuse
        step = len(names)
        fused = [
            fuse({name: results[i * step + j] for j, name in enumerate(names)}, channel_k)[:depth] for i in range(n)
        ]
        ids = sorted({f.id for fs in fused for f in fs})
        if with_payload:
            points = self.store.points(ids, with_dense_vectors=with_vectors)
        elif with_vectors:
            points = {pid: StoredHit(pid, 0.0, dense_vector=v) for pid, v in self.store.dense_vectors(ids).items()}
        else:
            points = {pid: StoredHit(pid, 0.0) for pid in ids}
        return [
            [Hit.from_fused(f, points[f.id], r if hybrid else None) for r, f in enumerate(fs, 1) if f.id in points]
            for fs in fused
        ]

    def _written(self, results: list[list[StoredHit]]) -> list[list[StoredHit]]:
        """The channel lists without the points hybrid-rag did not write (no ``doc_id``: another tool's, e.g.
        langchain-qdrant writing into the collection), which are named in a warning: they are no documents."""
        foreign = {h.id for hits in results for h in hits if not isinstance(h.payload.get("doc_id"), str)}
        if not foreign:
            return results
        log.warning(
            "collection %r at %s: leaving out %s hybrid-rag did not write (no doc_id payload): %s",
            self.store.collection,
            self.store.location,
            counted(len(foreign), "point"),
            ", ".join(sorted(foreign)[:5]) + (" ..." if len(foreign) > 5 else ""),
        )
        return [[h for h in hits if h.id not in foreign] for hits in results]

    def _deepened(self, plans: list[QueryPlan], results: list[list[StoredHit]], wanted: int) -> list[list[StoredHit]]:
        """Each channel list that holds fewer than ``wanted`` documents queried again with twice the limit (one
        batched request a round, at most ``GROUP_MAX_CHUNKS_PER_DOC * wanted`` chunks), until it holds them or
        the channel has no more chunks (it returned fewer than its limit)."""
        cap = GROUP_MAX_CHUNKS_PER_DOC * wanted
        plans, results = list(plans), list(results)
        while short := [
            i
            for i, (plan, hits) in enumerate(zip(plans, results, strict=True))
            if len(hits) >= plan.limit and plan.limit < cap and len(_documents(hits)) < wanted
        ]:
            for i in short:
                plans[i] = replace(plans[i], limit=min(2 * plans[i].limit, cap))
            for i, hits in zip(short, self.store.query_batch([plans[i] for i in short]), strict=True):
                results[i] = hits
        return results

    def fuse_documents(self, channels: dict[str, Sequence[StoredHit]], depth: int | None = None) -> list[Fused]:
        """One query's channel lists fused by document (``group_by="doc"``): a document's rank and score in a
        channel are its best chunk's there; each document is represented by its best chunk in :meth:`fuse` of
        the chunk lists. ``depth``: documents asked of each channel (see :meth:`fuse`)."""
        channels = _score_order(channels)
        best_chunk: dict[str, str] = {}
        for f in self.fuse(channels):
            best_chunk.setdefault(f.doc_id, f.id)
        documents = {name: list(_documents(hits).values()) for name, hits in channels.items()}
        return [replace(f, id=best_chunk[f.doc_id]) for f in self.fuse(documents, depth)]

    def fuse(self, channels: dict[str, Sequence[StoredHit]], depth: int | None = None) -> list[Fused]:
        """One query's channel lists fused as the settings say (a single channel keeps its own order): by
        z-scores when the sparse list's best hit stands out (``zscore_fusion_above``), else by ``fusion``.

        ``depth``: hits asked of each channel (default: the longest list's length), capped by the longest list
        (the dense channel returns every matching chunk up to it). A sparse list shorter than that ran out: every
        other candidate has a BM25 score of 0, so its z-scores (the standout test's too) count those zeros."""
        s, channels = self.settings, _score_order(channels)
        longest = max(map(len, channels.values()), default=0)
        depth = longest if depth is None else min(depth, longest)
        sparse = channels.get("sparse", ())
        confident = s.zscore_fusion_above is not None and top_z(sparse, depth) > s.zscore_fusion_above
        method = FusionMethod.ZSCORE if confident else s.fusion
        weights = {"dense": s.dense_weight, "sparse": s.sparse_weight}
        return fuse(channels, method=method, rrf_k=s.rrf_k, weights=weights, depth=depth)

    def _rerank(self, query: str, query_vector: np.ndarray, hits: list[Hit]) -> list[Hit]:
        vectors = np.stack([h.dense_vector for h in hits])
        texts = [h.text for h in hits]
        rerank_scores = self.reranker.scores(query, query_vector, texts, vectors, agreement_ranks(hits))
        final = self.reranker.fuse(rerank_scores, len(hits))
        for i, (hit, fs) in enumerate(zip(hits, final, strict=True)):
            hit.rerank_score, hit.score = (float(rerank_scores[i]) if rerank_scores is not None else None), float(fs)
        return sorted(hits, key=lambda h: (-h.score, h.chunk_id))

    def neighbours(self, doc_id: str, chunk_index: int, before: int = 1, after: int = 1) -> list[Hit]:
        """The chunks of document ``doc_id`` around its chunk ``chunk_index`` (a hit's ``doc_id`` and
        ``chunk_index``, or an adapter's metadata of those names), in document order: up to ``before`` chunks
        before it, the chunk itself, up to ``after`` after it (fewer at the document's edges), read from the
        version current now. They carry their text, offsets, title and metadata; ``score`` 0.0 and no ranks (they
        were not searched for). Consecutive chunks overlap by ``CHUNK_OVERLAP`` tokens: a chunk's new text is
        ``chunk.text[previous.end - chunk.start:]``."""
        if not isinstance(doc_id, str):
            raise InvalidArgumentError(f"doc_id must be a string, got {type(doc_id).__name__} {doc_id!r:.80}")
        for name, value in (("chunk_index", chunk_index), ("before", before), ("after", after)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
        first, last = max(0, int(chunk_index) - int(before)), int(chunk_index) + int(after)
        ids = [point_id(doc_id, i) for i in range(first, last + 1)]
        with self._one_version():
            points = self.store.points(ids)
        out = []
        for pid in ids:
            if pid in points and points[pid].payload.get("doc_id") == doc_id:
                chunk = Hit(doc_id=doc_id, chunk_id=pid, text="", score=0.0)
                chunk.fill(points[pid].payload)
                out.append(chunk)
        return Hits(out)

    def as_langchain(
        self, search_kwargs: dict[str, Any] | None = None, search_type: str = "similarity", **kwargs: Any
    ) -> LangChainRetriever:
        """This retriever as a LangChain ``BaseRetriever``.

        ``search_kwargs`` (k, filter, rerank, variant, group_by, score_threshold, diversity, diversity_depth) are
        the defaults of every call, as in LangChain's ``VectorStoreRetriever``; ``as_langchain(k=5)`` is short for
        ``as_langchain(search_kwargs={"k": 5})``; ``invoke(query, k=3)`` overrides them for one call.
        ``search_type="mmr"`` also takes LangChain's ``lambda_mult`` (default 0.5) and ``fetch_k``, searched as
        ``diversity=1 - lambda_mult`` and ``diversity_depth=fetch_k``. ``name``, ``tags`` and ``metadata`` are the
        ``BaseRetriever``'s own (tracing and callbacks see them), as LangChain's ``as_retriever`` takes them.
        """
        from retrieval.langchain import RUNNABLE_FIELDS, LangChainRetriever

        fields = {key: kwargs.pop(key) for key in RUNNABLE_FIELDS if key in kwargs}
        search_kwargs = {**(search_kwargs or {}), **kwargs}
        return LangChainRetriever(retriever=self, search_type=search_type, search_kwargs=search_kwargs, **fields)

    def as_llamaindex(self, **kwargs: Any) -> LlamaIndexRetriever:
        """This retriever as a LlamaIndex ``BaseRetriever`` (extra ``[llamaindex]``; without it a
        :class:`~retrieval.errors.MissingExtraError`): ``k``, ``filter`` (also LlamaIndex's ``MetadataFilters``) and
        ``rerank`` as :meth:`search` takes them, for every call; LlamaIndex's ``BaseRetriever`` takes
        ``callback_manager`` and ``verbose``."""
        with requires_extra("llamaindex", "llama_index", "as_llamaindex()"):
            from retrieval.llamaindex import LlamaIndexRetriever

        return LlamaIndexRetriever(self, **kwargs)

    def as_haystack(self, **kwargs: Any) -> HaystackRetriever:
        """This retriever as a Haystack 2 component (extra ``[haystack]``; without it a
        :class:`~retrieval.errors.MissingExtraError`): ``top_k``, ``filters`` (Haystack's filter syntax, or this
        library's dicts) and ``rerank``, the defaults of its ``run(query, top_k, filters)``."""
        with requires_extra("haystack", "haystack", "as_haystack()"):
            from retrieval.haystack import HaystackRetriever, check_names

        check_names(kwargs)
        return HaystackRetriever(self, **kwargs)

    def close(self) -> None:
        """Stop using this retriever: later searches through it raise :class:`~retrieval.errors.ClosedError`.

        The store, encoders and cache it shares with its stack (and the stack's other retrievers and indexers) stay
        open, so a retriever per request costs nothing: :meth:`RetrievalStack.close` closes them. A reopened
        retriever's own stack (:attr:`own_stack`) closes with the last of it and its copies to close."""
        if not self._closed and self._owned is not None:
            self._owned.leave()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(
                f"this retriever of collection {self.store.collection!r} is closed (closing is final): get another "
                "one from its RetrievalStack"
            )


_warned_indexes: set[tuple[str, tuple[tuple[str, str], ...]]] = set()  # (store, missing indexes) warned about
_warned_analyzers: set[tuple[str, str, str]] = set()  # (store, its analyzer, the settings') warned about
_warned_threshold = False  # whether a score_threshold on a hybrid search was warned about (once per process)
_warned_truncated = False  # whether a query longer than the dense model's token limit was warned about (once)


class _OwnedStack:
    """A reopened retriever's own stack and how many of it and its copies are open: the last to close closes it."""

    def __init__(self, stack: RetrievalStack) -> None:
        self.stack, self.users, self.lock = stack, 1, threading.Lock()

    def join(self) -> None:
        with self.lock:
            self.users += 1

    def leave(self) -> None:
        with self.lock:
            self.users -= 1
            last = self.users == 0
        if last:
            self.stack.close()


class _Timings(threading.local):
    """One thread's :attr:`HybridRetriever.last_timings` and how deep it is in nested version blocks (the
    outermost starts a search's timings)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.depth = 0


def _warn_threshold_by_rank() -> None:
    """Say once that a hybrid search's ``score_threshold`` is a cut by rank, not by relevance."""
    global _warned_threshold
    if not _warned_threshold:
        _warned_threshold = True
        log.warning(
            "score_threshold on a hybrid search cuts by rank: a hybrid hit's score comes from its ranks in the "
            "channel lists (rank fusion, reranking), about the same for every query whether its hits are relevant "
            "or not; to drop irrelevant hits test hit.dense_score, the query-chunk cosine (README: Search)"
        )


def _warn_truncated(encoder: Any, queries: Sequence[str]) -> None:
    """Say once per process that a query is longer than the dense model reads: the dense channel (and the reranker's
    pseudo-query) see its first ``max_tokens`` tokens only, BM25 all of it (a pasted page or a chat history)."""
    global _warned_truncated
    if _warned_truncated:
        return
    prompt, limit = encoder.query_prompt or "", encoder.max_tokens
    # a token holds one UTF-8 byte at least: only a query of more bytes than the limit (special tokens
    # aside) can be cut, so the common short query is never tokenized here
    for query in queries:
        if len((prompt + query).encode()) + 4 <= limit:
            continue
        tokens = len(encoder.tokenizer(prompt + query, truncation=False, verbose=False)["input_ids"])
        if tokens > limit:
            _warned_truncated = True
            log.warning(
                "a query of %d tokens is longer than dense model %r reads (%d tokens): the dense channel and the "
                "reranker see its first %d tokens only, BM25 all of it; search with a shorter query (the question, "
                "not the whole conversation or document) to be matched on all of it (warned once)",
                tokens,
                encoder.model_name,
                limit,
                limit,
            )
            return


def _score_order(channels: dict[str, Sequence[StoredHit]]) -> dict[str, list[StoredHit]]:
    """Each channel's list in :func:`~retrieval.store.base.score_order` (lists given to :meth:`fuse` directly
    need not come from ``store.query_batch``, which returns that order)."""
    return {name: score_order(hits) for name, hits in channels.items()}


def _visible(text: str) -> bool:
    """Whether ``text`` holds a letter, mark, digit, punctuation or symbol: not only spaces, control characters and
    invisible format characters (a zero-width space, a byte order mark, a soft hyphen, NUL), which no channel reads."""
    return any(unicodedata.category(char) not in ("Zs", "Zl", "Zp", "Cc", "Cf") for char in text)


def _finite(value: Any) -> bool:
    """A real number (an int or float, numpy's too; not a bool) that is neither NaN nor infinite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _documents(hits: Sequence[StoredHit]) -> dict[str, StoredHit]:
    """The best chunk of each document in a channel list (best first) as a hit keyed by the document id."""
    best: dict[str, StoredHit] = {}
    for hit in hits:
        doc_id = str(hit.payload.get("doc_id", ""))
        if doc_id not in best:
            best[doc_id] = StoredHit(doc_id, hit.score, {"doc_id": doc_id})
    return best


def agreement_ranks(hits: Sequence[Hit]) -> list[tuple[int | None, int | None]]:
    """Each hit's (dense, sparse) rank for the reranker's agreement gate: the last rank among the hits tied with
    its score in that channel (None: not in its list). The order within a tie is arbitrary (80 tickets that share
    only a term of no weight, `jira`, score alike), so a hit is within a channel's top N only when its tie is."""
    last: dict[tuple[str, float | None], int] = {}
    for h in hits:
        for name, rank, score in (("dense", h.dense_rank, h.dense_score), ("sparse", h.sparse_rank, h.sparse_score)):
            if rank is not None:
                last[name, score] = max(last.get((name, score), rank), rank)
    return [
        (
            None if h.dense_rank is None else last["dense", h.dense_score],
            None if h.sparse_rank is None else last["sparse", h.sparse_score],
        )
        for h in hits
    ]


def _count(name: str, value: Any) -> int:
    """``value`` as a number of hits (``k``, ``diversity_depth``): an integer (numpy's too) from 1 to MAX_K."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    if value > MAX_K:
        shown = f"{value:,}" if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
        raise InvalidArgumentError(f"{name} must be at most {MAX_K:,}, got {shown}")
    return value


def _finish(hits: list[Hit], k: int, score_threshold: float | None) -> list[Hit]:
    """The final list: scores >= threshold, at most k."""
    if score_threshold is not None:
        hits = [h for h in hits if h.score >= score_threshold]
    return hits[:k]
