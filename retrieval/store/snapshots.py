"""Snapshots of a collection: a copy of the current version (embedded engine) or a Qdrant snapshot (server).

The embedded engine's snapshot is a directory: the version's ``schema.json`` and engine ``shard/``, copied
while this process holds the shard (so no other process writes it) right after a flush, the collection's models
(``models/``: the adapted query encoder, a tuned reranker; when it has any), plus ``snapshot.json`` (the point
count). It does not hold the evaluation history. Both ways, files are copied as staging copies them: runs of
zeros (the engine's preallocated WAL segments) stay holes, so a snapshot takes the disk space of the version,
not 32 MiB per WAL segment. Restoring copies it into a new version, verifies it (schema, point count, every
point read once) and only then switches readers to it atomically, like a rebuild; a damaged snapshot is refused
and the published version stays served. On a server, ``create_snapshot``/``recover_snapshot`` of Qdrant itself
are used on the physical collection behind the alias; the snapshot file stays on the server.

A snapshot records the collection it was taken of (:func:`snapshot_collection`): a restore replaces an existing
collection by another collection's snapshot only when asked to (``other_collection``).
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import qdrant_edge as qe

from retrieval.store.base import (
    SCROLL_PAGE,
    VERSION_SEP,
    CollectionSchema,
    QdrantStore,
    StoreError,
    scrolled,
    version_name,
)
from retrieval.store.edge import SCHEMA_FILE, SHARD_DIR, EdgeStore, _locked, copy_tree, fcntl
from retrieval.wording import counted

MANIFEST = "snapshot.json"
MODELS_DIR = "models"
PARTIAL = ".partial"  # a snapshot being written: renamed to its name once complete
# the file name Qdrant gives a collection's snapshot: <physical collection>-<peer id>-<UTC time>.snapshot
_SERVER_SNAPSHOT = re.compile(r"(?P<physical>.+)-[0-9]+-[0-9]{4}(?:-[0-9]{2}){5}\.snapshot")
log = logging.getLogger(__name__)


_STAMP = r"[0-9]{8}T[0-9]{6}Z"  # what _stamp() writes
SET_ASIDE = ".before-restore-"  # models a restore set aside: data/models/NAME.before-restore-<stamp>


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def models_set_aside(models_dir: Path) -> list[Path]:
    """The copies of ``models_dir`` that restores set aside (``NAME.before-restore-<UTC stamp>``), oldest first;
    never another collection's models folder that merely starts so (``NAME.before-restore-eu``)."""
    name = re.compile(re.escape(models_dir.name + SET_ASIDE) + _STAMP)
    candidates = models_dir.parent.glob(glob.escape(models_dir.name + SET_ASIDE) + "*")
    return sorted(p for p in candidates if name.fullmatch(p.name) and p.is_dir())


def snapshot(store: QdrantStore, dest: Path | None = None, *, models_dir: Path | None = None) -> str:
    """Snapshot the current version of ``store``'s collection (and, embedded, the content of ``models_dir``, the
    collection's models, when it has any); returns where it is (a path, or a server name)."""
    from retrieval.store.server import ServerStore

    version = store.current_version()
    if version is None:
        raise StoreError(f"nothing to snapshot: {store.missing_message(store.location)}")
    if isinstance(store, ServerStore):
        physical = version_name(store.collection, version)
        try:
            described = store._call("create_snapshot", store.client.create_snapshot, physical, wait=True)
        except NotImplementedError as exc:
            raise StoreError(f"{store.location} does not support snapshots ({exc})") from exc
        return f"{physical}/{described.name}" if described else physical
    if not isinstance(store, EdgeStore):
        raise StoreError(f"snapshots are not supported for {type(store).__name__}")
    stamp = _stamp()
    dest = Path(dest) if dest else Path("data/snapshots") / f"{store.collection}-{stamp}"
    if dest.resolve().is_relative_to(store.root.resolve()):
        raise StoreError(
            f"snapshot directory {dest} is inside the index folder {store.root}, where it would be taken for a "
            "collection (and deleted by a write): choose a directory outside it"
        )
    if dest.exists():
        raise StoreError(f"{dest} already exists: choose another snapshot directory")
    points = store.count()
    store.flush()  # the shard stays open (and locked) in this process while it is copied
    source = store.dir
    tmp = dest.with_name(dest.name + PARTIAL)
    try:
        _remove_left_partials(dest.parent, store.collection, tmp)
        tmp.mkdir(parents=True)
        held = _hold(tmp)
    except FileExistsError as exc:
        raise StoreError(f"{tmp} is being written by another snapshot: wait for it, or choose another --out") from exc
    except OSError as exc:
        raise StoreError(f"cannot create snapshot directory {dest}: {exc.strerror or exc}") from exc
    try:
        shutil.copy2(source / SCHEMA_FILE, tmp / SCHEMA_FILE)
        copy_tree(source / SHARD_DIR, tmp / SHARD_DIR)
        models = models_dir is not None and models_dir.is_dir() and any(models_dir.iterdir())
        if models:
            copy_tree(models_dir, tmp / MODELS_DIR)
        manifest = {
            "collection": store.collection,
            "version": version,
            "points": points,
            "created": stamp,
            "models": bool(models),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        tmp.rename(dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        text = str(exc).replace("to stage a write", "into the snapshot")
        if isinstance(exc, StoreError | OSError):
            raise StoreError(f"snapshot of {store.collection!r} to {dest} failed, nothing was kept: {text}") from exc
        raise
    finally:
        if held is not None:
            os.close(held)
    return str(dest)


def _hold(tmp: Path) -> int | None:
    """An ``flock`` on the snapshot's staging folder while this process writes it (the kernel lets go when the
    process ends, even by SIGKILL): how :func:`_remove_left_partials` tells a live snapshot from a killed one."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _remove_left_partials(folder: Path, collection: str, tmp: Path) -> None:
    """Delete the staging folders that killed snapshots left in ``folder`` (``tmp``, and the default
    ``NAME-TIME.partial`` of ``collection``), unless a live snapshot still writes one; raises FileExistsError
    when that one is ``tmp``."""
    pattern = re.compile(re.escape(collection) + "-" + _STAMP + re.escape(PARTIAL))
    left = [p for p in folder.glob(glob.escape(collection) + "-*" + PARTIAL) if pattern.fullmatch(p.name)]
    for path in {tmp, *left}:
        if not path.is_dir():
            continue
        if _locked(path):
            if path == tmp:
                raise FileExistsError(path)
            continue
        log.info("removing %s, left by a snapshot that was stopped", path)
        shutil.rmtree(path, ignore_errors=True)


def snapshot_collection(source: str | Path, *, server: bool = False) -> str | None:
    """The collection ``source`` is a snapshot of, as it records it; None when it does not say. Embedded: its
    ``snapshot.json`` (an earlier release's snapshot has none). On a server (``source`` a URL or a path there):
    the physical collection in the file name Qdrant gave it, ``NAME__v<N>-<peer>-<time>.snapshot``."""
    if server:
        name = unquote(urlsplit(str(source)).path.rstrip("/").rpartition("/")[2])
        match = _SERVER_SNAPSHOT.fullmatch(name)
        if match is None:
            return None
        collection, sep, version = match["physical"].rpartition(VERSION_SEP)
        return collection if sep and collection and version.isdigit() else match["physical"]
    try:
        recorded = json.loads((Path(source) / MANIFEST).read_text()).get("collection")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) and recorded else None


def refuse_embedded_snapshot(source: str | Path, location: str) -> None:
    """On a Qdrant server (or qdrant-client's local mode) at ``location``: refuse (StoreError) a local folder that
    is a snapshot of the embedded engine, which only the embedded engine restores; a server restores Qdrant's own
    ``.snapshot`` files."""
    folder = Path(source)
    if (folder / SCHEMA_FILE).is_file() and (folder / SHARD_DIR).is_dir():
        raise StoreError(
            f"{source} is a snapshot of the embedded engine (a folder); HYBRID_RAG_QDRANT_URL ({location}) restores "
            "a Qdrant .snapshot file (a URL, or a path on the server). Restore this one without "
            "HYBRID_RAG_QDRANT_URL, into the embedded engine at HYBRID_RAG_QDRANT_PATH"
        )


def check_snapshot(source: str | Path) -> None:
    """Refuse (StoreError) a path that is not a snapshot of the embedded engine: one that does not exist, an
    unfinished one, or a folder without the engine's files."""
    source = Path(source)
    if not source.exists():
        raise StoreError(f"no snapshot at {source}: the path does not exist")
    if source.name.endswith(PARTIAL):
        raise StoreError(
            f"{source} is not a snapshot: an unfinished one (a snapshot that was stopped), to delete; "
            "restore another snapshot"
        )
    if not (source / SCHEMA_FILE).is_file() or not (source / SHARD_DIR).is_dir():
        raise StoreError(f"{source} is not a snapshot of the embedded engine (no {SCHEMA_FILE} and {SHARD_DIR}/)")


class Restored(NamedTuple):
    """What a restore did: the restored point count, where the collection's previous models were set aside, and
    whether the collection already was that snapshot (restored before, not written since: nothing was done)."""

    points: int
    models_aside: Path | None = None
    already: bool = False


def restore(
    store: QdrantStore,
    source: str | Path,
    *,
    replace: bool = False,
    other_collection: bool = False,
    expected: CollectionSchema | Callable[[CollectionSchema], CollectionSchema] | None = None,
    models_dir: Path | None = None,
) -> Restored:
    """Make ``source`` (a snapshot) the collection's current version.

    An existing collection is only replaced with ``replace`` (its old version is deleted once readers let go), and
    by a snapshot that records another collection (:func:`snapshot_collection`) only with ``other_collection``
    too; a new collection may be restored from any snapshot.
    Embedded, the restored version is verified before it is published: its schema matches ``expected`` (the
    settings' models, the check a search does; or a callable making it from the snapshot's schema, e.g.
    ``stack.schema``, called only then: a rerun of a restore that was done loads no model, nor does a snapshot
    that records the settings' dense model's content), its point count the snapshot's manifest, and every point's
    vectors and payload are read once; else it is removed, and the published version stays served. The snapshot's
    models are installed in ``models_dir`` (the collection's); what was there is set aside (renamed), never
    deleted.
    Like every write, it waits for the collection's write lock (a running index finishes first).
    """
    with store.write_lock():
        return _restore(store, source, replace, other_collection, expected, models_dir)


def _restore(
    store: QdrantStore,
    source: str | Path,
    replace: bool,
    other_collection: bool,
    expected: CollectionSchema | Callable[[CollectionSchema], CollectionSchema] | None,
    models_dir: Path | None,
) -> Restored:
    from retrieval.store.server import ServerStore

    current = store.current_version()
    recorded = snapshot_collection(source, server=isinstance(store, ServerStore))
    other = recorded is not None and recorded != store.collection
    if current is not None and not replace:
        identity = _identity(Path(source)) if isinstance(store, EdgeStore) else None
        if identity is not None and _restored_from(store, current) == identity:  # a rerun of a restore that was done
            return Restored(store.count(), already=True)
        also = f" and --other-collection (it is a snapshot of {recorded!r})" if other else ""
        raise StoreError(
            f"collection {store.collection!r} exists at {store.location}: pass --replace{also} to replace it by the "
            "snapshot"
        )
    if current is not None and other and not other_collection:
        raise StoreError(
            f"{source} is a snapshot of collection {recorded!r}, not {store.collection!r}: restoring it would "
            f"replace {store.collection!r} ({counted(store.count(), 'point')}) and its models by those of "
            f"{recorded!r}. "
            "Restore it as a new collection (--collection NEW), or pass --other-collection too to replace "
            f"{store.collection!r}; nothing was changed"
        )
    target = store._pinned(max([current or 0, *store._taken_versions()]) + 1)
    models = None
    if isinstance(store, ServerStore):
        try:
            store._call("recover_snapshot", store.client.recover_snapshot, target.name, location=str(source), wait=True)
        except NotImplementedError as exc:
            raise StoreError(f"{store.location} does not support snapshots ({exc})") from exc
    elif isinstance(store, EdgeStore):
        source = Path(source)
        check_snapshot(source)
        manifest = _manifest(source)
        directory = store.root / version_name(store.collection, target.version)
        shutil.rmtree(directory, ignore_errors=True)
        copy_tree(source, directory)
        (directory / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(directory / MODELS_DIR, ignore_errors=True)
        info = {"restore": True, "complete": True, "snapshot": _identity(source)}  # kept once published
        store._set_stage_info(target.version, info)  # not yet a published version
        try:
            _verify(target, source, manifest, expected)
        except BaseException:
            target.drop()
            raise
        models = source / MODELS_DIR if (source / MODELS_DIR).is_dir() else None
    else:
        raise StoreError(f"snapshots are not supported for {type(store).__name__}")
    try:
        points = target.count()
        aside = _install_models(models, models_dir) if models_dir is not None else None
        store.publish(target)
    finally:
        target.close()
    return Restored(points, aside)


def _identity(source: Path) -> dict[str, Any] | None:
    """What tells a snapshot apart (its manifest's collection, version, time and point count), or None (no
    readable manifest: an earlier release's snapshot, or not a snapshot)."""
    try:
        manifest = json.loads((source / MANIFEST).read_text())
        return {key: manifest[key] for key in ("collection", "version", "created", "points")}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _restored_from(store: EdgeStore, version: int) -> dict[str, Any] | None:
    """The identity of the snapshot ``version`` was restored from (None: it was written otherwise; every later
    write of the embedded engine makes a new version)."""
    return (store._stage_info(version) or {}).get("snapshot")


def _install_models(models: Path | None, models_dir: Path) -> Path | None:
    """Put the snapshot's ``models`` (None: it has none) in ``models_dir``; returns where its previous content was
    set aside (None: it had none). A restored collection never keeps another content's adapted encoder."""
    aside = None
    if models_dir.is_dir() and any(models_dir.iterdir()):
        aside = models_dir.with_name(f"{models_dir.name}{SET_ASIDE}{_stamp()}")
        models_dir.rename(aside)
    if models is not None:
        try:
            copy_tree(models, models_dir)
        except BaseException:
            if aside is not None:  # nothing restored: the collection keeps its models
                aside.rename(models_dir)
            raise
    return aside


def _manifest(source: Path) -> dict[str, Any] | None:
    """The snapshot's ``snapshot.json`` (None: a snapshot of an earlier release, which wrote none)."""
    path = source / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        int(manifest["points"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"snapshot {source} cannot be restored: unreadable {MANIFEST} ({exc}); nothing was changed"
        ) from exc
    return manifest


def _verify(
    target: EdgeStore,
    source: Path,
    manifest: dict[str, Any] | None,
    expected: CollectionSchema | Callable[[CollectionSchema], CollectionSchema] | None,
) -> None:
    """Refuse a restored (unpublished) version whose schema, point count or points are not what they should be."""

    def refuse(reason: str) -> StoreError:
        return StoreError(
            f"snapshot {source} cannot be restored: {reason}. Collection {target.collection!r} was not changed; "
            "restore another copy of the snapshot, or take a new one"
        )

    try:
        schema = target.schema()
    except StoreError as exc:
        raise refuse(str(exc)) from exc
    if schema is None:
        raise refuse(f"no {SCHEMA_FILE}")
    expected = expected(schema) if callable(expected) else expected
    problems = expected.differences(schema) if expected is not None else []
    if problems:
        raise refuse("it was built with other models than the settings give (" + "; ".join(problems) + ")")
    try:
        points = target.count()
        with target._using("reading the snapshot") as shard:  # every point once: vectors and payload
            read = sum(
                1
                for _ in scrolled(
                    lambda offset: shard.scroll(
                        qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=True, with_vector=True)
                    )
                )
            )
    except StoreError as exc:  # the snapshot is damaged, not the collection: no advice to rebuild it
        raise refuse(str(exc).removesuffix(". Rebuild the collection from its source documents")) from exc
    if read != points:
        raise refuse(f"it counts {counted(points, 'point')} but {read:,} can be read")
    if manifest is not None and points != int(manifest["points"]):
        raise refuse(f"it holds {counted(points, 'point')} where its {MANIFEST} says {manifest['points']}")
    if manifest is None and points == 0:
        raise refuse(f"it holds no points and has no {MANIFEST} (an earlier release's snapshot) to say it should")
