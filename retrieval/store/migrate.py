"""Copy a collection from one backend to another (the embedded engine to a Qdrant server): its points as they are
stored (vectors and payload: nothing re-embedded), its schema and its payload indexes. The source is only read."""

from __future__ import annotations

import logging

from retrieval.store.base import QdrantStore, StoreError
from retrieval.wording import counted

log = logging.getLogger(__name__)


def copy_collection(source: QdrantStore, target: QdrantStore) -> int:
    """Copy the published version of ``source`` into ``target``, a collection that is not published there yet, as
    its first version: staged, checked (its point count) and only then published. Returns the points copied.

    A target that exists is refused (:class:`StoreError`, nothing changed); so is a name that reaches what hybrid-rag
    did not make there. A copy that failed halfway is resumed by the same copy run again (the same published
    version of the source); readers of ``target`` see nothing until it is complete.
    """
    with source.reading():
        schema = source.schema()
        if schema is None:
            raise StoreError(source.missing_message(source.location))
        with target.write_lock():
            target.exists()  # refuses a name that reaches another application's collection or alias
            if target.current_version() is not None:
                raise StoreError(
                    f"collection {target.collection!r} already exists at {target.location}: nothing was copied (to "
                    f"copy it again, drop it there first: hybrid-rag drop {target.collection}; or copy it under "
                    "another name: --to-collection)"
                )
            intent = f"copy of {source.collection!r} version {source.current_version()} at {source.location}"
            staged = target.stage(schema, intent=intent)
            try:
                staged.index_payload(source.payload_indexes() or {})
                copied = 0
                for page in source.all_points():
                    staged.upsert_points(page)
                    copied += len(page)
                    log.info("copied %s of %r to %s", counted(copied, "point"), source.collection, target.location)
                there = staged.count()
                if there != copied:
                    raise StoreError(
                        f"copy of {source.collection!r} to {target.location}: {counted(there, 'point')} arrived of "
                        f"{copied:,}; nothing was published (run it again)"
                    )
                target.publish(staged)
            finally:
                staged.close()
    return copied
