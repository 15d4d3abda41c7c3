"""Embedded backend: a Qdrant Edge shard (the Qdrant engine in-process) under a data directory.

Layout under the data directory ``root``: one directory per physical collection, ``<name>__v<N>/`` (its
``schema.json`` and the engine's ``shard/``), and ``<name>.current.json``, the pointer to the version readers
use, replaced atomically by a rebuild. A directory ``<name>/`` without a pointer is a collection made before
versioning (version 0).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe

from retrieval.chunking import Chunk
from retrieval.encoders.sparse import SparseVec
from retrieval.settings import FusionMethod
from retrieval.store.base import (
    DENSE,
    SPARSE,
    CollectionSchema,
    QdrantStore,
    QueryPlan,
    StoredHit,
    StoreError,
    filter_conditions,
    parse_version,
    version_name,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process check before deleting old versions
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
SCHEMA_FILE = "schema.json"
SHARD_DIR = "shard"
POINTER_SUFFIX = ".current.json"

_open_shards: dict[str, tuple[qe.EdgeShard, int]] = {}
_doomed: set[str] = set()  # shard directories to delete once their last handle in this process is released
_registry_lock = threading.Lock()


def _acquire(path: Path, create_config: qe.EdgeConfig | None = None, *, opening: bool = True) -> qe.EdgeShard:
    """One open shard per directory and process (the engine locks its WAL), shared by reference count.

    ``opening``: a store binds to this directory (a dropped one that is opened again is kept after all);
    False for the short reference one operation holds.
    """
    key = str(path.resolve())
    with _registry_lock:
        if opening:
            _doomed.discard(key)
        if key in _open_shards:
            shard, refs = _open_shards[key]
            _open_shards[key] = (shard, refs + 1)
            return shard
        try:
            shard = qe.EdgeShard.create(key, create_config) if create_config else qe.EdgeShard.load(key)
        except BaseException as exc:  # the engine raises a bare Exception (or a Rust panic) with its own text
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            raise StoreError(_explain_open_error(path, exc)) from exc
        _open_shards[key] = (shard, 1)
        return shard


def _release(path: Path) -> None:
    key = str(path.resolve())
    with _registry_lock:
        if key not in _open_shards:
            return
        shard, refs = _open_shards[key]
        if refs > 1:
            _open_shards[key] = (shard, refs - 1)
            return
        del _open_shards[key]
        shard.flush()
        shard.close()
        if key in _doomed:
            _doomed.discard(key)
            shutil.rmtree(Path(key).parent, ignore_errors=True)


def _discard(collection_dir: Path) -> None:
    """Delete a physical collection now, or when the last handle on it in this process is released.

    A directory another process has open (the engine holds a lock on its WAL) is left for the next cleanup.
    """
    shard_dir = collection_dir / SHARD_DIR
    key = str(shard_dir.resolve())
    with _registry_lock:
        if key in _open_shards:
            _doomed.add(key)
            return
        wal = shard_dir / "wal"
        fd = os.open(wal, os.O_RDONLY) if fcntl is not None and wal.is_dir() else None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.warning("not deleting %s: another process has it open; a later cleanup will", collection_dir)
                    return
            shutil.rmtree(collection_dir, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)


def _explain_open_error(path: Path, exc: BaseException) -> str:
    text = str(exc)
    if "WouldBlock" in text or "lock" in text.lower():
        return (
            f"embedded Qdrant data directory {path} is locked by another process (a Dagster run, "
            f"`dagster dev` or another hybrid-rag command has it open). Stop that process, or use a Qdrant "
            f"server (HYBRID_RAG_QDRANT_URL) for several processes at once. Engine said: {text}"
        )
    return (
        f"cannot open embedded Qdrant data directory {path}: it looks damaged or incomplete ({text}). "
        f"Rebuild the collection from its source documents"
    )


class EdgeStore(QdrantStore):
    """A collection stored as Qdrant Edge shards under ``root`` (see the module docstring for the layout).

    Thread-safe: every operation holds a reference on the shard it uses, so a reader that switches to a new
    version (on its next operation after a rebuild) never closes a shard under a running query.
    """

    def __init__(self, root: str | Path, collection: str, *, version: int | None = None):
        self.root = Path(root)
        self.collection = collection
        self.version = version
        self.pointer = self.root / (collection + POINTER_SUFFIX)
        self._shard: qe.EdgeShard | None = None
        self._bound: str | None = None  # the physical collection self._shard belongs to
        self._lock = threading.Lock()

    @property
    def dir(self) -> Path:
        """The directory of the physical collection in use (or that would be used)."""
        return self.root / (self._bound or self._target())

    @property
    def location(self) -> str:  # type: ignore[override]
        return str(self.dir)

    # -- versions ------------------------------------------------------------------------------------------
    def _read_pointer(self) -> int | None:
        try:
            return int(json.loads(self.pointer.read_text())["version"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{self.pointer}: unreadable version pointer ({exc})") from exc

    def _target(self) -> str:
        """The physical collection this store should use now."""
        version = self.version if self.version is not None else self._read_pointer()
        return version_name(self.collection, version or 0)

    def current_version(self) -> int | None:
        if self.version is not None:
            return self.version
        pointed = self._read_pointer()
        if pointed is not None:
            return pointed
        return 0 if (self.root / self.collection).is_dir() else None

    def _versions(self) -> list[int]:
        if not self.root.is_dir():
            return []
        names = (p.name for p in self.root.iterdir() if p.is_dir())
        return sorted(v for v in (parse_version(self.collection, n) for n in names) if v is not None)

    def _pinned(self, version: int) -> EdgeStore:
        return EdgeStore(self.root, self.collection, version=version)

    def _switch(self, staged: QdrantStore) -> None:
        tmp = self.pointer.with_name(self.pointer.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": staged.version, "collection": version_name(self.collection, staged.version)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.pointer)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.refresh()

    def refresh(self) -> bool:
        with self._lock:
            return self._follow()

    def _follow(self) -> bool:
        """Under ``self._lock``: move this store's handle to the pointer's version when it changed."""
        if self.version is not None or self._shard is None:
            return False
        target = self._target()
        if target == self._bound:
            return False
        try:
            shard = _acquire(self.root / target / SHARD_DIR)
        except StoreError as exc:  # e.g. the rebuilding process still holds it: keep serving the old version
            log.warning("collection %r moved to %s but it cannot be opened yet: %s", self.collection, target, exc)
            return False
        old, self._shard, self._bound = self._bound, shard, target
        _release(self.root / old / SHARD_DIR)
        log.info("collection %r: switched from %s to %s", self.collection, old, target)
        return True

    # -- lifecycle ----------------------------------------------------------------------------------
    def schema(self) -> CollectionSchema | None:
        path = self.root / self._target() / SCHEMA_FILE
        if not path.exists():
            return None
        try:
            return CollectionSchema.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: unreadable collection schema ({exc})") from exc

    def _create_physical(self, schema: CollectionSchema) -> None:
        config = qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=schema.dense_dim, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if schema.sparse_idf else None)},
        )
        target = self._target()
        directory = self.root / target
        shard_dir = directory / SHARD_DIR
        if shard_dir.exists():  # leftovers of a creation that never wrote its schema
            shutil.rmtree(shard_dir)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._close_unlocked()
            self._shard, self._bound = _acquire(shard_dir, config), target
        self._shard.update(qe.UpdateOperation.create_field_index("doc_id", qe.PayloadSchemaType.Keyword))
        tmp = directory / (SCHEMA_FILE + ".tmp")
        tmp.write_text(schema.to_json())
        tmp.replace(directory / SCHEMA_FILE)

    @contextmanager
    def _using(self, operation: str) -> Iterator[qe.EdgeShard]:
        """The current shard, referenced for the duration of one operation; engine errors become StoreError."""
        with self._lock:
            self._follow()
            if self._shard is None:
                target = self._target()
                if not (self.root / target / SCHEMA_FILE).exists():
                    raise StoreError(
                        f"collection {self.collection!r} does not exist at {self.root / target}; index documents first"
                    )
                self._shard, self._bound = _acquire(self.root / target / SHARD_DIR), target
            path = self.root / self._bound / SHARD_DIR
            shard = _acquire(path, opening=False)
        try:
            yield shard
        except (StoreError, ValueError, TypeError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # the engine raises a bare Exception (or a Rust panic) with its own text
            raise StoreError(f"embedded Qdrant at {path.parent}: {operation} failed: {exc}") from exc
        finally:
            _release(path)

    def _close_unlocked(self) -> None:
        if self._shard is not None:
            bound, self._shard, self._bound = self._bound, None, None
            _release(self.root / bound / SHARD_DIR)

    def close(self) -> None:
        with self._lock:
            self._close_unlocked()

    def drop(self) -> None:
        self.close()
        if self.version is not None:
            _discard(self.root / version_name(self.collection, self.version))
            return
        self.pointer.unlink(missing_ok=True)
        for v in self._versions():
            _discard(self.root / version_name(self.collection, v))

    # -- writes -------------------------------------------------------------------------------------
    def upsert(self, chunks: Sequence[Chunk], dense: np.ndarray, sparse: Sequence[SparseVec]) -> None:
        points = [
            qe.Point(
                c.id,
                {DENSE: d.tolist(), SPARSE: qe.SparseVector(s.indices, s.values)},
                c.payload(),
            )
            for c, d, s in zip(chunks, dense, sparse, strict=True)
        ]
        with self._using("upsert") as shard:
            shard.update(qe.UpdateOperation.upsert_points(points))

    def delete_ids(self, ids: Sequence[str]) -> None:
        if ids:
            with self._using("delete") as shard:
                shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        if doc_ids:
            flt = qe.Filter(must=[qe.FieldCondition(key="doc_id", match=qe.MatchAny(list(doc_ids)))])
            with self._using("delete") as shard:
                shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

    def flush(self) -> None:
        with self._using("flush") as shard:
            shard.flush()

    # -- reads --------------------------------------------------------------------------------------
    def stored_hashes(self) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        offset = None
        with self._using("scroll") as shard:
            while True:
                records, offset = shard.scroll(
                    qe.ScrollRequest(
                        offset=offset, limit=2048, with_payload=["doc_id", "content_hash"], with_vector=False
                    )
                )
                for r in records:
                    out[str(r.id)] = (r.payload["doc_id"], r.payload["content_hash"])
                if offset is None:
                    return out

    def count(self, filter: dict[str, Any] | None = None) -> int:
        request = qe.CountRequest(exact=True, filter=_edge_filter(filter))
        with self._using("count") as shard:
            return shard.count(request)

    def query_batch(self, plans: Sequence[QueryPlan]) -> list[list[StoredHit]]:
        request = qe.QueryBatchRequest([_edge_request(p) for p in plans])
        with self._using("query_batch") as shard:
            results = shard.query_batch(request)
        return [[_hit(p) for p in points] for points in results]

    def points(self, ids: Sequence[str], with_dense_vectors: bool = False) -> dict[str, StoredHit]:
        if not ids:
            return {}
        with self._using("retrieve") as shard:
            records = shard.retrieve(list(ids), with_payload=True, with_vector=[DENSE] if with_dense_vectors else False)
        return {h.id: h for h in map(_hit, records)}

    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        with self._using("retrieve") as shard:
            records = shard.retrieve(list(ids), with_payload=False, with_vector=[DENSE])
        return {str(r.id): np.asarray(r.vector[DENSE], dtype=np.float32) for r in records}


def _edge_filter(spec: dict[str, Any] | None) -> qe.Filter | None:
    conditions = []
    for key, kind, value in filter_conditions(spec):
        if kind == "range":
            conditions.append(qe.FieldCondition(key=key, range=qe.RangeFloat(**value)))
        elif kind == "any":
            conditions.append(qe.FieldCondition(key=key, match=qe.MatchAny(value)))
        else:
            conditions.append(qe.FieldCondition(key=key, match=qe.MatchValue(value)))
    return qe.Filter(must=conditions) if conditions else None


def _edge_request(plan: QueryPlan) -> qe.QueryRequest:
    flt = _edge_filter(plan.filter)
    with_vector = [DENSE] if plan.with_dense_vectors else False
    channels = []
    if plan.dense is not None:
        channels.append(qe.Query.Nearest(plan.dense.tolist(), using=DENSE))
    if plan.sparse is not None:
        channels.append(qe.Query.Nearest(qe.SparseVector(plan.sparse.indices, plan.sparse.values), using=SPARSE))
    if not channels:
        raise ValueError("a query needs a dense or a sparse vector")
    if len(channels) == 1:
        return qe.QueryRequest(
            limit=plan.limit,
            query=channels[0],
            filter=flt,
            with_payload=plan.payload_selector(),
            with_vector=with_vector,
        )
    fusion = (
        qe.Fusion.Rrf(k=plan.rrf_k, weights=list(plan.weights) if plan.weights else None)
        if plan.fusion is FusionMethod.RRF
        else qe.Fusion.Dbsf()
    )
    return qe.QueryRequest(
        limit=plan.limit,
        prefetches=[qe.Prefetch(limit=plan.prefetch_k, query=q, filter=flt) for q in channels],
        query=fusion,
        filter=flt,
        with_payload=plan.payload_selector(),
        with_vector=with_vector,
    )


def _hit(point) -> StoredHit:
    vector = point.vector[DENSE] if point.vector and DENSE in point.vector else None
    pid = point.id
    return StoredHit(
        id=str(pid) if isinstance(pid, uuid.UUID) else str(uuid.UUID(str(pid))),
        score=float(getattr(point, "score", 0.0)),
        payload=point.payload or {},
        dense_vector=np.asarray(vector, dtype=np.float32) if vector is not None else None,
    )
