"""Qdrant stores: one interface, an embedded backend (Qdrant Edge) and a server backend (qdrant-client).

The server backend (and qdrant-client, a second or so to import) is imported only when it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from retrieval.settings import RetrievalSettings, check_collection_name, redact_url
from retrieval.store.base import (
    ENCODING_FIELDS,
    CollectionSchema,
    NotQdrantServerError,
    QdrantStore,
    QueryPlan,
    SchemaMismatchError,
    StoredHit,
    StoreError,
)
from retrieval.store.edge import EdgeStore

if TYPE_CHECKING:
    from retrieval.store.server import ServerStore, connect


def __getattr__(name: str):
    if name in ("ServerStore", "connect"):
        from retrieval.store import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(
    settings: RetrievalSettings, collection: str | None = None, *, version: int | None = None
) -> QdrantStore:
    """The store the settings point at: a Qdrant server when ``qdrant_url`` is set, else the embedded engine.

    ``version``: pinned to that version of the collection (e.g. a staged one), else following the published one.
    ``collection`` (default: the settings') is checked by :func:`~retrieval.settings.check_collection_name`.
    """
    name = settings.collection if collection is None else check_collection_name(collection)
    if settings.qdrant_url:
        from retrieval.store.server import ServerStore, connect, local_location, shared_local_client

        common = {
            "version": version,
            "location": redact_url(settings.qdrant_url),  # named in every message: never its password
            "retries": settings.qdrant_retries,
            "lock_timeout_s": settings.write_lock_timeout_s,
        }
        if local_location(settings.qdrant_url):  # qdrant-client's local mode: one client per location and process
            client, release = shared_local_client(settings.qdrant_url)
            return ServerStore(client, name, release=release, **common)
        key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        return ServerStore(connect(settings.qdrant_url, key, settings.qdrant_timeout_s), name, **common)
    return EdgeStore(settings.qdrant_path, name, version=version, lock_timeout_s=settings.write_lock_timeout_s)


def collection_names(settings: RetrievalSettings) -> list[str]:
    """The collections in the backend the settings point at (versions folded into their collection's name); an
    entry whose name no collection can have (e.g. made by hand), or that hybrid-rag did not create (a server
    collection without its schema metadata, a folder without a schema file), is left out with a warning. A dropped
    version another process still holds is left out too (embedded; deleted here once no process holds it)."""
    store = open_store(settings)
    try:
        return store.collection_names()
    finally:
        store.close()


__all__ = [
    "ENCODING_FIELDS",
    "CollectionSchema",
    "EdgeStore",
    "NotQdrantServerError",
    "QdrantStore",
    "QueryPlan",
    "SchemaMismatchError",
    "ServerStore",
    "StoreError",
    "StoredHit",
    "collection_names",
    "connect",
    "open_store",
]
