"""The one owner of the retrieval parts: encoders, stores and the embedding cache; indexers and retrievers come
from it and share them (as qdrant-client's ``QdrantClient`` fronts its local and remote backends).

Each encoder carries its own lock (``encoder.lock``): whoever holds the encoder holds its lock, so every indexer
and retriever sharing an encoder takes turns on it.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from pydantic import ValidationError

from retrieval.adapted import AdaptedQueryEncoder, query_encoder_now
from retrieval.embedding_cache import EmbeddingCache
from retrieval.encoders import DenseEncoder
from retrieval.encoders.shared import shared_dense, shared_sparse
from retrieval.encoders.sparse import Bm25Encoder, SpladeEncoder
from retrieval.errors import ClosedError, InvalidArgumentError
from retrieval.indexer import Indexer
from retrieval.parts import Parts
from retrieval.search import HybridRetriever
from retrieval.settings import HeldSettings, RetrievalSettings, check_collection_name, redact_url, settings_problems
from retrieval.store import CollectionSchema, QdrantStore, SchemaMismatchError, StoreError, open_store

log = logging.getLogger(__name__)
# The settings that locate a stack's store: a retriever searches its stack's stores, so these come from derive().
STORE_SETTINGS = ("qdrant_path", "qdrant_url", "qdrant_api_key", "qdrant_timeout_s", "qdrant_retries")


def dense_args(settings: RetrievalSettings) -> dict[str, Any]:
    """The arguments of the dense (document) encoder the settings describe."""
    return {
        "model_name": settings.dense_model,
        "device": settings.dense_device,
        "batch_size": settings.dense_batch_size,
        "backend": settings.dense_backend,
        "query_prompt": settings.dense_query_prompt,
        "document_prompt": settings.dense_document_prompt,
        "cache_dir": settings.cache_dir,
    }


def sparse_args(settings: RetrievalSettings) -> dict[str, Any]:
    """The arguments of :func:`~retrieval.encoders.make_sparse_encoder` the settings describe."""
    return {
        "name": settings.sparse_model,
        "k1": settings.bm25_k1,
        "b": settings.bm25_b,
        "avg_len": settings.bm25_avg_len,
        "tokenizer": settings.bm25_tokenizer,
        "stopwords": settings.bm25_stopwords,
        "language": settings.bm25_language,
        "device": settings.dense_device,
    }


def query_args(settings: RetrievalSettings) -> dict[str, Any] | None:
    """What the query encoder depends on: the query model (``query_model``, else the folder of the collection's
    adapted one, followed while it changes) and the dense encoder; None without either."""
    if settings.query_model:
        return {"query_model": settings.query_model, **dense_args(settings)}
    if settings.adapted_query_model:
        return {"adapted_query_dir": str(settings.adapted_query_dir()), **dense_args(settings)}
    return None


def encoder_key(settings: RetrievalSettings) -> str:
    """The settings the encoders depend on: equal keys, interchangeable encoders."""
    return json.dumps([dense_args(settings), sparse_args(settings), query_args(settings)], default=str, sort_keys=True)


class RetrievalStack:
    """Encoders (dense, sparse, and the optional trained query encoder), stores (one per collection and version,
    opened on first use) and the embedding cache, built from :class:`RetrievalSettings`.

    ``stack.indexer()`` and ``stack.retriever()`` share these parts. Parts given here (``dense``, ``sparse``,
    ``store``) are used instead of building them. The stack closes its stores in :meth:`close` (or on leaving a
    ``with`` block), for good: the stack and its retrievers and indexers then raise
    :class:`~retrieval.errors.ClosedError`. Encoders need no closing; the ones built here are shared with the
    process's other stacks on the same models (:mod:`retrieval.encoders.shared`: loaded once, freed with the last
    holder, or forgotten by ``clear_shared_encoders()``). The stack keeps its own copy of ``settings``,
    checked however the object was made (changing the caller's object afterwards does not change the stack), and
    refuses assignment to it (``stack.settings``, its retrievers' and indexers'): :meth:`derive` makes another.
    """

    settings = HeldSettings()

    def __init__(
        self,
        settings: RetrievalSettings | None = None,
        *,
        dense: DenseEncoder | None = None,
        sparse: Bm25Encoder | SpladeEncoder | None = None,
        query_encoder: DenseEncoder | AdaptedQueryEncoder | None = None,
        store: QdrantStore | None = None,
    ):
        if settings is not None and not isinstance(settings, RetrievalSettings):
            raise InvalidArgumentError(
                f"settings must be RetrievalSettings, not {type(settings).__name__}: "
                "give RetrievalStack(RetrievalSettings(**values))"
            )
        self.settings = (settings if settings is not None else RetrievalSettings()).in_use_copy()
        s = self.settings
        self.dense = dense or shared_dense(**dense_args(s))
        self.sparse = sparse or shared_sparse(**sparse_args(s))
        if query_encoder is None and s.query_model:
            query_encoder = shared_dense(
                s.query_model,
                device=self.dense.device,
                batch_size=self.dense.batch_size,
                backend=self.dense.backend,  # an export of its own (the export folder fingerprints the model's files)
                cache_dir=self.dense.cache_dir,
                query_prompt=self.dense.query_prompt,
                setting="HYBRID_RAG_QUERY_MODEL",
            )
            log.info("query encoder %s (HYBRID_RAG_QUERY_MODEL), backend %s", s.query_model, self.dense.backend)
        elif query_encoder is None and s.adapted_query_model:
            query_encoder = AdaptedQueryEncoder(s, self.dense)  # followed: a new or removed one needs no restart
        self._query = query_encoder
        self.cache = EmbeddingCache(s.cache_dir / "embeddings.sqlite") if s.embedding_cache else None
        self._stores: dict[tuple[str, int | None], QdrantStore] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._default = (s.collection, None)  # the store of store()
        if store is not None:
            self._default = (store.collection, store.version)
            self._stores[self._default] = store

    def __repr__(self) -> str:
        s = self.settings
        where = redact_url(s.qdrant_url) if s.qdrant_url else str(s.qdrant_path)
        return f"RetrievalStack(collection={self._default[0]!r}, at={where!r})"

    # -- parts ----------------------------------------------------------------------------------------------
    @property
    def query_encoder(self) -> DenseEncoder:
        """The query encoder now: ``query_model``'s, else the collection's adapted one as saved now (see
        :class:`~retrieval.adapted.AdaptedQueryEncoder`), else the dense encoder."""
        return query_encoder_now(self._query, self.dense)

    def store(self, collection: str | None = None, version: int | None = None) -> QdrantStore:
        """The store of ``collection`` pinned to ``version`` when given, opened once; by default the store given
        to the stack, else the settings' collection."""
        if collection is not None:
            check_collection_name(collection)
        key = self._default if collection is None and version is None else (collection or self._default[0], version)
        with self._lock:
            if self._closed:
                raise ClosedError("this RetrievalStack is closed (closing is final): build a new one")
            if key not in self._stores:
                self._stores[key] = open_store(self.settings, key[0], version=version)
            return self._stores[key]

    def schema(self, recorded: CollectionSchema | None = None) -> CollectionSchema:
        """The schema of the vectors this stack's encoders make, chunked per its settings. Given the schema a
        collection ``recorded``, the dense model is not loaded when that schema records its content (the same
        fingerprint): its dimension, the one thing that needs the model, is then the recorded one."""
        was, now = recorded.dense_fingerprint if recorded else None, self.dense.fingerprint
        known = was is not None and was == now and not now.endswith("?")  # "hub:?": not cached, not known
        dim = recorded.dense_dim if known and recorded is not None else None
        return CollectionSchema.of(self.dense, self.sparse, self.settings, dense_dim=dim)

    def check_schema(self, collection: str | None = None, *, missing_ok: bool = False) -> CollectionSchema | None:
        """The collection's schema once checked against this stack's models (see :meth:`QdrantStore.check_schema`)."""
        return self.store(collection).check_schema(self.schema(), missing_ok=missing_ok)

    # -- what it hands out ----------------------------------------------------------------------------------
    def indexer(self, collection: str | None = None) -> Indexer:
        """An :class:`Indexer` on ``collection`` (default: the settings') with this stack's parts."""
        return Indexer(self._parts(collection, self._settings_for(collection), self))

    def retriever(self, collection: str | None = None, version: int | None = None, **overrides: Any) -> HybridRetriever:
        """A :class:`HybridRetriever` on ``collection`` (``version``: a pinned one, e.g. staged), with settings
        ``overrides`` (validated by :class:`RetrievalSettings`). Encoders whose settings the overrides leave
        unchanged are shared; the others are built for this retriever (with their own locks). It searches this
        stack's store: a different Qdrant location or connection is refused (use ``stack.derive(qdrant_path=...)``)."""
        settings = self._settings_for(collection, **overrides)
        moved = [name for name in STORE_SETTINGS if getattr(settings, name) != getattr(self.settings, name)]
        if moved:
            raise InvalidArgumentError(
                f"retriever() searches this stack's store, so {', '.join(moved)} cannot be overridden here: "
                f"use stack.derive({moved[0]}=...).retriever()"
            )
        same = encoder_key(settings) == encoder_key(self.settings)
        encoders = self if same else self.derive(**({"collection": collection} if collection else {}), **overrides)
        query = encoders.query_encoder  # a damaged adapted encoder (its marker) raises ModelLoadError here
        parts = self._parts(collection, settings, encoders, version)
        if query is not encoders.dense:
            check_query_dimension(query, parts.store)
        return HybridRetriever(parts)

    def derive(self, **overrides: Any) -> RetrievalStack:
        """A stack for the settings with ``overrides`` that shares this one's encoders where their settings are
        unchanged (its stores are its own)."""
        settings = self._settings_for(overrides.pop("collection", None), **overrides)
        same = {
            "dense": dense_args(settings) == dense_args(self.settings),
            "sparse": sparse_args(settings) == sparse_args(self.settings),
            "query_encoder": query_args(settings) == query_args(self.settings) is not None,
        }
        return RetrievalStack(
            settings,
            dense=self.dense if same["dense"] else None,
            sparse=self.sparse if same["sparse"] else None,
            query_encoder=self._query if same["query_encoder"] else None,
        )

    def close(self) -> None:
        """Close the stores this stack opened or was given and the embedding cache, for good (the encoders stay
        usable: :meth:`derive` and ``RetrievalStack(dense=...)`` share them); closing twice is harmless. One that
        fails to close does not keep the others open: each is closed, then the first error is raised (the others
        noted on it)."""
        with self._lock:
            self._closed = True
            stores, self._stores = list(self._stores.values()), {}
        errors: list[Exception] = []
        for part in [*stores, *([self.cache] if self.cache is not None else [])]:
            try:
                part.close()
            except Exception as exc:  # raised below, once everything is closed
                errors.append(exc)
        if errors:
            for other in errors[1:]:
                errors[0].add_note(f"closing the stack also failed: {type(other).__name__}: {other}")
            raise errors[0]

    def __enter__(self) -> RetrievalStack:
        return self

    def __copy__(self) -> RetrievalStack:
        """The stack itself: it is its open stores and loaded encoders, which a copy must not open again."""
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> RetrievalStack:
        return self

    def __reduce__(self) -> Any:
        raise TypeError(
            "cannot pickle a RetrievalStack (its stores are open): pickle its settings, or one of its retrievers, "
            "which reopens its collection when unpickled"
        )

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _parts(
        self, collection: str | None, settings: RetrievalSettings, encoders: RetrievalStack, version: int | None = None
    ) -> Parts:
        """This stack's store of ``collection`` (``version``) and cache, with the encoders of ``encoders``."""
        return Parts(
            settings,
            self.store(collection, version),
            encoders.dense,
            encoders.sparse,
            query_encoder=encoders._query,
            cache=self.cache,
        )

    def _settings_for(self, collection: str | None, **overrides: Any) -> RetrievalSettings:
        if collection is not None:
            overrides["collection"] = check_collection_name(collection)
        return self.settings.in_use_copy(**overrides) if overrides else self.settings


def check_query_dimension(query: DenseEncoder, store: QdrantStore) -> None:
    """Refuse a query encoder (``QUERY_MODEL``, an adapted one) whose vectors do not have the dimension of the
    collection's dense vectors (loads it). Nothing to check when the collection does not exist (yet)."""
    try:
        schema = store.schema()
    except StoreError:  # unreachable now: the search says so
        return
    if schema is not None and query.dimension != schema.dense_dim:
        raise SchemaMismatchError(
            f"{query.setting}: query model {query.model_name!r} gives {query.dimension}-dimensional vectors, but "
            f"collection {store.collection!r} at {store.location} holds {schema.dense_dim}-dimensional ones (dense "
            f"model {schema.dense_model!r}): use a query encoder trained from that model"
        )


def reopen(saved: dict[str, Any], version: int | None = None) -> HybridRetriever:
    """The retriever :meth:`HybridRetriever.saved` describes (how ``pickle`` and Haystack's ``from_dict`` reopen
    one), on a stack of its own (:func:`shared_stack`: encoders loaded once per process), closed with it; the settings
    not saved (the API key among them) from the environment, as ``RetrievalSettings()``."""
    try:
        settings = RetrievalSettings(**saved)
    except ValidationError as exc:
        raise InvalidArgumentError(f"saved retriever: {settings_problems(exc)}") from None
    stack = shared_stack(settings)
    try:
        retriever = stack.retriever(version=version)
    except BaseException:
        stack.close()
        raise
    retriever.own(stack)
    return retriever


_shared: dict[str, RetrievalStack] = {}
_shared_lock = threading.Lock()


def shared_stack(settings: RetrievalSettings) -> RetrievalStack:
    """A new stack for ``settings`` whose encoders stay loaded for the life of the process (for long-lived processes
    such as Dagster's, whose steps each build a stack: :mod:`retrieval.encoders.shared` alone would free them with
    each step's), and share the collection's followed adapted query encoder. Close it when done: its stores are
    its own."""
    key = encoder_key(settings)
    with _shared_lock:
        base = _shared.get(key)
        if base is None:  # a collection of its own (its adapted encoder is followed per collection): same models
            donor = next((b for b in _shared.values() if sparse_args(b.settings) == sparse_args(settings)), None)
            base = _shared[key] = RetrievalStack(settings, sparse=donor.sparse if donor else None)  # BM25's too
    return RetrievalStack(settings, dense=base.dense, sparse=base.sparse, query_encoder=base._query)
