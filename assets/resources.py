"""Dagster resources: retrieval settings with the Qdrant store and encoders, the corpora file, the eval history.

Every field left unset falls back to :class:`retrieval.RetrievalSettings`, which reads ``HYBRID_RAG_*``
environment variables itself; :meth:`RetrievalResource.from_env` wires the set ones as ``dagster.EnvVar``
so the UI shows variable names, never values (the Qdrant API key in particular is never logged or written
to metadata).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field

from assets.corpora import Corpora, CorpusConfig, load_corpora
from retrieval import HybridRetriever, Indexer, RetrievalSettings
from retrieval.encoders import DenseEncoder
from retrieval.encoders.sparse import Bm25Encoder, SpladeEncoder
from retrieval.indexer import build_encoders
from retrieval.store import QdrantStore, open_store

DEFAULT_HISTORY = "data/history/evals.sqlite"
DEFAULT_ASSETS_DIR = "data/assets"
ENV_FIELDS = ("qdrant_url", "qdrant_api_key", "qdrant_path", "dense_model", "sparse_model", "dense_device", "cache_dir")
_ENCODER_FIELDS = (
    "dense_model",
    "dense_backend",
    "dense_device",
    "dense_batch_size",
    "dense_query_prompt",
    "dense_document_prompt",
    "sparse_model",
    "bm25_k1",
    "bm25_b",
    "bm25_avg_len",
)
Encoders = tuple[DenseEncoder, Bm25Encoder | SpladeEncoder]
_encoders: dict[tuple[str, ...], Encoders] = {}
_encoders_lock = threading.Lock()


def shared_encoders(settings: RetrievalSettings) -> Encoders:
    """The encoders for ``settings``, built (and their models loaded) once per process."""
    key = tuple(str(getattr(settings, name)) for name in _ENCODER_FIELDS)
    with _encoders_lock:
        if key not in _encoders:
            _quiet_model_loading()
            _encoders[key] = build_encoders(settings)
        return _encoders[key]


def _quiet_model_loading() -> None:
    """No model-loading progress bars in run logs (they are terminal animations, not log lines)."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


class RetrievalResource(dg.ConfigurableResource):
    """Retrieval settings for the assets; ``None`` means "as RetrievalSettings reads it from the environment"."""

    qdrant_url: str | None = Field(default=None, description="Qdrant server URL; unset: embedded Qdrant Edge")
    qdrant_api_key: str | None = Field(default=None, description="Qdrant API key (pass it as an EnvVar)")
    qdrant_path: str | None = Field(default=None, description="Data folder of the embedded engine")
    dense_model: str | None = None
    sparse_model: str | None = None
    dense_device: str | None = None
    cache_dir: str | None = Field(default=None, description="Embedding cache folder")
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in type(self).model_fields}

    @classmethod
    def from_env(cls, **overrides: Any) -> RetrievalResource:
        """Fields of :data:`ENV_FIELDS` whose ``HYBRID_RAG_<FIELD>`` variable is set, as ``dg.EnvVar``."""
        fields: dict[str, Any] = {}
        for name in ENV_FIELDS:
            var = f"HYBRID_RAG_{name.upper()}"
            if os.environ.get(var):
                fields[name] = dg.EnvVar(var)
        return cls(**{**fields, **overrides})

    def settings(self, collection: str | None = None, **overrides: Any) -> RetrievalSettings:
        """RetrievalSettings from the environment, this resource's fields and ``overrides`` (in rising priority)."""
        given = {name: value for name, value in self._fields().items() if value is not None}
        if collection:
            given["collection"] = collection
        return RetrievalSettings(**given, **overrides)

    def encoders(self) -> Encoders:
        return shared_encoders(self.settings())

    @contextmanager
    def store(self, collection: str, version: int | None = None) -> Iterator[QdrantStore]:
        """An open store for ``collection`` (pinned to ``version`` when given), closed on exit."""
        store = open_store(self.settings(collection), collection, version=version)
        try:
            yield store
        finally:
            store.close()

    @contextmanager
    def indexer(self, collection: str) -> Iterator[Indexer]:
        """An :class:`Indexer` on ``collection`` with the shared encoders; its store is closed on exit."""
        dense, sparse = self.encoders()
        settings = self.settings(collection)
        with self.store(collection) as store:
            yield Indexer(settings, store=store, dense=dense, sparse=sparse)

    @contextmanager
    def retriever(self, collection: str, version: int | None = None, **overrides: Any) -> Iterator[HybridRetriever]:
        """A :class:`HybridRetriever` on ``collection`` (``version``: a staged one) with the shared encoders."""
        dense, sparse = self.encoders()
        with self.store(collection, version) as store:
            yield HybridRetriever(self.settings(collection, **overrides), store=store, dense=dense, sparse=sparse)


class CorporaResource(dg.ConfigurableResource):
    """The corpora file (default: ``$HYBRID_RAG_CORPORA_FILE`` or the repository's ``corpora.yaml``)."""

    path: str | None = None

    def load(self) -> Corpora:
        return load_corpora(self.path)

    def get(self, name: str) -> CorpusConfig:
        return self.load().get(name)


class EvalHistoryResource(dg.ConfigurableResource):
    """The SQLite evaluation history shared with ``hybrid-rag eval``."""

    path: str = DEFAULT_HISTORY

    def history(self):
        from evals.history import EvalHistory

        return EvalHistory(self.path)
