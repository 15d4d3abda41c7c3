"""Embedded backend: a Qdrant Edge shard (the Qdrant engine in-process) under a data directory."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Sequence
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
)

SCHEMA_FILE = "schema.json"
SHARD_DIR = "shard"

_open_shards: dict[str, tuple[qe.EdgeShard, int]] = {}
_registry_lock = threading.Lock()


def _acquire(path: Path, create_config: qe.EdgeConfig | None) -> qe.EdgeShard:
    """One open shard per directory and process (the engine locks its WAL), shared by reference count."""
    key = str(path.resolve())
    with _registry_lock:
        if key in _open_shards:
            shard, refs = _open_shards[key]
            _open_shards[key] = (shard, refs + 1)
            return shard
        try:
            shard = qe.EdgeShard.create(key, create_config) if create_config else qe.EdgeShard.load(key)
        except Exception as exc:  # the engine raises a bare Exception with its own text
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


def _explain_open_error(path: Path, exc: Exception) -> str:
    text = str(exc)
    if "WouldBlock" in text or "lock" in text.lower():
        return (
            f"embedded Qdrant data directory {path} is locked by another process (a Dagster run, "
            f"`dagster dev` or another hybrid-rag command has it open). Stop that process, or use a Qdrant "
            f"server (HYBRID_RAG_QDRANT_URL) for several processes at once. Engine said: {text}"
        )
    return f"cannot open embedded Qdrant data directory {path}: it looks damaged or incomplete ({text})"


class EdgeStore(QdrantStore):
    """A collection stored as one Qdrant Edge shard in ``root/<collection>/``."""

    def __init__(self, root: str | Path, collection: str):
        self.root = Path(root)
        self.collection = collection
        self.dir = self.root / collection
        self.location = str(self.dir)
        self._shard: qe.EdgeShard | None = None

    # -- lifecycle ----------------------------------------------------------------------------------
    def schema(self) -> CollectionSchema | None:
        path = self.dir / SCHEMA_FILE
        if not path.exists():
            return None
        try:
            return CollectionSchema.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError) as exc:
            raise StoreError(f"{path}: unreadable collection schema ({exc})") from exc

    def _create(self, schema: CollectionSchema) -> None:
        config = qe.EdgeConfig(
            vectors={DENSE: qe.EdgeVectorParams(size=schema.dense_dim, distance=qe.Distance.Cosine)},
            sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if schema.sparse_idf else None)},
        )
        shard_dir = self.dir / SHARD_DIR
        if shard_dir.exists():  # leftovers of a creation that never wrote its schema
            shutil.rmtree(shard_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._shard = _acquire(shard_dir, config)
        self._shard.update(qe.UpdateOperation.create_field_index("doc_id", qe.PayloadSchemaType.Keyword))
        tmp = self.dir / (SCHEMA_FILE + ".tmp")
        tmp.write_text(schema.to_json())
        tmp.replace(self.dir / SCHEMA_FILE)

    @property
    def shard(self) -> qe.EdgeShard:
        if self._shard is None:
            if self.schema() is None:
                raise StoreError(f"collection {self.collection!r} does not exist at {self.dir}; index documents first")
            self._shard = _acquire(self.dir / SHARD_DIR, None)
        return self._shard

    def close(self) -> None:
        if self._shard is not None:
            self._shard = None
            _release(self.dir / SHARD_DIR)

    def drop(self) -> None:
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)

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
        self.shard.update(qe.UpdateOperation.upsert_points(points))

    def delete_ids(self, ids: Sequence[str]) -> None:
        if ids:
            self.shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        if doc_ids:
            flt = qe.Filter(must=[qe.FieldCondition(key="doc_id", match=qe.MatchAny(list(doc_ids)))])
            self.shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

    def flush(self) -> None:
        self.shard.flush()

    # -- reads --------------------------------------------------------------------------------------
    def stored_hashes(self) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        offset = None
        while True:
            records, offset = self.shard.scroll(
                qe.ScrollRequest(offset=offset, limit=2048, with_payload=["doc_id", "content_hash"], with_vector=False)
            )
            for r in records:
                out[str(r.id)] = (r.payload["doc_id"], r.payload["content_hash"])
            if offset is None:
                return out

    def count(self, filter: dict[str, Any] | None = None) -> int:
        return self.shard.count(qe.CountRequest(exact=True, filter=_edge_filter(filter)))

    def query_batch(self, plans: Sequence[QueryPlan]) -> list[list[StoredHit]]:
        requests = [_edge_request(p) for p in plans]
        results = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[_hit(p) for p in points] for points in results]

    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        records = self.shard.retrieve(list(ids), with_payload=False, with_vector=[DENSE])
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
            limit=plan.limit, query=channels[0], filter=flt, with_payload=plan.with_payload, with_vector=with_vector
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
        with_payload=plan.with_payload,
        with_vector=with_vector,
    )


def _hit(point) -> StoredHit:
    vector = point.vector[DENSE] if point.vector and DENSE in point.vector else None
    return StoredHit(
        id=str(uuid.UUID(str(point.id))),
        score=float(point.score),
        payload=point.payload or {},
        dense_vector=np.asarray(vector, dtype=np.float32) if vector is not None else None,
    )
