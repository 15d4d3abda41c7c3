"""Snapshots of a collection: a copy of the current version (embedded engine) or a Qdrant snapshot (server).

The embedded engine's snapshot is a directory: the version's ``schema.json`` and engine ``shard/``, copied
while this process holds the shard (so no other process writes it) right after a flush, plus
``snapshot.json``. Both ways, files are copied as staging copies them: runs of zeros (the engine's preallocated
WAL segments) stay holes, so a snapshot takes the disk space of the version, not 32 MiB per WAL segment.
Restoring copies it into a new version and switches readers to it atomically, like a rebuild. On a server,
``create_snapshot``/``recover_snapshot`` of Qdrant itself are used on the physical
collection behind the alias; the snapshot file stays on the server.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

from retrieval.store.base import QdrantStore, StoreError, version_name
from retrieval.store.edge import SCHEMA_FILE, SHARD_DIR, EdgeStore, copy_tree

MANIFEST = "snapshot.json"


def snapshot(store: QdrantStore, dest: Path | None = None) -> str:
    """Snapshot the current version of ``store``'s collection; returns where it is (a path, or a server name)."""
    from retrieval.store.server import ServerStore

    version = store.current_version()
    if version is None:
        raise StoreError(f"collection {store.collection!r} does not exist at {store.location}: nothing to snapshot")
    if isinstance(store, ServerStore):
        physical = version_name(store.collection, version)
        try:
            described = store._call("create_snapshot", store.client.create_snapshot, physical, wait=True)
        except NotImplementedError as exc:
            raise StoreError(f"{store.location} does not support snapshots ({exc})") from exc
        return f"{physical}/{described.name}" if described else physical
    if not isinstance(store, EdgeStore):
        raise StoreError(f"snapshots are not supported for {type(store).__name__}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = Path(dest) if dest else Path("data/snapshots") / f"{store.collection}-{stamp}"
    if dest.exists():
        raise StoreError(f"{dest} already exists: choose another snapshot directory")
    points = store.count()
    store.flush()  # the shard stays open (and locked) in this process while it is copied
    source = store.dir
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy2(source / SCHEMA_FILE, tmp / SCHEMA_FILE)
    copy_tree(source / SHARD_DIR, tmp / SHARD_DIR)
    manifest = {"collection": store.collection, "version": version, "points": points, "created": stamp}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    tmp.rename(dest)
    return str(dest)


def restore(store: QdrantStore, source: str | Path, *, replace: bool = False) -> int:
    """Make ``source`` (a snapshot) the collection's current version; returns its point count.

    An existing collection is only replaced with ``replace`` (its old version is deleted once readers let go).
    Like every write, it waits for the collection's write lock (a running index finishes first).
    """
    with store.write_lock():
        return _restore(store, source, replace)


def _restore(store: QdrantStore, source: str | Path, replace: bool) -> int:
    from retrieval.store.server import ServerStore

    if store.current_version() is not None and not replace:
        raise StoreError(
            f"collection {store.collection!r} exists at {store.location}: pass --replace to replace it by the snapshot"
        )
    versions = store._versions()
    target = store._pinned(max([store.current_version() or 0, *versions]) + 1)
    if isinstance(store, ServerStore):
        try:
            store._call("recover_snapshot", store.client.recover_snapshot, target.name, location=str(source), wait=True)
        except NotImplementedError as exc:
            raise StoreError(f"{store.location} does not support snapshots ({exc})") from exc
    elif isinstance(store, EdgeStore):
        source = Path(source)
        if not (source / SCHEMA_FILE).is_file() or not (source / SHARD_DIR).is_dir():
            raise StoreError(f"{source} is not a snapshot of the embedded engine (no {SCHEMA_FILE} and {SHARD_DIR}/)")
        directory = store.root / version_name(store.collection, target.version)
        shutil.rmtree(directory, ignore_errors=True)
        copy_tree(source, directory)
        (directory / MANIFEST).unlink(missing_ok=True)
        store._set_stage_info(target.version, {"restore": True, "complete": True})  # not yet a published version
    else:
        raise StoreError(f"snapshots are not supported for {type(store).__name__}")
    try:
        points = target.count()
        store.publish(target)
    finally:
        target.close()
    return points
