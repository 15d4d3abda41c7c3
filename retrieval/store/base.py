"""The store interface shared by the embedded engine (Qdrant Edge) and a Qdrant server."""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import math
import numbers
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from retrieval.chunking import Chunk
from retrieval.documents import short_repr, unicode_forms
from retrieval.encoders.sparse import LEGACY_ANALYZER, SparseVec
from retrieval.errors import FilterError, HybridRagError, InvalidArgumentError, choice
from retrieval.settings import ENV_PREFIX, FusionMethod, canonical_model, check_collection_name
from retrieval.wording import counted

DENSE = "dense"
SPARSE = "sparse"
# the payload that tells whether a stored chunk (content_hash) or its whole document (doc_hash, doc_chunks) changed
HASH_FIELDS = ["doc_id", "content_hash", "doc_hash", "doc_chunks"]
SCROLL_PAGE = 2048
DOC_ID_BATCH = 1024  # document ids per filtered scroll (stored_chunks of some documents)
LOCK_WAIT_SETTING = "HYBRID_RAG_WRITE_LOCK_TIMEOUT_S"  # named where a writer waits or gives up
TOP_LEVEL_FILTER_KEYS = {"doc_id", "chunk_index", "title", "content_hash"}
STRING_FIELDS = {"doc_id", "title", "content_hash"}  # top-level fields that hold strings
PLAIN_KEY = re.compile(r"[\w-]+")  # a metadata key Qdrant's paths take unquoted
PAYLOAD_PATH = re.compile(r"[\w-]+(?:\[\d*\])*(?:\.[\w-]+(?:\[\d*\])*)*")  # keys joined by dots, [i] or []
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
RANGE_OPERATORS = {"gt", "gte", "lt", "lte"}
ANY_NUMBER = {"gte": -sys.float_info.max, "lte": sys.float_info.max}  # a range holding every stored number
ANY_DATE = {"gte": "0001-01-01"}  # a range holding every stored ISO date
PHYSICAL_NAME = re.compile(r"^(?P<name>.+)__v(?P<version>[1-9][0-9]*)$")  # a version of collection <name>
LISTED_NAMES = 10  # the existing collections a missing one's message names at most
MAX_FILTER_DEPTH = 64  # dicts and lists nested in one filter (deeper: a FilterError, not a RecursionError)
SHOWN_STORED = ("title", "chunk_index")  # stored fields the adapters show unless the document's metadata has them
VERSION_SEP = "__v"
TIE_READ_AHEAD = 8  # hits a query reads past its limit, to see whether a tie of scores straddles the cut
TIE_MAX_EXTRA = 1024  # most hits read past the limit to complete a tie at the cut (a longer one: engine's order)

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


class StoreError(HybridRagError, RuntimeError):
    """A store operation failed; the message names the backend location and the operation."""


class NotQdrantServerError(StoreError):
    """The server at ``QDRANT_URL`` answered, but not as Qdrant does (another service on that port: a web server's
    404 page); the message names the URL, what it answered and Qdrant's REST port."""


class ForeignPointsError(HybridRagError, RuntimeError):
    """A collection holds points hybrid-rag did not write (another tool's: no ``doc_id``/``content_hash``), which a
    sync or rebuild would have to keep or delete: it refuses instead, naming them."""


class SchemaMismatchError(StoreError):
    """The configured models do not fit the existing collection; ``differences`` names each one (``name: collection
    has X, settings give Y``; empty when the collection does not exist)."""

    def __init__(self, message: str, differences: Sequence[str] = ()):
        super().__init__(message)
        self.differences = list(differences)


MODEL_FIELDS = ("dense_model", "dense_dim", "sparse_model", "sparse_idf")  # checked by readers and writers
# How the chunks were cut and encoded: checked by writers only (a search may use other values). None: not
# recorded (a collection made before they were), accepted with a warning (chunk_at_whitespace is never None).
ENCODING_FIELDS = (
    "document_prompt",
    "bm25_k1",
    "bm25_b",
    "bm25_avg_len",
    "bm25_analyzer",
    "chunk_tokens",
    "chunk_overlap",
    "chunk_at_whitespace",
    "dense_fingerprint",
    "dense_precision",
    "sparse_fingerprint",
)
_warned_unrecorded: set[str] = set()  # the collections warned about (once per process)
# The setting that gives a reader the model a differing MODEL_FIELDS entry records (the dimension follows the dense
# model, the IDF modifier the sparse one; the BM25 analyzer a reader follows by itself).
_MODEL_SETTING = {
    "dense_model": "dense_model",
    "dense_dim": "dense_model",
    "sparse_model": "sparse_model",
    "sparse_idf": "sparse_model",
}


def _read_remedy(existing: CollectionSchema, problems: Sequence[str]) -> str:
    """What a reader (search, eval, adapt) of a collection built with other models sets to read it."""
    names = list(dict.fromkeys(_MODEL_SETTING[p.split(":")[0]] for p in problems))
    given = " and ".join(f"{ENV_PREFIX}{name.upper()}={getattr(existing, name)}" for name in names)
    return f"To search it, use the models it was built with: set {given} ({', '.join(names)} in Python)."


def _valid_name(name: str) -> bool:
    try:
        check_collection_name(name)
    except InvalidArgumentError as exc:
        log.warning("not a collection: %s", exc)
        return False
    return True


def _earlier_release(info: dict[str, Any]) -> bool:
    """A staging record written before records held the write's fingerprint (``intent``; every write of this
    release records it, a restore says ``restore``): whether that version was published is not recorded."""
    return "intent" not in info and not info.get("restore")


@dataclass(frozen=True)
class CollectionSchema:
    """What a collection's vectors were made with; stored with the collection and checked on every open
    (the models) and every write (also the encoding settings: a write with others would mix two encodings)."""

    dense_model: str
    dense_dim: int
    sparse_model: str
    sparse_idf: bool
    document_prompt: str | None = None
    bm25_k1: float | None = None  # the BM25 fields are None for another sparse model
    bm25_b: float | None = None
    bm25_avg_len: float | None = None
    bm25_analyzer: str | None = None  # how BM25 made terms (Bm25Encoder.analyzer): queries are encoded the same way
    chunk_tokens: int | None = None
    chunk_overlap: int | None = None
    # CHUNK_AT_WHITESPACE; a record without it (an earlier release's) was cut between words, as the default cuts
    chunk_at_whitespace: bool = False
    dense_fingerprint: str | None = None  # the dense model's content (a folder saved in place is another model)
    dense_precision: str | None = None  # the dense vectors' encoding class: fp32, int8 or openvino
    sparse_fingerprint: str | None = None  # a SPLADE model's content (None for BM25, which has no weights)
    # The chunker's token budget the documents' fingerprints were taken with (the chunk size capped by the model's
    # limit, less its special and prompt tokens): it follows from the fields above, so it is not compared; a write
    # that finds every document stored as it is reads it here instead of loading the model (None: not recorded).
    chunk_budget: int | None = field(default=None, compare=False)

    @classmethod
    def of(
        cls, dense: Any, sparse: Any, settings: Any | None = None, *, dense_dim: int | None = None
    ) -> CollectionSchema:
        """The schema of vectors made by these encoders (a dense and a sparse one), chunked per ``settings``;
        ``dense_dim`` given, the dense model is not loaded (its dimension is the one thing that needs it)."""
        bm25 = sparse.name == "bm25"
        return cls(
            dense_model=dense.model_name,
            dense_dim=dense.dimension if dense_dim is None else dense_dim,
            sparse_model=sparse.name,
            sparse_idf=sparse.uses_idf_modifier,
            document_prompt=dense.document_prompt,
            bm25_k1=sparse.k1 if bm25 else None,
            bm25_b=sparse.b if bm25 else None,
            bm25_avg_len=sparse.avg_len if bm25 else None,
            bm25_analyzer=sparse.analyzer if bm25 else None,
            chunk_tokens=settings.chunk_tokens if settings is not None else None,
            chunk_overlap=settings.chunk_overlap if settings is not None else None,
            chunk_at_whitespace=settings is not None and settings.chunk_at_whitespace,
            dense_fingerprint=getattr(dense, "fingerprint", None),
            dense_precision=getattr(dense, "precision", None),
            sparse_fingerprint=None if bm25 else getattr(sparse, "fingerprint", None),
        )

    def to_dict(self) -> dict[str, Any]:
        """The schema as the collection records it. A BM25 analyzer other than the earlier releases' is part of the
        recorded sparse model too (``bm25:<analyzer>``): releases before ``bm25_analyzer`` existed compare the
        models only, so they refuse such a collection instead of writing or searching it with their own terms."""
        data = asdict(self)
        if self.chunk_budget is None:  # recorded by writes only
            del data["chunk_budget"]
        if self.sparse_model == "bm25" and self.bm25_analyzer not in (None, LEGACY_ANALYZER):
            data["sparse_model"] = f"bm25:{self.bm25_analyzer}"
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CollectionSchema:
        if str(data.get("sparse_model")).startswith("bm25:"):  # see to_dict: the analyzer is its own key as well
            data = {"bm25_analyzer": data["sparse_model"].removeprefix("bm25:"), **data, "sparse_model": "bm25"}
        fields = {k: data[k] for k in (*ENCODING_FIELDS, "chunk_budget") if k in data}  # absent: the default
        schema = cls(**{k: data[k] for k in MODEL_FIELDS}, **fields)
        if schema.sparse_model == "bm25" and "bm25_analyzer" not in data:  # an earlier release: this analyzer
            schema = replace(schema, bm25_analyzer=LEGACY_ANALYZER)
        return schema

    def differences(self, other: CollectionSchema, *, write: bool = False) -> list[str]:
        """What ``other`` (the collection's) has that this schema (the settings') does not: the models, and with
        ``write`` the encoding settings that ``other`` records."""

        def same(name: str) -> bool:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "dense_model" or (name == "sparse_model" and "bm25" not in {mine, theirs}):
                return canonical_model(mine) == canonical_model(theirs)
            return mine == theirs

        names = (
            [*MODEL_FIELDS, *(f for f in ENCODING_FIELDS if getattr(other, f) is not None)] if write else MODEL_FIELDS
        )
        return [
            f"{name}: collection has {getattr(other, name)!r}, settings give {getattr(self, name)!r}"
            for name in names
            if not same(name)
        ]

    def unrecorded(self) -> list[str]:
        """The encoding settings this (a collection's) schema does not record (the BM25 analyzer and the whitespace
        rule are always known: one an earlier release wrote reads as :data:`LEGACY_ANALYZER`, cut between words)."""
        return [
            f
            for f in ENCODING_FIELDS
            if getattr(self, f) is None
            and f != "bm25_analyzer"
            and not (f.startswith("bm25") and self.sparse_model != "bm25")
            and not (f == "sparse_fingerprint" and self.sparse_model == "bm25")
        ]


@dataclass(frozen=True)
class QueryPlan:
    """One search: which channels, how many candidates from each, and how they are fused in Qdrant.

    Qdrant fuses by rank (RRF, weighted) or by DBSF only: a plan asking for z-score fusion is refused. Searches
    never fuse in Qdrant: they query each channel and fuse here (``HybridRetriever.fuse``, z-scores included)."""

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

    def __post_init__(self) -> None:
        fusion = choice(FusionMethod, self.fusion, "fusion")
        if fusion is FusionMethod.ZSCORE:
            raise InvalidArgumentError(
                "Qdrant fuses by rrf or dbsf only; z-score fusion is done client-side (HybridRetriever.fuse, "
                "what searches use)"
            )
        object.__setattr__(self, "fusion", fusion)

    def payload_selector(self) -> bool | list[str]:
        return list(self.with_payload) if isinstance(self.with_payload, tuple) else self.with_payload

    def vector_selector(self) -> bool | list[str]:
        return [DENSE] if self.with_dense_vectors else False

    def channels(self) -> list[tuple[str, Any]]:
        """``(vector name, query vector)`` of each channel searched: dense, then sparse."""
        channels = [(name, v) for name, v in ((DENSE, self.dense), (SPARSE, self.sparse)) if v is not None]
        if not channels:
            raise ValueError("a query needs a dense or a sparse vector")
        return channels


@dataclass
class StoredHit:
    id: str
    score: float
    payload: dict[str, Any] = field(default_factory=dict)
    dense_vector: np.ndarray | None = None

    __repr__ = short_repr  # the payload's text and the vector cut short

    @classmethod
    def from_point(cls, point: Any, id: str, dense_vector: Any | None) -> StoredHit:
        """From a scored point or a record (no score: 0) of either backend's client."""
        vector = np.asarray(dense_vector, dtype=np.float32) if dense_vector is not None else None
        return cls(id=id, score=float(getattr(point, "score", 0.0)), payload=point.payload or {}, dense_vector=vector)


def score_order(hits: Sequence[StoredHit]) -> list[StoredHit]:
    """``hits`` best first, hits of equal score by id: the one order of a channel list, whatever the build."""
    return sorted(hits, key=lambda h: (-h.score, h.id))


def _tie_beyond(hits: Sequence[StoredHit], limit: int, asked: int) -> bool:
    """Whether hits the engine did not return (it returned all ``asked``) may tie with the hit at the ``limit`` cut."""
    return len(hits) >= asked and min(h.score for h in hits) >= sorted((h.score for h in hits), reverse=True)[limit - 1]


def scrolled_pages(scroll: Callable[[Any], tuple[Sequence[Any], Any]]) -> Iterator[Sequence[Any]]:
    """Every page of records (none empty), paging through ``scroll(offset) -> (records, next offset or None)``."""
    offset = None
    while True:
        records, offset = scroll(offset)
        if records:
            yield records
        if offset is None:
            return


def scrolled(scroll: Callable[[Any], tuple[Sequence[Any], Any]]) -> Iterator[Any]:
    """Every record, paging through ``scroll`` (see :func:`scrolled_pages`): one page held at a time."""
    for records in scrolled_pages(scroll):
        yield from records


class StoredPoint(NamedTuple):
    """One point as a store holds it: id, vectors and payload (what
    :func:`~retrieval.store.migrate.copy_collection` moves as it is)."""

    id: str
    dense: np.ndarray
    sparse: SparseVec
    payload: dict[str, Any]


class StoredChunk(NamedTuple):
    """What a stored point says about its chunk: its document, content hash and, when the indexer wrote it from a
    document (not from bare chunks, not by an earlier release), that document's fingerprint and chunk count."""

    doc_id: str
    content_hash: str
    doc_hash: str | None = None
    doc_chunks: int | None = None


def stored_chunks_from(scroll: Callable[[Any], tuple[Sequence[Any], Any]], where: str) -> dict[str, StoredChunk]:
    """point id -> :class:`StoredChunk`, paging through ``scroll`` (see :func:`scrolled`; each record's payload
    limited to :data:`HASH_FIELDS`). Raises :class:`ForeignPointsError` naming the points of ``where`` (the
    collection, for the message) that hybrid-rag did not write."""
    out, foreign = {}, []
    for r in scrolled(scroll):
        p = r.payload or {}
        if isinstance(p.get("doc_id"), str) and isinstance(p.get("content_hash"), str):
            out[str(r.id)] = StoredChunk(p["doc_id"], p["content_hash"], p.get("doc_hash"), p.get("doc_chunks"))
        else:
            foreign.append(str(r.id))
    if foreign:
        raise foreign_points_error(where, foreign)
    return out


def stored_owners_from(scroll: Callable[[Any], tuple[Sequence[Any], Any]], where: str) -> Iterator[tuple[str, str]]:
    """(point id, doc_id) of every point, paging through ``scroll`` (payload ``doc_id`` only); raises
    :class:`ForeignPointsError` at the end when some were not written by hybrid-rag."""
    foreign = []
    for r in scrolled(scroll):
        doc_id = (r.payload or {}).get("doc_id")
        if isinstance(doc_id, str):
            yield str(r.id), doc_id
        else:
            foreign.append(str(r.id))
    if foreign:
        raise foreign_points_error(where, foreign)


def foreign_points_error(where: str, ids: Sequence[str]) -> ForeignPointsError:
    shown = ", ".join(map(repr, ids[:5])) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
    return ForeignPointsError(
        f"{where} holds {counted(len(ids), 'point')} that hybrid-rag did not write (no doc_id "
        f"and content_hash payload: another tool's, e.g. langchain-qdrant's): {shown}. Nothing was changed: a sync "
        "or rebuild would have to keep or delete them, and deleting another tool's data is for its owner to decide. "
        "Delete them with the tool that wrote them (qdrant-client: client.delete(COLLECTION, points_selector=[ids])), "
        "or keep that tool's data in a collection of its own"
    )


def doc_id_batches(doc_ids: Collection[str] | None) -> list[list[str] | None]:
    """``[None]`` (every point) for ``doc_ids`` None, else the ids in sorted batches of :data:`DOC_ID_BATCH`."""
    if doc_ids is None:
        return [None]
    ids = sorted(set(doc_ids))
    return [ids[i : i + DOC_ID_BATCH] for i in range(0, len(ids), DOC_ID_BATCH)]


class QdrantStore(ABC):
    """One collection in one Qdrant backend.

    A collection is versioned: its data lives in physical collections ``<name>__v<N>`` and readers reach the
    current one through an atomic pointer (a Qdrant alias on a server, a pointer file for the embedded engine).
    A store made with ``version=None`` follows the pointer; one made with a version number is pinned to that
    physical collection (a rebuild's target). Version 0 is a collection made before versioning existed: it
    keeps working until the first rebuild replaces it.

    Writers that may run beside readers in other processes (the embedded engine locks a version's files
    while a process has them open) never write the published version: they ``stage`` a copy of it, write
    there, and ``publish`` it; ``write_lock`` serialises them.
    """

    location: str
    collection: str
    version: int | None = None
    writes_in_place: bool = True  # False: every write goes to a staged copy (see stage(copy_current=True))
    resumed: bool = False  # a version stage() returned as the unfinished one of a failed write (not a fresh copy)
    reused: bool = False  # resumed, and complete: the same write had sealed it (stage(reuse_sealed=True))

    # -- versions: backend primitives -------------------------------------------------------------------
    @abstractmethod
    def current_version(self) -> int | None:
        """The version readers see now (0: unversioned), or None when the collection does not exist."""

    @abstractmethod
    def _versions(self) -> list[int]:
        """Every physical version present, published or not."""

    def missing_message(self, where: object) -> str:
        """Why the collection cannot be opened when no version of it is published: it does not exist, or its first
        build is running or was stopped before it published (a staged version only: what ``collections`` lists as
        unfinished)."""
        if self.version is None and self._versions():
            return (
                f"collection {self.collection!r} at {where} has no published version yet: its first build is "
                "running, or was stopped before it finished (then rerun the index command)"
            )
        return f"collection {self.collection!r} does not exist at {where}; {self._existing_collections()}"

    def _existing_collections(self) -> str:
        """What a missing collection's message ends with: the collections that do exist here (a mistyped name's
        closest first, at most :data:`LISTED_NAMES`), else that documents must be indexed first."""
        try:
            names = [name for name in self.collection_names() if name != self.collection]
        except (StoreError, OSError):  # unlisted (a server's permissions): the message stands without them
            names = []
        if not names:
            return "index documents first"
        close = difflib.get_close_matches(self.collection, names, n=LISTED_NAMES, cutoff=0.6)
        ordered = [*close, *(name for name in names if name not in close)]
        listed = ", ".join(ordered[:LISTED_NAMES])
        if len(ordered) > LISTED_NAMES:
            listed += f" and {len(ordered) - LISTED_NAMES} more (`hybrid-rag collections` lists them)"
        return (f"did you mean {close[0]!r}? " if close else "") + f"existing: {listed}"

    def collection_names(self) -> list[str]:
        """The collections in this store's backend (versions folded into their collection's name); an entry whose
        name no collection can have (e.g. made by hand), or that hybrid-rag did not create, is left out with a
        warning (see :func:`retrieval.store.collection_names`)."""
        published, physical = self.catalogue()
        names = set(published)
        for name in physical:
            match = PHYSICAL_NAME.match(name)
            names.add(match["name"] if match else name)
        return sorted(name for name in names if _valid_name(name))

    @abstractmethod
    def catalogue(self) -> tuple[Collection[str], list[str]]:
        """The collection names this store's backend publishes (pointers, aliases) and the physical collections
        hybrid-rag made there (``<name>__v<N>``, or an earlier release's plain ``<name>``)."""

    def _taken_versions(self) -> list[int]:
        """Every version number in use, by hybrid-rag or not (a new version gets a higher one)."""
        return self._versions()

    @abstractmethod
    def _pinned(self, version: int) -> QdrantStore:
        """A store on the physical collection of ``version`` (not created here)."""

    @abstractmethod
    def _switch(self, staged: QdrantStore) -> None:
        """Point the collection's name at ``staged`` atomically."""

    @abstractmethod
    def _create_physical(self, schema: CollectionSchema) -> None: ...

    @abstractmethod
    def _copy_physical(self, source: int, target: int) -> None:
        """Copy version ``source`` (points, vectors, payload indexes, schema) into the new version ``target``."""

    def _stage_info(self, version: int) -> dict[str, Any] | None:
        """What ``stage(copy_current=True)`` recorded about ``version`` (None where the backend keeps nothing)."""
        return None

    def _set_stage_info(self, version: int, info: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def seal(self, staged: QdrantStore) -> None:
        """Mark a staged version as completely written: it is published, or refused, but not resumed (only
        reused by the same write, see :meth:`stage`)."""
        info = self._stage_info(staged.version or 0)
        if info is not None:
            self._set_stage_info(staged.version or 0, {**info, "complete": True})

    def mark_copies_stale(self) -> list[int]:
        """Before a write into the live collection (servers): the staged copies of the published version miss
        it, so they are marked stale: never resumed nor published; the next ``stage`` drops them. Returns the
        stale copies of the published version (a write that deletes documents deletes them there too)."""
        current = self.current_version()
        copies = []
        for v in self._versions():
            info = self._stage_info(v) if current is not None and v > current else None
            if info is None or info.get("base") != current:
                continue
            if not info.get("stale"):
                log.info("version %d of %r misses a write into the live collection: stale", v, self.collection)
                self._set_stage_info(v, {**info, "stale": True})
            copies.append(v)
        return copies

    def will_overwrite_text(self) -> None:
        """Before overwriting points with other text (an edited document's chunks): the version loses text, as by a
        delete (see :meth:`delete_ids`). A server's live collection keeps no copy for this store to rewrite."""
        return None

    def erase_from_copies(self, copies: Sequence[int], ids: Sequence[str] = (), doc_ids: Sequence[str] = ()) -> None:
        """Delete the points ``ids`` and the documents ``doc_ids`` from the stale copies ``copies`` too (see
        :meth:`mark_copies_stale`): a deletion leaves no copy of the deleted text behind."""
        for v in copies:
            copy = self._pinned(v)
            try:
                copy.delete_ids(ids)
                copy.delete_documents(doc_ids)
            finally:
                copy.close()

    def exists(self) -> bool:
        """Whether any version of the collection is here, published or staged (a lost pointer's too); a folder or
        collection named like it that hybrid-rag did not make is refused (:class:`StoreError`)."""
        return bool(self._versions())

    def intact_versions(self) -> list[int]:
        """The versions that are, or were, published (not a failed write's or a refused one's staged copy): a
        version made before staging records existed, or by a restore, a published one, or a copy of a published
        version that was sealed, or a complete one an earlier release wrote (its records do not say whether it was
        published). A lost pointer to the current version must never cost them."""
        out = []
        for v in self._versions():
            info = self._stage_info(v)
            published = (
                info is None
                or info.get("published")
                or (info.get("complete") and (info.get("base") or _earlier_release(info)))
            )
            published = published and not (info or {}).get("dropped")
            if v and published and self._pinned(v).schema() is not None:
                out.append(v)
        return out

    def _restore_hint(self, version: int) -> str:
        """How to point readers at ``version`` again (by hand)."""
        return f"point {self.collection!r} at {version_name(self.collection, version)} again"

    def _pointer_where(self) -> str:
        """Where readers' pointer to the current version is (for messages)."""
        return f"{self.location} (alias {self.collection!r})"

    def check_pointer(self, current: int | None) -> None:
        """Refuse to go on when readers' pointer is missing (``current`` None) or names an absent version while
        intact versions exist: every write would otherwise drop them as abandoned stagings."""
        intact = [v for v in self.intact_versions() if v != current]
        if not intact:
            return
        published = [v for v in intact if (self._stage_info(v) or {"published": True}).get("published")]
        newest = (published or intact)[-1]  # not a copy that was sealed, then refused by a gate
        found = ", ".join(f"{v} ({version_name(self.collection, v)})" for v in intact)
        what = "is missing" if current is None else f"names version {current}, which does not exist"
        unknown = [v for v in intact if v > newest or not published]
        caveat = (
            f" (version {', '.join(map(str, unknown))} is not recorded as published: an earlier release wrote it, "
            "or a gate refused it; check it before pointing readers at it)"
            if unknown
            else ""
        )
        raise StoreError(
            f"the version pointer of collection {self.collection!r} ({self._pointer_where()}) {what}, but intact "
            f"versions are there: {found}. Nothing was changed. To restore the last published one, "
            + self._restore_hint(newest)
            + caveat
        )

    @contextmanager
    def write_lock(self, timeout_s: float | None = None) -> Iterator[None]:
        """Held by a writer from staging to publishing; a no-op where the backend serialises writes itself."""
        yield

    # -- versions: shared logic ----------------------------------------------------------------------------
    def pinned(self, version: int) -> QdrantStore:
        """A store on version ``version`` of this collection (e.g. a staged one, to evaluate it)."""
        return self._pinned(version)

    def stage(
        self,
        schema: CollectionSchema,
        *,
        copy_current: bool = False,
        resume: bool = True,
        intent: str | None = None,
        reuse_sealed: bool = False,
    ) -> QdrantStore:
        """A pinned store on a new, unpublished version (``publish`` it when it is complete).

        ``copy_current``: the new version starts as a copy of the published one (same schema), so an
        incremental write touches only what changed while readers keep the published version; the unfinished
        copy of a failed write is resumed, unless ``resume`` is False (a write that must not publish another's
        half-done work, e.g. a delete). Otherwise it starts empty (a rebuild), and the unfinished target of a
        failed rebuild is resumed when it has the same schema, else deleted. ``intent`` (a fingerprint of the
        write: its input and mode) is recorded with the staged version, and only a write with the same intent
        resumes it: another write never publishes a failed one's half-written documents. A sealed version
        (complete, then refused or left unpublished) is not resumed: a new version gets the next number (numbers
        only grow while the highest version exists), unless ``reuse_sealed`` (a write that publishes only after a
        gate judged it, the Dagster assets): then the sealed version of the same write, on the same published
        version and schema, is resumed as it is (``reused``), e.g. after a run was stopped between staging and
        publishing; the write finds nothing left to do in it.
        """
        if self.version is not None:
            raise ValueError(f"stage() needs the collection {self.collection!r}, not its version {self.version}")
        current = self.current_version()
        if current is None:
            self.check_pointer(None)  # a lost pointer (or alias): its intact versions are not pending stagings
        if copy_current:
            pending = [v for v in self._versions() if current is None or v > current]
            unfinished = {"base": current, "complete": False, "intent": intent}
            resumed = self._resumable(pending, unfinished, schema, resume, reuse_sealed)
            if resumed is not None:
                return resumed
            target = max([current or 0, *self._taken_versions()]) + 1  # never the number of a refused version
            for v in pending:  # refused or abandoned stagings (kept while another process holds them)
                self._pinned(v).drop()
            staged = self._pinned(target)
            if current is not None and self.schema() == schema:
                self._copy_physical(current, target)
                log.info("staged version %d of %r as a copy of version %d", target, self.collection, current)
            else:
                staged._create_physical(schema)
            self._set_stage_info(target, unfinished)
            return staged
        current = current or 0
        versions = self._versions()
        pending = sorted(v for v in versions if v > current)
        unfinished = {"rebuild": True, "complete": False, "intent": intent}
        resumed = self._resumable(pending, unfinished, schema, resume, reuse_sealed)
        if resumed is not None:
            return resumed
        target = max([current, *self._taken_versions()]) + 1  # never a refused (sealed) or abandoned one's number
        for v in pending:
            self._pinned(v).drop()
        staged = self._pinned(target)
        staged._create_physical(schema)
        self._set_stage_info(target, unfinished)
        return staged

    def _resumable(
        self, pending: list[int], unfinished: dict[str, Any], schema: CollectionSchema, resume: bool, reuse: bool
    ) -> QdrantStore | None:
        """The last ``pending`` version, resumed, when the same write left it (its record is ``unfinished``, or with
        ``reuse`` that record sealed) with ``schema``; None: another write's, or none (see :meth:`stage`)."""
        if not resume or not pending:
            return None
        last, info = pending[-1], self._stage_info(pending[-1])
        sealed = reuse and unfinished["intent"] is not None and info == {**unfinished, "complete": True}
        if (info != unfinished and not sealed) or self._pinned(last).schema() != schema:
            return None
        what = "rebuild" if unfinished.get("rebuild") else "write"
        if sealed:  # unfinished again until sealed: a write stopped in it resumes it
            self._set_stage_info(last, unfinished)
            log.info("reusing the complete staged %s of %r (version %d): the same write", what, self.collection, last)
        else:
            log.info("resuming the unfinished %s of %r (version %d)", what, self.collection, last)
        store = self._pinned(last)
        store.resumed, store.reused = True, sealed
        return store

    def publish(self, staged: QdrantStore) -> None:
        """Switch readers to ``staged`` atomically, then delete the versions before it. The published version
        itself (what a sync that changed nothing reports) is left as it is."""
        current = self.current_version()
        if staged.collection == self.collection and staged.version is not None and staged.version == current:
            log.info("collection %r: version %d is already published", self.collection, current)
            return
        if staged.collection != self.collection or not staged.version:
            raise ValueError(f"{staged.location} is not a staged version of {self.collection!r}")
        if current is not None and staged.version < current:
            raise StoreError(
                f"not publishing version {staged.version} of {self.collection!r} at {self.location}: "
                f"version {current} was published after it"
            )
        if (self._stage_info(staged.version) or {}).get("stale"):
            raise StoreError(
                f"not publishing version {staged.version} of {self.collection!r} at {self.location}: version "
                f"{current} was written in place (index, delete) after it was copied; run the staged write again"
            )
        staged.flush()
        self._switch(staged)
        info = self._stage_info(staged.version)
        if info is not None:  # tells a published version from a refused one should the pointer be lost
            self._set_stage_info(staged.version, {**info, "published": True})
        staged.mark_written()
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

    @contextmanager
    def reading(self) -> Iterator[bool]:
        """A block whose reads (in this thread) all answer from one version, the current one when it begins, even
        when a writer publishes another meanwhile: one search reads one version. Yields whether this store
        followed a rebuild (see ``refresh``)."""
        yield self.refresh()

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

    def check_schema(
        self, expected: CollectionSchema | None = None, *, missing_ok: bool = False, write: bool = False
    ) -> CollectionSchema | None:
        """The existing collection's schema, checked against ``expected`` (the one schema check of the retriever,
        the indexer, the ``qdrant_index`` asset and the CLI); None when it does not exist and ``missing_ok``.

        Raises :class:`SchemaMismatchError` when the collection does not exist (unless ``missing_ok``) or was
        built with other models than ``expected`` (None: existence only), or, with ``write`` (before writing
        into it), chunked or encoded with other settings (document prompt, BM25 parameters, chunk sizes).
        """
        existing = self.schema()
        if existing is None:
            if missing_ok:
                return None
            raise SchemaMismatchError(self.missing_message(self.location))
        problems = expected.differences(existing, write=write) if expected is not None else []
        if problems:
            contents = ("dense_fingerprint", "sparse_fingerprint")
            models = any(p.split(":")[0] in (*MODEL_FIELDS, *contents) for p in problems)
            built = (
                f"collection {self.collection!r} at {self.location} was built with other "
                + ("models (" if models else "index-time settings (")
                + "; ".join(problems)
                + ")"
            )
            if not write:  # a read: the fix is the reader's settings, not rebuilding the collection for every reader
                raise SchemaMismatchError(f"{built}. {_read_remedy(existing, problems)}", problems)
            raise SchemaMismatchError(
                built
                + ". Use another collection name, or rebuild it (Indexer.rebuild, hybrid-rag index --rebuild)"
                + (
                    "."
                    if models
                    else ", which re-encodes every document with the new settings; a write with "
                    "these settings would mix two encodings in one collection."
                ),
                problems,
            )
        unrecorded = existing.unrecorded() if write else []
        if unrecorded and self.collection not in _warned_unrecorded:
            _warned_unrecorded.add(self.collection)
            log.warning(
                "collection %r at %s does not record its %s (made by an older release): writing with the current "
                "settings; rebuild it (hybrid-rag index --rebuild) if they differ from those it was built with",
                self.collection,
                self.location,
                ", ".join(unrecorded),
            )
        return existing

    @abstractmethod
    def _schema_record(self) -> dict[str, Any] | None:
        """The schema as this store's version records it (None: no such version)."""

    @abstractmethod
    def _record_schema(self, schema: CollectionSchema) -> None:
        """Record ``schema`` as this store's version's schema (replacing the record)."""

    def upgrade_schema_record(self, chunk_budget: int | None = None) -> None:
        """Before writing points into this version: record its schema as this release does (see
        :meth:`CollectionSchema.to_dict`) where a release before it recorded it otherwise, so that releases which
        would write other terms into it refuse it from now on, with the ``chunk_budget`` the points' document
        fingerprints are taken with where it records none or another. Nothing is re-encoded."""
        record = self._schema_record()
        if record is not None:
            schema = CollectionSchema.from_dict(record)
            budget = chunk_budget if chunk_budget is not None else schema.chunk_budget
            if record.get("sparse_model") != schema.to_dict()["sparse_model"]:
                log.info("collection %r: recording its BM25 analyzer in its sparse model's name", self.collection)
            elif budget == record.get("chunk_budget"):
                return
            self._record_schema(replace(schema, chunk_budget=budget))

    def ensure(self, schema: CollectionSchema) -> CollectionSchema:
        """Create the collection, or check that the existing one was built with the same models and settings;
        the schema to write with (the existing collection's, or ``schema``)."""
        existing = self.check_schema(schema, missing_ok=True, write=True)
        if existing is None:
            self._create(schema)
        return existing or schema

    def upsert(self, chunks: Sequence[Chunk], dense: np.ndarray, sparse: Sequence[SparseVec]) -> None:
        """Write ``chunks`` (point id :attr:`Chunk.id`, payload :meth:`Chunk.payload`) with their vectors, row
        ``i`` of ``dense`` (float32, the collection's dimension) and ``sparse[i]``, replacing points of the same
        id, into the version this store writes. Readers of that version see them at once: write a staged version
        (:meth:`stage`, as :class:`~retrieval.indexer.Indexer` does) to publish them together. Raises
        ``ValueError`` when the three lengths differ, :class:`StoreError` when the write is refused or fails,
        ``ClosedError`` after :meth:`close`."""
        self.upsert_points(
            [StoredPoint(c.id, d, s, c.payload()) for c, d, s in zip(chunks, dense, sparse, strict=True)]
        )

    @abstractmethod
    def upsert_points(self, points: Sequence[StoredPoint]) -> None:
        """Write ``points`` as they are (see :meth:`upsert`), replacing points of the same id."""

    @abstractmethod
    def all_points(self) -> Iterator[list[StoredPoint]]:
        """Every point of the version this store reads, with its vectors and payload, a page at a time (one
        version for every page)."""

    @abstractmethod
    def delete_ids(self, ids: Sequence[str]) -> None:
        """Delete the points ``ids`` (point ids, not document ids: see :meth:`delete_documents`) from the version
        this store writes; ids not stored are ignored, none is a no-op. Raises ``InvalidArgumentError`` for one
        string instead of a list, :class:`StoreError` when the write is refused or fails, ``ClosedError`` after
        :meth:`close`."""

    @abstractmethod
    def delete_documents(self, doc_ids: Sequence[str]) -> None: ...

    @abstractmethod
    def stored_chunks(self, doc_ids: Collection[str] | None = None) -> dict[str, StoredChunk]:
        """point id -> :class:`StoredChunk` for every stored point, or (``doc_ids``) for the points of those
        documents only: a filtered scroll on the ``doc_id`` index, :data:`DOC_ID_BATCH` ids per request."""

    def stored_hashes(self, doc_ids: Collection[str] | None = None) -> dict[str, tuple[str, str]]:
        """point id -> (doc_id, content_hash), of every stored point or of those of documents ``doc_ids``."""
        return {pid: (s.doc_id, s.content_hash) for pid, s in self.stored_chunks(doc_ids).items()}

    @abstractmethod
    def stored_owners(self) -> Iterator[tuple[str, str]]:
        """(point id, doc_id) of every stored point, read a page at a time (memory does not grow with the store)."""

    @abstractmethod
    def count(self, filter: dict[str, Any] | None = None) -> int:
        """The exact number of points (chunks, not documents: :meth:`documents`) in the version this store
        reads, or of those matching ``filter`` (a search's metadata filter). Raises ``FilterError`` for a filter
        that cannot be built, :class:`StoreError` when the collection cannot be read, ``ClosedError`` after
        :meth:`close`."""

    # -- what `hybrid-rag collections` says of a collection ------------------------------------------------
    def documents(self) -> int:
        """The number of documents (distinct ``doc_id``) in the version this store reads: a scroll of every point's
        ``doc_id`` here; the backends ask the ``doc_id`` index instead (a facet) where the version has it. Points
        hybrid-rag did not write (no ``doc_id``) are no document."""
        found: set[str] = set()
        with suppress(ForeignPointsError):  # raised once every point was read
            found.update(doc_id for _, doc_id in self.stored_owners())
        return len(found)

    def _documents_by_facet(self, facet: Callable[[int, bool], Sequence[Any]], points: int) -> int:
        """The documents, from ``facet(limit, exact)``, the ``doc_id`` index's hits (``count`` per value) of a version
        of ``points`` points. The index's own counts first (fast); they are exact when they add up to ``points``
        (every point holds one ``doc_id``, and an index never misses a live point: a value counted from deleted
        points would make them add up to more), else the engine counts every value exactly (slower: per value)."""
        if not points:
            return 0
        hits = facet(points, False)
        if sum(hit.count for hit in hits) != points:
            hits = facet(points, True)
        return sum(1 for hit in hits if hit.count > 0)

    def last_write(self) -> dt.datetime | None:
        """When readers last saw the collection change (a publish, or a write in place), in UTC; None where it is
        not recorded (see :meth:`mark_written`)."""
        return None

    def mark_written(self) -> None:  # noqa: B027 - optional hook
        """Record now as the time of the last write (:meth:`publish`, and a write in place after its flush), where
        the backend records nothing by itself at each write."""

    def write_in_progress(self) -> dict[str, Any] | bool | None:
        """Whether a writer holds the collection's write lock now: the holder as its lock records it (``pid``,
        ``host``, ``since``; empty when unreadable), False when none does, None where no process can tell (a
        backend without a lock shared between processes)."""
        return None

    def query_batch(self, plans: Sequence[QueryPlan]) -> list[list[StoredHit]]:
        """Each plan's top ``limit`` hits, best first, hits of equal score by id, whatever the build.

        The engine orders tied scores by internal point offsets, which differ between builds of the same points
        (insertion order, batching, backend): so each list is read a few hits past its limit
        (:data:`TIE_READ_AHEAD`), and further (up to :data:`TIE_MAX_EXTRA` past it) while the score at the cut
        ties with the last hit read, then sorted by (score, id) and cut."""
        asked = [replace(p, limit=p.limit + TIE_READ_AHEAD) for p in plans]
        results = self._query_batch(asked)
        while open_ties := [
            i
            for i, (plan, ask, hits) in enumerate(zip(plans, asked, results, strict=True))
            if _tie_beyond(hits, plan.limit, ask.limit) and ask.limit - plan.limit < TIE_MAX_EXTRA
        ]:
            for i in open_ties:
                extra = min(2 * (asked[i].limit - plans[i].limit), TIE_MAX_EXTRA)
                asked[i] = replace(asked[i], limit=plans[i].limit + extra)
            for i, hits in zip(open_ties, self._query_batch([asked[i] for i in open_ties]), strict=True):
                results[i] = hits
        return [score_order(hits)[: plan.limit] for plan, hits in zip(plans, results, strict=True)]

    @abstractmethod
    def _query_batch(self, plans: Sequence[QueryPlan]) -> list[list[StoredHit]]:
        """The engine's answer to each plan: its top ``limit`` hits, tied scores in the engine's order."""

    def query(self, plan: QueryPlan) -> list[StoredHit]:
        return self.query_batch([plan])[0]

    @abstractmethod
    def points(self, ids: Sequence[str], with_dense_vectors: bool = False) -> dict[str, StoredHit]:
        """id -> the stored point (payload, and the dense vector when asked; score 0) for the ids that exist."""

    @abstractmethod
    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """point id -> its stored dense vector (float32, the collection's dimension), for the ids that exist
        (others are left out), without payloads. Raises ``InvalidArgumentError`` for one string instead of a
        list, :class:`StoreError` when the collection cannot be read, ``ClosedError`` after :meth:`close`."""

    @abstractmethod
    def stored_vectors(self, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, SparseVec]]:
        """id -> the stored (dense, sparse) vectors, for the ids that exist: what a rewrite of an unchanged chunk
        writes again instead of encoding it."""

    # -- payload indexes (PAYLOAD_INDEXES) -------------------------------------------------------------------
    @abstractmethod
    def payload_indexes(self) -> dict[str, str] | None:
        """The metadata keys this version's engine indexes, key -> type as ``PAYLOAD_INDEXES`` names them
        (``doc_id``, always indexed, left out); None where the backend keeps no payload indexes (qdrant-client's
        local mode)."""

    @abstractmethod
    def _create_payload_index(self, key: str, kind: str) -> None:
        """Index the metadata key ``key`` as ``kind`` (replacing an index of another type)."""

    def missing_payload_indexes(self, wanted: dict[str, str]) -> dict[str, str]:
        """The indexes of ``wanted`` (metadata key -> type) this version lacks or has with another type."""
        have = self.payload_indexes()
        return {} if have is None else {k: t for k, t in wanted.items() if have.get(k) != t}

    def index_payload(self, wanted: dict[str, str]) -> dict[str, str]:
        """Create the payload indexes of ``wanted`` this version lacks (see :meth:`missing_payload_indexes`);
        indexes it has beyond ``wanted`` are kept. Returns the ones created."""
        missing = self.missing_payload_indexes(wanted)
        for key, kind in missing.items():
            self._create_payload_index(key, kind)
            log.info("collection %r: indexed metadata key %r as %s", self.collection, key, kind)
        return missing

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make every write durable (a no-op where the backend does it per request)."""

    @abstractmethod
    def drop(self) -> list[str]:
        """Delete the collection (every version, published or staged, and the pointer or alias readers reach it
        by) and everything in it, under :meth:`write_lock`; a pinned store drops its version only. Returns the physical
        collections dropped. A name that reaches what hybrid-rag did not make is refused (:class:`StoreError`)."""

    @abstractmethod
    def close(self) -> None: ...


class ShownFilter(dict):
    """A filter dict as the framework adapters read it: a key tests the value their documents show
    (:func:`retrieval.adapters.hit_metadata`). ``title`` and ``chunk_index`` test the document's own metadata
    field of that name where it has one (not null, not an empty list), else the stored field; ``content_hash``
    the document's metadata (the stored hash is not shown); ``chunk_id`` (the point's id) is refused; with
    ``shows_source`` (LangChain's documents show a ``source``), ``source`` the document's own metadata field of
    that name where it has one, else its ``source_path`` where it has one, else its id
    (:func:`retrieval.adapters.shown_source`); other keys as in :func:`filter_conditions`."""

    def __init__(self, spec: dict[str, Any], *, shows_source: bool = False):
        super().__init__(spec)
        self.shows_source = shows_source


def filter_conditions(
    spec: dict[str, Any] | None, indexes: Mapping[str, str] | None = None
) -> list[list[tuple[str, str, Any]]]:
    """Normalize a filter dict into tests on payload keys; every problem names its field.

    The result is a conjunction of alternatives: every inner list holds ``(payload key, kind, value)`` tests of
    which one must match, and every inner list must. Kinds: ``value`` (a string or an integer beyond 2^53:
    ``{"topic": "music"}``), ``bool`` (``{"published": True}``), ``any`` (a list of strings:
    ``{"topic": ["a", "b"]}``; also a string with other Unicode normalization forms, each of which matches:
    ``"café"`` composed or decomposed), ``range`` (numbers: ``{"year": {"gte": 2000, "lt": 2010}}``; also a number's
    equality, so that ``{"stars": 4}`` matches 4 and 4.0 alike, and each number of a list), ``datetime`` (ISO
    8601 strings or datetime/date objects, as RFC 3339 strings: ``{"published_at": {"gte": "2024-01-01"}}``;
    naive times are UTC) and ``empty`` (``{"field": None}``: the field is missing, null or an empty list).

    Keys other than the stored top-level fields refer to the document's metadata; a key with dots or brackets
    matches the key as written or, as a Qdrant path, a nested field (``"author.name"``: ``{"author.name": x}``
    or ``{"author": {"name": x}}``); a key starting with ``metadata.`` is a payload path into the metadata
    (``"metadata.author.name"``). ``doc_id``, ``title`` and ``content_hash`` hold strings. A :class:`ShownFilter`
    (the adapters') reads ``title``, ``chunk_index``, ``content_hash`` and ``chunk_id`` as its documents show them.
    A filter nested deeper than :data:`MAX_FILTER_DEPTH` is refused.

    ``indexes`` (metadata key -> type, as :meth:`QdrantStore.payload_indexes` gives them): a number on a key with a
    ``datetime`` index, or an ISO date on one with an ``integer``/``float`` index, is refused: the index would
    compare it as a Unix timestamp and match what a key without the index never matches.
    """
    if spec is None:
        return []
    if not isinstance(spec, dict):
        raise FilterError(f"a filter must be a dict of field -> condition, got {type(spec).__name__}")
    check_nesting(spec, "the filter")
    shown = isinstance(spec, ShownFilter)
    groups = []
    for key, value in spec.items():
        if not isinstance(key, str) or not key:
            raise FilterError(f"filter field names must be non-empty strings, got {key!r}")
        if shown and key == "chunk_id":
            raise FilterError(
                "filter on 'chunk_id': the chunk id shown is the point's id, which filters do not test; filter on "
                "'doc_id', or on 'metadata.chunk_id' for the document's own metadata field of that name"
            )
        if key in STRING_FIELDS and not _strings_or_none(value) and not (shown and key == "content_hash"):
            hint = " (a document id written as 6 is stored as '6')" if key == "doc_id" else ""
            raise FilterError(f"filter on {key!r}: the field holds strings{hint}, got {value!r}")
        tests = _tests(key, value)
        if shown and key in SHOWN_STORED:  # the document's own (non-empty) value, else the stored one
            found = _own_else_stored(key, tests)
        elif shown and key == "source" and spec.shows_source:
            found = _own_else_path_else_id(tests)
        else:
            paths = [f"metadata.{key}"] if shown and key == "content_hash" else _paths(key)
            if tests[0][0] == "empty":  # no value under any reading of the key
                found = [[(path, "empty", None)] for path in paths]
            else:
                found = [[(path, kind, v) for path in paths for kind, v in tests]]
        for path, kind, v in (test for group in found for test in group):
            _check_index(key, path, kind, v, indexes or {})
        groups += found
    return groups


def _check_index(key: str, path: str, kind: str, value: Any, indexes: Mapping[str, str]) -> None:
    """Refuse a test of ``key`` whose type the payload index on ``path`` would convert (see
    :func:`filter_conditions`)."""
    index = indexes.get(path.removeprefix("metadata.")) if path.startswith("metadata.") else None
    number = kind == "range" or (kind == "value" and _is_number(value))
    if index == "datetime" and number:
        given, other, wanted = "a number", "ISO date", 'ISO dates ({"gte": "2021-01-01"})'
    elif index in ("integer", "float") and kind == "datetime":
        given, other, wanted = "an ISO date", "number", 'numbers ({"gte": 2021})'
    else:
        return
    article = "an" if index == "integer" else "a"
    raise FilterError(
        f"filter on {key!r}: {given}, but the key has {article} {index} payload index (PAYLOAD_INDEXES), which would "
        f"read it as a Unix timestamp (without the index it matches no stored {other}): give {wanted}"
    )


def _own_else_stored(key: str, tests: list[tuple[str, Any]]) -> list[list[tuple[str, str, Any]]]:
    """``own matches or (own is empty and stored matches)`` as a conjunction of alternatives: ``(own matches or
    own is empty) and (own matches or stored matches)``; for ``None``: own and stored both empty."""
    own = f"metadata.{key}"
    if tests[0][0] == "empty":
        return [[(own, "empty", None)], [(key, "empty", None)]]
    mine = [(own, kind, v) for kind, v in tests]
    return [[*mine, (own, "empty", None)], [*mine, *((key, kind, v) for kind, v in tests)]]


def _own_else_path_else_id(tests: list[tuple[str, Any]]) -> list[list[tuple[str, str, Any]]]:
    """The ``source`` shown (:func:`retrieval.adapters.shown_source`) matches, as a conjunction of alternatives:
    ``own or (own is empty and (path or (path is empty and id)))`` is ``(own or own is empty) and (own or path or
    path is empty) and (own or path or id)``; for ``None``: nothing (the id is never empty)."""
    if tests[0][0] == "empty":
        return [[("doc_id", "empty", None)]]
    own, path, doc_id = (
        [(field, kind, v) for kind, v in tests] for field in ("metadata.source", "metadata.source_path", "doc_id")
    )
    return [
        [*own, ("metadata.source", "empty", None)],
        [*own, *path, ("metadata.source_path", "empty", None)],
        [*own, *path, *doc_id],
    ]


def check_nesting(value: Any, what: str) -> None:
    """Refuse ``value`` when it nests dicts and lists deeper than :data:`MAX_FILTER_DEPTH` (read without
    recursion: a filter nested thousands of levels deep gets a :class:`FilterError`, not a RecursionError)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        if depth > MAX_FILTER_DEPTH:
            raise FilterError(f"{what} nests dicts and lists deeper than {MAX_FILTER_DEPTH} levels")
        pending.extend((child, depth + 1) for child in children)


def _strings_or_none(value: Any) -> bool:
    items = value if isinstance(value, list | tuple | set | frozenset) else [value]
    return value is None or all(isinstance(v, str) for v in items)


def _paths(key: str) -> list[str]:
    """The payload paths a filter key may mean: the metadata key as written, and a nested path if it is one."""
    if key in TOP_LEVEL_FILTER_KEYS:
        return [key]
    if key.startswith("metadata."):  # a payload path into the metadata, as Qdrant reads it
        if not PAYLOAD_PATH.fullmatch(key.removeprefix("metadata.")):
            raise FilterError(
                f"filter on {key!r}: after 'metadata.' comes a path of keys (letters, digits, _ and -) joined by "
                "dots, list indexes in square brackets; for a key with other characters, filter on the key itself "
                "(without 'metadata.')"
            )
        return [key]
    if PLAIN_KEY.fullmatch(key):
        return [f"metadata.{key}"]
    if '"' in key or "\\" in key:  # Qdrant's quoted path segments have no escapes
        raise FilterError(f"filter on {key!r}: a key with a double quote or a backslash cannot be filtered")
    literal = f'metadata."{key}"'  # Qdrant's quoted path segment: the key with its dots and brackets
    return [literal, f"metadata.{key}"] if PAYLOAD_PATH.fullmatch(key) else [literal]


def _tests(key: str, value: Any) -> list[tuple[str, Any]]:
    """The (kind, value) alternatives of one condition: several for numbers, one otherwise."""
    if value is None:
        return [("empty", None)]
    if isinstance(value, bool):
        return [("bool", value)]
    if isinstance(value, str):
        return [_string(value)]
    if _is_number(value):
        return [_number(key, value)]
    if isinstance(value, dt.date):
        return [("datetime", {"gte": _iso(key, value), "lte": _iso(key, value)})]
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if items and all(type(v) is str for v in items):
            return [("any", sorted(set().union(*map(unicode_forms, items))))]
        if items and all(_is_number(v) for v in items):
            return [_number(key, v) for v in dict.fromkeys(items)]
        raise FilterError(
            f"filter on {key!r}: a list must hold strings or numbers (not mixed, not empty), got {items!r}"
        )
    if isinstance(value, dict):
        unknown = set(value) - RANGE_OPERATORS
        if unknown or not value:
            raise FilterError(
                f"filter on {key!r}: unknown range operators {sorted(map(str, unknown))}; valid: gt, gte, lt, lte"
            )
        bounds = list(value.values())
        if all(_is_number(v) for v in bounds):
            return [("range", {op: _float(key, v) for op, v in value.items()})]
        if all(isinstance(v, str | dt.date) for v in bounds):
            return [("datetime", {op: _iso(key, v) for op, v in value.items()})]
        raise FilterError(f"filter on {key!r}: range bounds must be all numbers or all ISO dates, got {value!r}")
    raise FilterError(f"filter on {key!r}: unsupported value {value!r} of type {type(value).__name__}")


def _string(value: str) -> tuple[str, Any]:
    """Equality with a string, stored as written, composed (NFC) or decomposed (NFD): "café" with or without a
    combining accent is one value, as it is one document id (:func:`~retrieval.documents.unicode_forms`)."""
    forms = unicode_forms(value)
    return ("value", value) if len(forms) == 1 else ("any", sorted(forms))


def _is_number(value: Any) -> bool:
    """An int or float, numpy's too (as pandas hands them out); not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(key: str, value: numbers.Real) -> tuple[str, Any]:
    """Equality with a number, whether stored as an integer or a float: a range on the number, exact as a
    64-bit float; an integer beyond 2^53 (not exact as a float) matches stored integers only."""
    if isinstance(value, numbers.Integral) and abs(value := int(value)) >= 2**53:
        if not INT64_MIN <= value <= INT64_MAX:
            raise FilterError(
                f"filter on {key!r}: {_int_text(value)} is outside the 64-bit integer range that filters can match "
                "(-2**63 to 2**63 - 1)"
            )
        return "value", value
    number = _float(key, value)
    return "range", {"gte": number, "lte": number}


def _float(key: str, value: numbers.Real) -> float:
    try:
        number = float(value)
    except OverflowError:
        raise FilterError(f"filter on {key!r}: {_int_text(value)} is too large for a 64-bit float") from None
    if math.isnan(number):
        raise FilterError(f"filter on {key!r}: NaN matches nothing; use a number")
    return number


def _int_text(value: int) -> str:
    """An integer for a message: its digits, or its size when it has too many (``str`` refuses over 4300)."""
    return str(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"


def _iso(key: str, value: str | dt.date) -> str:
    """An ISO 8601 date or datetime as an RFC 3339 string in UTC (naive values are taken as UTC)."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            number = _read_number(value)
            hint = f" (a range of numbers takes numbers: {number}, not {value!r})" if number is not None else ""
            raise FilterError(f"filter on {key!r}: {value!r} is not an ISO 8601 date or datetime{hint}") from None
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def filter_misses(store: QdrantStore, spec: dict[str, Any]) -> list[str]:
    """Why filter ``spec`` matches no point of ``store``, one line per condition that matches none alone (empty
    when some point matches ``spec``): its key is on no point, or it holds values of another type, which never
    match (``{"year": "2020"}`` where ``year`` holds numbers: ``{"year": 2020}`` matches N points; a range of
    numbers where it holds ISO dates), or none of its values matches. A filter of the other type is valid (a
    key may hold numbers in one collection and dates in another), so a search with it finds nothing without an
    error; this tells why, with a few count queries. A key with a payload index holds what its index type says:
    no values of another type are looked for (the index would convert them, see :func:`filter_conditions`)."""
    if store.count(spec):
        return []
    indexes = store.payload_indexes() or {}
    misses = [_miss(store, key, value, indexes) for key, value in spec.items() if not store.count({key: value})]
    return misses or ["each condition matches some points, but no point matches all of them"]


def _miss(store: QdrantStore, key: str, value: Any, indexes: Mapping[str, str]) -> str:
    """Why ``{key: value}`` (which matches no point) matches none."""
    if value is None:
        return f"every point has {key!r} (not null, not an empty list)"
    if not (present := store.count() - store.count({key: None})):
        return f"no point has {key!r}"
    other = None if key in STRING_FIELDS else _other_type(value)
    if other is not None and not _fits(key, other[0], indexes):
        other = None
    if other is not None and (n := store.count({key: other[0]})):
        condition, holds = other
        if holds in ("numbers", "strings"):
            never = "a string never matches a number" if holds == "numbers" else "a number never matches a string"
            return f"{key!r} holds {holds}: {_json({key: condition})} matches {counted(n, 'point')} ({never})"
        if holds == "dates":
            dates = f"{key!r} holds ISO dates on {counted(n, 'point')}"
            return f"{dates}: a range of numbers never matches one (give ISO dates)"
        return f"{key!r} holds numbers on {counted(n, 'point')}: a range of dates never matches one (give numbers)"
    return f"{key!r} is on {counted(present, 'point')}, none matching {_json(value)}"


def _fits(key: str, value: Any, indexes: Mapping[str, str]) -> bool:
    """Whether ``{key: value}`` tests values of the type the key's payload index (if any) holds."""
    try:
        filter_conditions({key: value}, indexes)
    except FilterError:
        return False
    return True


def _other_type(value: Any) -> tuple[Any, str] | None:
    """The condition that finds what the key holds when ``value`` (a string, a number, a list of either, or a
    range) has the wrong type, and what it then holds: ``numbers`` (for strings that read as numbers),
    ``strings``, ``dates`` or ``numbers in a range``. None for other values."""
    if isinstance(value, dict):
        return (ANY_DATE, "dates") if all(map(_is_number, value.values())) else (ANY_NUMBER, "numbers in a range")
    scalar = isinstance(value, str) or _is_number(value)
    if not scalar and not isinstance(value, list | tuple | set | frozenset):
        return None
    items = [value] if scalar else list(value)
    if all(isinstance(v, str) for v in items):
        converted, holds = [_read_number(v) for v in items], "numbers"
        if None in converted:
            return None
    elif all(map(_is_number, items)):
        converted, holds = [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in items], "strings"
    else:
        return None
    return (converted[0] if scalar else converted), holds


def _read_number(text: str) -> int | float | None:
    """The number ``text`` spells (``"2020"``, ``"4.5"``), None when it spells none (or no finite one)."""
    try:
        number = float(text)
    except ValueError:
        return None
    return None if not math.isfinite(number) else int(number) if number.is_integer() else number


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
