"""Qdrant stores: one interface, an embedded backend (Qdrant Edge) and a server backend (qdrant-client)."""

from __future__ import annotations

from retrieval.settings import RetrievalSettings
from retrieval.store.base import (
    CollectionSchema,
    QdrantStore,
    QueryPlan,
    SchemaMismatchError,
    StoredHit,
    StoreError,
)
from retrieval.store.edge import EdgeStore
from retrieval.store.server import ServerStore, connect


def open_store(
    settings: RetrievalSettings, collection: str | None = None, *, version: int | None = None
) -> QdrantStore:
    """The store the settings point at: a Qdrant server when ``qdrant_url`` is set, else the embedded engine.

    ``version``: pinned to that version of the collection (e.g. a staged one), else following the published one.
    """
    name = collection or settings.collection
    if settings.qdrant_url:
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        client = connect(settings.qdrant_url, key, settings.qdrant_timeout_s)
        return ServerStore(client, name, version=version, location=settings.qdrant_url, retries=settings.qdrant_retries)
    return EdgeStore(settings.qdrant_path, name, version=version)


__all__ = [
    "CollectionSchema",
    "EdgeStore",
    "QdrantStore",
    "QueryPlan",
    "SchemaMismatchError",
    "ServerStore",
    "StoreError",
    "StoredHit",
    "connect",
    "open_store",
]
