"""The store interface shared by the embedded engine (Qdrant Edge) and a Qdrant server."""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from retrieval.chunking import Chunk
from retrieval.encoders.sparse import SparseVec
from retrieval.settings import FusionMethod

DENSE = "dense"
SPARSE = "sparse"
PAYLOAD_FIELDS = ("doc_id", "chunk_index", "text", "title", "metadata", "content_hash")
TOP_LEVEL_FILTER_KEYS = {"doc_id", "chunk_index", "title", "content_hash"}
VERSION_SEP = "__v"

log = logging.getLogger(__name__)


def version_name(collection: str, version: int) -> str:
    """The physical collection of ``version``: ``<collection>__v<N>``; version 0 is the unversioned ``collection``."""
    return collection if version == 0 else f"{collection}{VERSION_SEP}{version}"


def parse_version(collection: str, physical: str) -> int | None:
    """The version a physical collection name stands for (0: unversioned), or None when it is another collection."""
    if physical == collection:
        return 0
    rest = physical.removeprefix(collection + VERSION_SEP)
    return int(rest) if rest != physical and rest.isdigit() and int(rest) > 0 else None


class StoreError(RuntimeError):
    """A store operation failed; the message names the backend location and the operation."""


class SchemaMismatchError(StoreError):
    """The configured models do not fit the existing collection."""


@dataclass(frozen=True)
class CollectionSchema:
    """What a collection's vectors were made with; stored with the collection and checked on every open."""

    dense_model: str
    dense_dim: int
    sparse_model: str
    sparse_idf: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionSchema:
        return cls(**{k: data[k] for k in ("dense_model", "dense_dim", "sparse_model", "sparse_idf")})

    def differences(self, other: CollectionSchema) -> list[str]:
        return [
            f"{name}: collection has {getattr(other, name)!r}, settings give {getattr(self, name)!r}"
            for name in ("dense_model", "dense_dim", "sparse_model", "sparse_idf")
            if getattr(self, name) != getattr(other, name)
        ]


@dataclass(frozen=True)
class QueryPlan:
    """One search: which channels, how many candidates from each, and how they are fused in Qdrant."""

    dense: np.ndarray | None = None
    sparse: SparseVec | None = None
    limit: int = 10
    prefetch_k: int = 100
    fusion: FusionMethod = FusionMethod.RRF
    rrf_k: int = 60
    weights: tuple[float, float] | None = None
    filter: dict[str, Any] | None = None
    with_dense_vectors: bool = False
    with_payload: bool | tuple[str, ...] = True  # a tuple: only these payload fields

    def payload_selector(self) -> bool | list[str]:
        return list(self.with_payload) if isinstance(self.with_payload, tuple) else self.with_payload


@dataclass
class StoredHit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    dense_vector: np.ndarray | None = None


class QdrantStore(ABC):
    """One collection in one Qdrant backend.

    A collection is versioned: its data lives in physical collections ``<name>__v<N>`` and readers reach the
    current one through an atomic pointer (a Qdrant alias on a server, a pointer file for the embedded engine).
    A store made with ``version=None`` follows the pointer; one made with a version number is pinned to that
    physical collection (a rebuild's target). Version 0 is a collection made before versioning existed: it
    keeps working until the first rebuild replaces it.
    """

    location: str
    collection: str
    version: int | None = None

    # -- versions: backend primitives -------------------------------------------------------------------
    @abstractmethod
    def current_version(self) -> int | None:
        """The version readers see now (0: unversioned), or None when the collection does not exist."""

    @abstractmethod
    def _versions(self) -> list[int]:
        """Every physical version present, published or not."""

    @abstractmethod
    def _pinned(self, version: int) -> QdrantStore:
        """A store on the physical collection of ``version`` (not created here)."""

    @abstractmethod
    def _switch(self, staged: QdrantStore) -> None:
        """Point the collection's name at ``staged`` atomically."""

    @abstractmethod
    def _create_physical(self, schema: CollectionSchema) -> None: ...

    # -- versions: shared logic ----------------------------------------------------------------------------
    def stage(self, schema: CollectionSchema) -> QdrantStore:
        """A pinned store on a new, unpublished version for a rebuild (``publish`` it when it is complete).

        The unfinished target of a failed rebuild is resumed when it has the same schema, else deleted.
        """
        if self.version is not None:
            raise ValueError(f"stage() needs the collection {self.collection!r}, not its version {self.version}")
        current = self.current_version() or 0
        versions = self._versions()
        pending = sorted(v for v in versions if v > current)
        for v in pending[:-1]:
            self._pinned(v).drop()
        if pending:
            staged = self._pinned(pending[-1])
            if staged.schema() == schema:
                log.info("resuming the unfinished rebuild of %r (version %d)", self.collection, pending[-1])
                return staged
            staged.drop()
        staged = self._pinned(max([current, *versions]) + 1)
        staged._create_physical(schema)
        return staged

    def publish(self, staged: QdrantStore) -> None:
        """Switch readers to ``staged`` atomically, then delete the versions before it."""
        if staged.collection != self.collection or not staged.version:
            raise ValueError(f"{staged.location} is not a staged version of {self.collection!r}")
        staged.flush()
        self._switch(staged)
        log.info("collection %r now serves version %d", self.collection, staged.version)
        self.cleanup()

    def cleanup(self) -> None:
        """Delete the versions older than the current one (where a reader still holds one, once it lets go)."""
        current = self.current_version()
        for v in self._versions():
            if current is not None and v < current:
                self._pinned(v).drop()

    def refresh(self) -> bool:
        """Follow a rebuild to the current version; True when this store switched (servers resolve aliases)."""
        return False

    # -- lifecycle ---------------------------------------------------------------------------------------
    @abstractmethod
    def schema(self) -> CollectionSchema | None:
        """The schema of the existing collection, or None when it does not exist."""

    def _create(self, schema: CollectionSchema) -> None:
        if self.version is not None:
            self._create_physical(schema)
            return
        staged = self.stage(schema)
        try:
            self.publish(staged)
        finally:
            staged.close()

    def ensure(self, schema: CollectionSchema) -> None:
        """Create the collection, or check that the existing one was built with the same models."""
        existing = self.schema()
        if existing is None:
            self._create(schema)
            return
        problems = schema.differences(existing)
        if problems:
            raise SchemaMismatchError(
                f"collection {self.collection!r} at {self.location} was built with other models ("
                + "; ".join(problems)
                + "). Use another collection name, or rebuild it (Indexer.rebuild, hybrid-rag index --rebuild)."
            )

    @abstractmethod
    def upsert(self, chunks: Sequence[Chunk], dense: np.ndarray, sparse: Sequence[SparseVec]) -> None: ...

    @abstractmethod
    def delete_ids(self, ids: Sequence[str]) -> None: ...

    @abstractmethod
    def delete_documents(self, doc_ids: Sequence[str]) -> None: ...

    @abstractmethod
    def stored_hashes(self) -> dict[str, tuple[str, str]]:
        """point id -> (doc_id, content_hash) for every stored point."""

    @abstractmethod
    def count(self, filter: dict[str, Any] | None = None) -> int: ...

    @abstractmethod
    def query_batch(self, plans: Sequence[QueryPlan]) -> list[list[StoredHit]]: ...

    def query(self, plan: QueryPlan) -> list[StoredHit]:
        return self.query_batch([plan])[0]

    @abstractmethod
    def points(self, ids: Sequence[str], with_dense_vectors: bool = False) -> dict[str, StoredHit]:
        """id -> the stored point (payload, and the dense vector when asked; score 0) for the ids that exist."""

    @abstractmethod
    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]: ...

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make every write durable (a no-op where the backend does it per request)."""

    @abstractmethod
    def drop(self) -> None:
        """Delete the collection (every version) and everything in it; a pinned store drops its version only."""

    @abstractmethod
    def close(self) -> None: ...


def filter_conditions(spec: dict[str, Any] | None) -> list[tuple[str, str, Any]]:
    """Normalize a filter dict into (payload key, kind, value) with kind in {value, any, range}.

    ``{"topic": "music"}`` is equality, ``{"topic": ["a", "b"]}`` matches any, and
    ``{"year": {"gte": 2000, "lt": 2010}}`` is a range. Keys other than the stored top-level fields refer to
    the document's metadata.
    """
    conditions = []
    for key, value in (spec or {}).items():
        path = key if key in TOP_LEVEL_FILTER_KEYS or key.startswith("metadata.") else f"metadata.{key}"
        if isinstance(value, dict):
            unknown = set(value) - {"gt", "gte", "lt", "lte"}
            if unknown:
                raise ValueError(f"filter on {key!r}: unknown range operators {sorted(unknown)}")
            conditions.append((path, "range", value))
        elif isinstance(value, list | tuple | set):
            conditions.append((path, "any", list(value)))
        else:
            conditions.append((path, "value", value))
    return conditions
