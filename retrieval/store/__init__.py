"""Qdrant stores: one interface, an embedded backend (Qdrant Edge) and a server backend (qdrant-client).

The server backend (and qdrant-client, a second or so to import) is imported only when it is used.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.errors import InvalidArgumentError
from retrieval.settings import RetrievalSettings, check_collection_name, redact_url
from retrieval.store.base import (
    ENCODING_FIELDS,
    CollectionSchema,
    QdrantStore,
    QueryPlan,
    SchemaMismatchError,
    StoredHit,
    StoreError,
)
from retrieval.store.edge import POINTER_SUFFIX, SCHEMA_FILE, EdgeStore, discard_dropped

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


log = logging.getLogger(__name__)
_PHYSICAL = re.compile(r"^(?P<name>.+)__v(?P<version>[1-9][0-9]*)$")
_COPY = re.compile(r"__v[1-9][0-9]*\.copy-[0-9a-f]+$")


def collection_names(settings: RetrievalSettings) -> list[str]:
    """The collections in the backend the settings point at (versions folded into their collection's name); an
    entry whose name no collection can have (e.g. made by hand), or that hybrid-rag did not create (a server
    collection without its schema metadata, a folder without a schema file), is left out with a warning. A dropped
    version another process still holds is left out too (embedded; deleted here once no process holds it)."""
    if settings.qdrant_url:
        store = open_store(settings)
        try:
            aliases, physical = store.catalogue()  # type: ignore[attr-defined]
            names = set(aliases)
        finally:
            store.close()
    else:
        root = settings.qdrant_path
        entries = list(root.iterdir()) if root.is_dir() else []
        names = {p.name.removesuffix(POINTER_SUFFIX) for p in entries if p.name.endswith(POINTER_SUFFIX)}
        physical = [  # a copy being made (or left by a killed write) is no collection
            p.name
            for p in entries
            if p.is_dir() and _holds_schema(p) and not _COPY.search(p.name) and not discard_dropped(p)
        ]
    for name in physical:
        match = _PHYSICAL.match(name)
        names.add(match["name"] if match else name)
    return sorted(name for name in names if _valid(name))


def _holds_schema(folder: Path) -> bool:
    """Whether ``folder`` holds a collection's schema file; one this user cannot read is left out with a warning."""
    try:
        return (folder / SCHEMA_FILE).is_file()
    except OSError as exc:
        log.warning("not listed: %s cannot be read (%s): the user needs read and write access", folder, exc.strerror)
        return False


def _valid(name: str) -> bool:
    try:
        check_collection_name(name)
    except InvalidArgumentError as exc:
        log.warning("not a collection: %s", exc)
        return False
    return True


__all__ = [
    "ENCODING_FIELDS",
    "CollectionSchema",
    "EdgeStore",
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
