"""Indexing: documents -> chunks -> dense + sparse vectors -> Qdrant, idempotently."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.chunking import Chunk, Chunker, window_overlap
from retrieval.documents import (
    Document,
    InputProblem,
    SourceFormat,
    all_skipped,
    compact_repr,
    covered_by,
    detect_format,
    ids_from_folders_above,
    unicode_forms,
    validate_documents,
)
from retrieval.embedding_cache import embedded_text_hashes, text_hash
from retrieval.encoders.sparse import Bm25Encoder, SparseVec, SpladeEncoder
from retrieval.errors import (
    ALLOW_DELETE_HINT,
    InvalidArgumentError,
    NothingToIndexError,
    ResourceLimitError,
    UnsafeDeleteError,
    document_ids,
    not_one_string,
)
from retrieval.parts import Parts, describe
from retrieval.progress import progress_bar
from retrieval.settings import HeldSettings, canonical_model, parse_payload_indexes
from retrieval.store import CollectionSchema, QdrantStore, StoreError
from retrieval.store.base import StoredChunk, StoredHit
from retrieval.wording import counted

log = logging.getLogger(__name__)
MULTILINGUAL_MODEL = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
ENCODE_BLOCK = 1024
MAX_DELETE_SHARE = 0.5  # a sync deleting more than this share of a collection's documents or points needs allow_delete
MAX_NAMED = 100  # document ids a log line names (then: "and N more")


def locked_batches(
    encoder: Any,
    encode: Callable[[list[str]], Any],
    texts: Sequence[str],
    step: int,
    done: Callable[[int], None] | None = None,
) -> list:
    """``encode`` over ``texts`` in batches of ``step``, each under the encoder's lock (so searches interleave);
    ``done`` is told each batch's size after it (a progress bar)."""
    parts = []
    texts, step = list(texts), max(step, 1)
    for start in range(0, max(len(texts), 1), step):
        with encoder.lock:
            parts.append(encode(texts[start : start + step]))
        if done is not None:
            done(len(texts[start : start + step]))
    return parts


def length_order(texts: Sequence[str]) -> list[int]:
    """Positions of ``texts``, longest first (the order sentence-transformers gives one ``encode`` call): batches
    cut from it hold texts of similar length, so little padding is computed."""
    return sorted(range(len(texts)), key=lambda i: -len(texts[i]))


@dataclass(frozen=True, repr=False)  # Chunk's short repr
class DocumentChunk(Chunk):
    """A chunk that carries its document's fingerprint (:meth:`Indexer.fingerprint`) and chunk count into its
    payload: the next write skips a document whose stored points all carry the same, without chunking it."""

    doc_hash: str = ""
    doc_chunks: int = 0

    def payload(self) -> dict[str, Any]:
        return {**super().payload(), "doc_hash": self.doc_hash, "doc_chunks": self.doc_chunks}


@dataclass
class IndexReport:
    """What one indexing run did (``version``: the collection version written; 0 for an unversioned one).

    Of the ``chunks``, ``written`` points were written: ``embedded`` with vectors computed now (the dense model
    encoded them; or the caller's, :meth:`Indexer.sync` with ``vectors``), ``reused_from_cache`` with dense
    vectors read from the embedding cache instead (their sparse ones encoded now) and ``reused`` with the vectors
    their points already had (a chunk of a changed document with the same id and text, rewritten to carry the
    document's new fingerprint); the other ``unchanged`` ones were not written. The Dagster ``dense_vectors``
    asset's ``embedded`` and ``reused_from_cache`` count the same way. ``deleted`` points were deleted: those of
    the ``deleted_documents`` (ids of the stored documents absent from the source of a pruning write, sorted) and
    the surplus chunks of documents that shrank. ``seconds``: the whole write: chunking (:meth:`Indexer.index`),
    embedding, writing and publishing, plus reading the source when the caller read it and says so in
    ``read_seconds`` (the ``index`` command does)."""

    collection: str
    version: int | None = None
    rebuilt: bool = False
    documents: int = 0
    chunks: int = 0
    written: int = 0
    embedded: int = 0
    reused_from_cache: int = 0
    reused: int = 0
    unchanged: int = 0
    deleted: int = 0
    deleted_documents: list[str] = field(default_factory=list)  # ids of the documents deleted whole, sorted
    kept: int = 0  # documents absent from the source (skipped as bad input) whose stored chunks were kept
    points: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0
    skipped: list[InputProblem] = field(default_factory=list)
    changed: bool = True  # False: nothing to write or delete, so no new version was staged or published
    reused_staged: bool = False  # a staged-only write found its own complete staged version (sealed) and reused it
    published_before: int | None = None  # the version readers had when the write lock was taken (before this write)

    __repr__ = compact_repr  # thousands of deleted or skipped documents: the first few and a count

    @property
    def chunks_per_second(self) -> float:
        """Chunks written with new vectors (encoded or from the cache) per second of the write."""
        return (self.embedded + self.reused_from_cache) / self.seconds if self.seconds else 0.0


@dataclass
class DeleteReport:
    """What :meth:`Indexer.delete_documents` did (``version``: the version that holds the result)."""

    collection: str
    version: int | None = None
    documents: int = 0  # of the ids asked for, the stored ones
    deleted: int = 0  # points deleted
    points: int = 0  # points left
    missing: list[str] = field(default_factory=list)  # ids asked for that the collection does not hold
    # ids asked for, not stored as they are but in another Unicode normalization: asked id -> stored id (deleted)
    stored_as: dict[str, str] = field(default_factory=dict)

    __repr__ = compact_repr


def named(ids: Sequence[str], limit: int = MAX_NAMED) -> str:
    """``ids`` quoted, at most ``limit`` of them, then how many more (a log line's list)."""
    shown = ", ".join(map(repr, ids[:limit]))
    return shown + (f" and {len(ids) - limit:,} more" if len(ids) > limit else "")


def unknown_text_warning(chunks: Sequence[Chunk], model: str) -> str | None:
    """One line when some ``chunks`` are mostly ``[UNK]`` to the dense model's tokenizer (text in a script it does
    not know, e.g. Thai for the English-only default): such chunks get near-identical dense vectors."""
    unknown = [c for c in chunks if c.unknown]
    if not unknown:
        return None
    return (
        f"{len(unknown):,} of {counted(len(chunks), 'chunk')} (e.g. of document {unknown[0].doc_id!r}) "
        f"{'is' if len(unknown) == 1 else 'are'} mostly unknown "
        f"([UNK]) to the tokenizer of dense model {model!r}, so their dense vectors are near-identical and only "
        f"BM25 tells them apart; the default model is English-only: for other languages set "
        f"HYBRID_RAG_DENSE_MODEL={MULTILINGUAL_MODEL} (a multilingual sentence-transformers model)"
    )


class StoredUnderOtherIdsError(InvalidArgumentError):
    """Files of a text folder are already stored under other ids (their paths below a folder above it)."""


class Indexer:
    """Adds documents to a collection, or keeps it equal to its source (``prune``).

    Point ids derive from (document id, chunk index) and each point stores its content hash, so a second
    run over the same input embeds and writes nothing; a changed document gets its chunks replaced and its
    surplus chunks deleted. Deletions happen only after every upsert succeeded, and a sync that would delete
    more than half of the collection's documents or of its points (or any, from an empty source) is refused
    unless ``allow_delete``.
    """

    settings = HeldSettings()

    def __init__(self, parts: Parts):
        """An indexer over ``parts``; :meth:`retrieval.RetrievalStack.indexer` builds one (sharing its parts)."""
        self.settings, self.store, self.cache = parts.settings, parts.store, parts.cache
        self.dense, self.sparse = parts.dense, parts.sparse
        self._sparse = parts.sparse  # the settings' encoder; self.sparse: the one this write uses
        self.after_batch: Callable[[int], None] | None = None  # hook for progress or fault injection
        self._encoded: Callable[[int], None] | None = None  # told each encoder batch's size while a write encodes
        self._recorded_budget: int | None = None  # a write's chunk budget read from the collection (models unloaded)

    def __repr__(self) -> str:
        return describe("Indexer", self.store)

    @cached_property
    def chunker(self) -> Chunker:
        max_tokens = min(self.settings.chunk_tokens, self.dense.max_tokens)
        prompt = self.dense.document_prompt
        reserved = len(self.dense.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0
        overlap, whitespace = self.settings.chunk_overlap, self.settings.chunk_at_whitespace
        return Chunker(self.dense.tokenizer, max_tokens, overlap, reserved_tokens=reserved, at_whitespace=whitespace)

    def schema(self) -> CollectionSchema:
        """What this indexer's vectors are made with: models, document prompt, BM25 parameters, chunk sizes (loads
        the dense model)."""
        return replace(CollectionSchema.of(self.dense, self.sparse, self.settings), chunk_budget=self.chunker.budget)

    def chunk(self, documents: Iterable[Document], progress: bool = False) -> list[Chunk]:
        """Validate ``documents`` (:func:`~retrieval.documents.validate_documents`: the one check of every entry
        point, Python, CLI and the Dagster ``chunks`` asset), then cut them into chunks (under the dense
        encoder's lock, so concurrent searches stay correct), each carrying its document's fingerprint."""
        not_one_string(documents, "chunk", "Documents")
        return self._chunk(validate_documents(documents), progress)

    def _chunk(self, docs: Sequence[Document], progress: bool) -> list[Chunk]:
        chunks: list[Chunk] = []
        for doc in progress_bar(docs, progress=progress and bool(docs), desc="chunking", unit="doc"):
            with self.dense.lock:
                pieces = self.chunker.chunk(doc)
            fingerprint = self.fingerprint(doc)
            chunks.extend(DocumentChunk(**vars(c), doc_hash=fingerprint, doc_chunks=len(pieces)) for c in pieces)
        return chunks

    def fingerprint(self, doc: Document) -> str:
        """What determines a (validated) document's chunks besides the collection's schema: its id, title, text and
        metadata, and the chunk budget and overlap (also recorded by the schema, except by earlier releases'), and
        ``CHUNK_AT_WHITESPACE`` when on (off, fingerprints stay those of earlier releases)."""
        loaded = "chunker" in self.__dict__ or self._recorded_budget is None
        budget = self.chunker.budget if loaded else self._recorded_budget  # the same, as the schema matched
        raw = [doc.id, doc.title, doc.text, doc.metadata, budget, window_overlap(self.settings.chunk_overlap, budget)]
        raw += ["at_whitespace"] if self.settings.chunk_at_whitespace else []
        return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()

    def _split(
        self, docs: Sequence[Document], stored: dict[str, StoredChunk], progress: bool
    ) -> tuple[list[Chunk], dict[str, int]]:
        """The chunks of the documents ``stored`` does not hold as they are, and (doc_id -> stored points) those it
        does: every stored point of theirs carries their fingerprint and their number of points. Those are not
        chunked (points written by bare :meth:`sync` or an earlier release carry no fingerprint: compared by chunk)."""
        held: dict[str, list[StoredChunk]] = {}
        for s in stored.values():
            held.setdefault(s.doc_id, []).append(s)
        fresh: dict[str, int] = {}
        todo: list[Document] = []
        for doc in docs:
            points = held.get(doc.id, ())
            fingerprint = self.fingerprint(doc) if points else None
            if points and all(p.doc_hash == fingerprint and p.doc_chunks == len(points) for p in points):
                fresh[doc.id] = len(points)
            else:
                todo.append(doc)
        return self._chunk(todo, progress), fresh

    def index(
        self,
        documents: Iterable[Document],
        *,
        prune: bool = False,
        allow_delete: bool = False,
        skipped: Sequence[InputProblem] = (),
        progress: bool = True,
        rebuild: bool = False,
    ) -> IndexReport:
        """Add (or update) ``documents``; with ``prune`` the collection is made to hold exactly these documents.

        Documents are validated first (see :meth:`chunk`). ``skipped``: the
        records a reader skipped as bad input; a pruning run keeps what is stored for them. With ``rebuild``
        the documents go into a new version of the collection that readers switch to atomically (see
        :meth:`rebuild`). ``allow_delete``: see :meth:`sync`.
        """
        not_one_string(documents, "index", "Documents")
        started = time.perf_counter()
        docs = validate_documents(documents)  # a list, or a clear error (one Document, not a list)
        if stored := self.stored_forms([d.id for d in docs]):  # the same document, not a second one
            docs = [replace(d, id=stored.get(d.id, d.id)) for d in docs]
        return self._sync(  # timed from here: the documents consumed and validated too
            docs, None, None, prune, allow_delete, skipped, progress, len(docs), rebuild, publish=True, started=started
        )

    def stored_forms(self, ids: Sequence[str]) -> dict[str, str]:
        """id -> stored id, for each of ``ids`` not stored as it is but in another Unicode normalization (NFC or
        NFD: "café" composed or decomposed), which a reader sees as the same id: a file name macOS gave decomposed
        to an earlier release (folder ids are NFC now). Looks up only the points of those ids' other forms."""
        forms = {i: unicode_forms(i) - {i} for i in ids if not i.isascii()}
        forms = {i: other for i, other in forms.items() if other}
        if not forms or self.store.current_version() is None:
            return {}
        stored = self.store.stored_chunks(set(forms).union(*forms.values())).values()
        found = {s.doc_id for s in stored}
        return {i: min(other & found) for i, other in forms.items() if i not in found and other & found}

    def refuse_copies(self, path: Path, documents: Sequence[Document], fmt: SourceFormat | str | None = None) -> None:
        """Raise :class:`StoredUnderOtherIdsError` when documents read from text folder (or text file) ``path``
        may be stored under longer ids, those they have when a folder above ``path`` is indexed (a text file's id
        is its path below the folder given): adding them would store a second copy of each file, the old text
        still found, or overwrite another stored document that has the same short id (``guide/index.md`` indexed
        alone as ``index.md`` replaces the top-level ``index.md``). A longer id the source itself holds is no
        clash. Whether the stored document is a copy of the file or another tree's file with the same path cannot
        be told: a collection holds one folder tree's files. Call it before adding (not syncing) documents."""
        if (fmt or detect_format(Path(path))) != SourceFormat.DIR or self.store.current_version() is None:
            return
        ids = [d.id for d in documents]
        own = set(ids)  # stored under an id the source holds too: that document is updated, no other one
        above = {i: [(f, x) for f, x in ids_from_folders_above(Path(path), i) if x not in own] for i in ids}
        longer = {x for pairs in above.values() for _, x in pairs}
        longer |= {unicodedata.normalize("NFD", x) for x in longer if not x.isascii()}  # stored by an earlier release
        found = {unicodedata.normalize("NFC", s.doc_id) for s in self.store.stored_chunks(longer).values()}
        nfc = unicodedata.normalize
        clashes = {i: hits[0] for i in ids if (hits := [(f, x) for f, x in above[i] if nfc("NFC", x) in found])}
        if not clashes:
            return
        doc_id, (folder, other) = next(iter(clashes.items()))
        name = self.store.collection
        raise StoredUnderOtherIdsError(
            f"{path}: {len(clashes):,} of {counted(len(ids), 'document')} may already be stored in {name!r} under "
            "other ids "
            f"({doc_id!r} would be {other!r} if {folder} were indexed, and {other!r} is stored: a text file's id is "
            f"its path below the folder indexed). If the stored documents are copies of these files, index {folder} "
            "to update them; if they are another folder tree's files with the same paths, index these into another "
            f"collection: a collection holds one folder tree's files (or --sync to make {name!r} hold only these)"
        )

    def rebuild(
        self,
        documents: Iterable[Document],
        *,
        allow_delete: bool = False,
        skipped: Sequence[InputProblem] = (),
        progress: bool = True,
    ) -> IndexReport:
        """Build a new version of the collection holding exactly ``documents``, then switch readers to it.

        Searches keep being answered from the current version while the new one is written; the switch is
        atomic (an alias on a server, a pointer file for the embedded engine) and the old version is deleted
        afterwards. The new version gets the current models' schema, so this is also how a collection moves
        to another dense or sparse model. A failed rebuild leaves readers untouched; the next one resumes it.
        """
        not_one_string(documents, "rebuild", "Documents")
        return self.index(documents, allow_delete=allow_delete, skipped=skipped, progress=progress, rebuild=True)

    def sync(
        self,
        chunks: Sequence[Chunk],
        *,
        vectors: tuple[np.ndarray, Sequence[SparseVec]] | None = None,
        prune: bool = False,
        allow_delete: bool = False,
        skipped: Sequence[InputProblem] = (),
        progress: bool = True,
        documents: int | None = None,
        rebuild: bool = False,
        publish: bool = True,
    ) -> IndexReport:
        """Write new and changed ``chunks``; with ``prune``, also delete the documents absent from them.

        ``vectors`` (dense matrix and sparse list, aligned with ``chunks``) skips encoding, for callers that
        embedded the chunks themselves (the Dagster assets); otherwise only the changed chunks are encoded.
        ``rebuild`` writes a new version of the collection and publishes it when complete (implies ``prune``).
        A pruning run keeps the stored chunks of the documents in ``skipped`` (bad input), and raises
        :class:`UnsafeDeleteError`, before writing anything, when it would delete more than half of the
        collection's documents, or more than half of its points (the absent documents' and the surplus chunks of
        documents that shrank), or any from an empty source, unless ``allow_delete``.
        Where readers in other processes may hold the published version (the embedded engine), the writes go
        into a staged copy of it that is published at the end. On a server a first build is staged the same way
        (a failed one publishes nothing and the next run resumes it), while an incremental write goes into the
        live collection batch by batch (each upsert atomic, point ids idempotent: re-running finishes it).
        ``publish=False`` stages on every backend and stops there: the caller publishes ``report.version``
        (``store.publish(store.pinned(version))``) once it is vetted. Run again before it was published (same
        chunks, mode, models and settings, same published version), it reuses that complete staged version instead
        of writing a new one (``report.reused_staged``; only what differs in it is written, normally nothing).
        A sync (not a rebuild) that finds nothing to write or delete in the published version stages nothing:
        ``report.changed`` is False and ``report.version`` the published one.
        """
        not_one_string(chunks, "sync", "Chunks")
        return self._sync(None, chunks, vectors, prune, allow_delete, skipped, progress, documents, rebuild, publish)

    def _sync(
        self,
        docs: Sequence[Document] | None,
        chunks: Sequence[Chunk] | None,
        vectors: tuple[np.ndarray, Sequence[SparseVec]] | None,
        prune: bool,
        allow_delete: bool,
        skipped: Sequence[InputProblem],
        progress: bool,
        documents: int | None,
        rebuild: bool,
        publish: bool,
        started: float | None = None,
    ) -> IndexReport:
        """:meth:`sync` of ``chunks``, or of validated ``docs``: those chunked only when the store does not hold
        them as they are (see :meth:`_split`); ``report.seconds`` counts from ``started`` (default: now), less the time
        spent loading the models (the CLI counts that as starting). Documents written into a collection that records
        this indexer's models, settings and chunk budget (:meth:`_budget_recorded`) are compared before the models
        load: a write that finds them all stored as they are loads none."""
        started = time.perf_counter() if started is None else started
        if not (chunks if docs is None else docs) and self.store.version is None:
            self._refuse_empty_new(skipped, allow_delete)
        if vectors is None and self.cache is not None:  # an unusable cache fails here, before models load or staging
            self.cache.check_writable()
        self._recorded_budget = None if docs is None or rebuild else self._budget_recorded()
        if self._recorded_budget is None:
            loading = time.perf_counter()
            self._load_models(sparse=vectors is None)
            started += time.perf_counter() - loading  # loading the models (a first write's 20-40 s) is starting
        report = IndexReport(
            collection=self.store.collection,
            documents=len({c.doc_id for c in chunks or ()}) if documents is None else documents,
            rebuilt=rebuild,
            skipped=list(skipped),
        )
        with self.store.write_lock():
            return self._sync_locked(
                docs, chunks, report, vectors, prune, allow_delete, skipped, progress, rebuild, publish, started
            )

    def _refuse_empty_new(self, skipped: Sequence[InputProblem], allow_delete: bool) -> None:
        """Raise :class:`NothingToIndexError` when a write of nothing would create collection (no published version
        yet) that is empty: from a source whose every record is ``skipped`` as bad input always, else unless
        ``allow_delete`` (an empty collection, asked for). Writing nothing into a published one is left to the
        sync (a no-op, or a deletion guarded by :class:`UnsafeDeleteError`)."""
        if self.store.current_version() is not None or (allow_delete and not skipped):
            return
        name = self.store.collection
        if skipped:
            source = Path(os.path.commonpath([p.path for p in skipped]))
            not_created = f"nothing was written: collection {name!r} was not created"
            raise NothingToIndexError(f"{all_skipped(source, skipped)}; {not_created}")
        raise NothingToIndexError(
            f"no documents to index: collection {name!r} does not exist and an empty one is not created unless "
            "asked (allow_delete=True; CLI: hybrid-rag index --sync --allow-delete)"
        )

    def _sync_locked(
        self, docs, chunks, report, vectors, prune, allow_delete, skipped, progress, rebuild, publish, started
    ) -> IndexReport:
        pinned = self.store.version is not None  # an explicit version (e.g. a staged one) is written in place
        self.sparse = self._sparse if rebuild or vectors is not None else self._earlier_analyzer_kept()
        report.published_before = self.store.current_version()
        if rebuild:  # like every write, a rebuild refuses a collection (or alias) hybrid-rag did not make
            self.store.check_schema(missing_ok=True)
        staged = rebuild or (not pinned and (not publish or not self.store.writes_in_place))
        # A first build is staged on every backend: it is published when complete, and a failed one is resumed.
        first = not staged and not pinned and self.store.schema() is None
        staged = staged or first
        fresh: dict[str, int] = {}  # documents stored as they are (not chunked): doc_id -> points
        base: dict[str, StoredChunk] | None = None  # what the store written from holds of the documents written
        indexes = parse_payload_indexes(self.settings.payload_indexes)
        if rebuild or first or (staged and self.store.schema() is None):
            chunks = self._chunk(docs, progress) if chunks is None else chunks
        else:
            # refuses other models and settings; a copy keeps its schema (models unloaded: checked as far as they
            # show without loading, in _budget_recorded)
            schema = self.store.ensure(self.schema()) if self._recorded_budget is None else self.store.schema()
            ids = [d.id for d in docs] if chunks is None else {c.doc_id for c in chunks}
            base = self.store.stored_chunks(None if prune else ids)  # a sync sees every stored document, once
            chunks, fresh = self._split(docs, base, progress) if chunks is None else (chunks, {})
            if self._recorded_budget is not None:  # only a write that changes nothing needs no model
                if not self.store.missing_payload_indexes(indexes) and self._unchanged(
                    chunks, fresh, base, prune, allow_delete, skipped, report
                ):
                    return self._done(report, self.store.current_version(), rebuild, publish, started)
                self._load_models(sparse=True)
                schema = self.store.ensure(self.schema())  # the full check, before anything is written
        if docs is not None and (warning := unknown_text_warning(chunks, self.dense.model_name)):
            log.warning(warning)  # documents chunked here (callers passing chunks warn when they chunk them)
        present = {c.doc_id for c in chunks} | fresh.keys()
        # Only the same write (same chunks, same mode) resumes a failed one's staged version (see stage).
        intent = write_intent(chunks, prune=prune or rebuild, rebuild=rebuild, skipped=skipped, unchanged=fresh)
        copies: list[int] = []  # the stale staged copies of the published version (a write in place)
        if rebuild:
            existing = self._published_hashes(bool(chunks) or allow_delete)
            prunable = self._prunable(existing, chunks, present, True, True, skipped, allow_delete, report)
            target = self.store.stage(self.schema(), intent=intent, reuse_sealed=not publish)
        elif first:  # resumes the unfinished first build of the same input when it has the same models
            target = self.store.stage(self.schema(), intent=intent)
        elif staged:
            if base is None:
                schema = self.schema()
            elif not self.store.missing_payload_indexes(indexes) and self._unchanged(
                chunks, fresh, base, prune, allow_delete, skipped, report
            ):  # no copy, no version (a PAYLOAD_INDEXES index to add makes one)
                return self._done(report, self.store.current_version(), rebuild, publish, started)
            target = self.store.stage(schema, copy_current=True, intent=intent, reuse_sealed=not publish)
        else:  # an incremental write on a server: into the live collection, batch by batch
            if not pinned:  # a staged copy made before this write must not be resumed or published
                copies = self.store.mark_copies_stale()
            target = self.store
        try:
            target.index_payload(indexes)  # before the points: indexed as they arrive
            report.chunks = len(chunks) + sum(fresh.values())
            if target.resumed:  # a failed write's version, partly written: read itself
                stored = target.stored_chunks(None if prune or rebuild else {c.doc_id for c in chunks})
            else:  # a fresh copy holds what was read before staging (base); a new version holds nothing
                stored = base or {}
            if not rebuild:
                prunable = self._prunable(stored, chunks, present, prune, False, skipped, allow_delete, report)
            todo = _todo(chunks, stored)
            report.unchanged = report.chunks - len(todo)
            if todo:  # a collection this release writes into is refused by releases that would write other terms
                target.upgrade_schema_record(self.chunker.budget)
            replaced = [chunks[i].id for i in todo if _text_changed(chunks[i], stored)]
            overwritten = target.points(replaced) if replaced else {}  # read once: erasure and vector reuse
            erased = self._embedded_hashes(overwritten, keep=chunks)  # an edit's old text leaves the disk too
            if replaced:
                target.will_overwrite_text()
            self._write(
                target, [chunks[i] for i in todo], report, progress, _select(vectors, todo), stored, overwritten
            )
            stale = _stale(chunks, stored, prunable, everything=rebuild)
            erased |= self._embedded_hashes(self._cached_points(target, stale), keep=chunks)
            target.delete_ids(stale)
            if target is self.store and (stale or replaced):
                self.store.erase_from_copies(copies, ids=[*stale, *replaced])
            report.deleted = len(stale)
            report.deleted_documents = sorted(prunable)  # absent from the source: all their points are stale
            if rebuild:  # the points of the published version that the new one no longer holds
                dropped = sorted(existing.keys() - {c.id for c in chunks})
                erased |= self._embedded_hashes(self._cached_points(self.store, dropped), keep=chunks)
                report.deleted = len(dropped)
            target.flush()
            if not staged and (report.written or report.deleted):  # a write in place (publish records its own)
                target.mark_written()
            report.points = target.count()
            self._forget(erased)
            if staged:
                self.store.seal(target)
            if staged and publish:
                self.store.publish(target)
        finally:
            if target is not self.store:
                target.close()
        report.changed = staged or bool(report.written or report.deleted)
        report.reused_staged = target.reused
        return self._done(report, target.version if staged else self.store.current_version(), rebuild, publish, started)

    def _done(
        self, report: IndexReport, version: int | None, rebuild: bool, publish: bool, started: float
    ) -> IndexReport:
        report.version = version
        report.seconds = time.perf_counter() - started
        if report.deleted_documents:
            log.info(
                "%s: deleted %s absent from the source: %s",
                report.collection,
                counted(len(report.deleted_documents), "document"),
                named(report.deleted_documents),
            )
        log.info(
            "indexed %s (version %s%s): %s, %s, %d written (%d embedded, %d reused from the cache, %d "
            "with their stored vectors), %d unchanged, %d deleted in %.1fs (chunking to publishing)",
            report.collection,
            report.version,
            ", rebuilt" if rebuild else ", unchanged" if not report.changed else "" if publish else ", staged",
            counted(report.documents, "document"),
            counted(report.chunks, "chunk"),
            report.written,
            report.embedded,
            report.reused_from_cache,
            report.reused,
            report.unchanged,
            report.deleted,
            report.seconds,
        )
        return report

    def delete_documents(self, doc_ids: Sequence[str]) -> DeleteReport:
        """Delete every chunk of the documents ``doc_ids``, the way :meth:`sync` writes: under the collection's
        write lock, into a staged copy of the published version (where the backend does not write in place),
        sealed and published at the end. Nothing is staged when none of them is stored. One string is refused
        (:class:`~retrieval.errors.InvalidArgumentError`), not read as a list of one-character ids."""
        wanted = list(dict.fromkeys(document_ids(doc_ids, "delete_documents")))
        report = DeleteReport(self.store.collection)
        self.store.check_schema()  # it exists (else no lock file is left behind); deleting needs no models
        with self.store.write_lock():
            schema = self.store.check_schema()
            stored = self.store.stored_hashes(wanted)  # the points of these documents only
            found = {doc_id for doc_id, _ in stored.values()} & set(wanted)
            report.stored_as = self.stored_forms([d for d in wanted if d not in found])
            found |= set(report.stored_as.values())
            missing = [d for d in wanted if d not in found and d not in report.stored_as]
            report.documents, report.missing = len(found), missing
            report.points, report.version = self.store.count(), self.store.current_version()
            before = report.points
            if not found:
                return report
            staged = self.store.version is None and not self.store.writes_in_place
            target = self.store.stage(schema, copy_current=True, resume=False) if staged else self.store
            copies = self.store.mark_copies_stale() if not staged and self.store.version is None else []
            ids = [*stored, *(self.store.stored_hashes(list(report.stored_as.values())) if report.stored_as else ())]
            erased = self._embedded_hashes(self._cached_points(self.store, ids))
            try:
                target.delete_documents(sorted(found))
                self.store.erase_from_copies(copies, doc_ids=sorted(found))
                target.flush()
                if not staged:  # a delete in place (publish records its own)
                    target.mark_written()
                report.points = target.count()
                self._forget(erased)
                if staged:
                    self.store.seal(target)
                    self.store.publish(target)
                    report.version = target.version
            finally:
                if target is not self.store:
                    target.close()
        report.deleted = before - report.points
        log.info(
            "deleted %s of %s from %s (version %s); %s left",
            counted(report.deleted, "point"),
            counted(report.documents, "document"),
            report.collection,
            report.version,
            counted(report.points, "point"),
        )
        return report

    # -- internals ----------------------------------------------------------------------------------
    def _budget_recorded(self) -> int | None:
        """The chunk budget the collection records, when its schema is the one this indexer writes as far as it
        shows without loading the models (all but the dense dimension, which follows the model's content): its
        documents' fingerprints can then be compared before the models load. None: nothing recorded, or other
        models or settings (the models load, and the full check says which), or a collection that does not record
        all of them (an earlier release's, upgraded: the dense dimension is then the one check of the model's content,
        and the full check warns of what is unrecorded)."""
        existing = self.store.schema()
        if existing is None or existing.chunk_budget is None or existing.unrecorded():
            return None
        sparse = self._kept_sparse(existing) or self._sparse
        mine = CollectionSchema.of(self.dense, sparse, self.settings, dense_dim=existing.dense_dim)
        return None if mine.differences(existing, write=True) else existing.chunk_budget

    def _kept_sparse(self, existing: CollectionSchema | None) -> Bm25Encoder | None:
        """The encoder of the earlier release's BM25 analyzer the ``existing`` collection keeps (see
        :meth:`_earlier_analyzer_kept`), or None."""
        if not isinstance(self._sparse, Bm25Encoder) or existing is None:
            return None
        return self._sparse.earlier(existing.bm25_analyzer)

    def _earlier_analyzer_kept(self) -> Bm25Encoder | SpladeEncoder:
        """The sparse encoder of this write: a collection whose BM25 terms an earlier release's analyzer made from
        the same settings keeps that analyzer until it is rebuilt, so its documents and queries make the same terms
        (a collection recording another analyzer than the settings' refuses the write instead, as for k1/b)."""
        earlier = self._kept_sparse(self.store.schema())
        if earlier is None:
            return self._sparse
        log.warning(
            "collection %r holds BM25 terms made by an earlier release's analyzer %r: written with it; rebuild it "
            "(hybrid-rag index --rebuild) for this release's %r (README: BM25 and other scripts)",
            self.store.collection,
            earlier.analyzer,
            self._sparse.analyzer,
        )
        return earlier

    def _load_models(self, sparse: bool) -> None:
        """Load the encoders (``sparse``: the SPLADE model too) before any lock file, collection or version is
        made, so a model that cannot load (:class:`~retrieval.errors.ModelLoadError`) leaves nothing behind."""
        self.schema()  # loads the dense model
        if sparse and isinstance(self.sparse, SpladeEncoder):
            _ = self.sparse.model

    def _write(
        self,
        store: QdrantStore,
        todo: list[Chunk],
        report: IndexReport,
        progress: bool,
        vectors: tuple[np.ndarray, list[SparseVec]] | None,
        stored: dict[str, StoredChunk],
        overwritten: dict[str, StoredHit],
    ) -> None:
        """Encode in blocks while the previous block is being upserted in the background.

        Without ``vectors``, the chunks ``stored`` holds with the same content (rewritten only to carry their
        document's new fingerprint) are written first, with the vectors their points have (:meth:`_rewrite`).
        The others go longest first (in characters), across blocks, so each block holds texts of similar length
        and its encoder batches need little padding.
        """
        bar = progress_bar(total=len(todo), progress=progress, desc=f"embedding {report.collection}", unit="chunk")
        if vectors is None:
            todo = self._rewrite(store, todo, stored, overwritten, report, bar)
        order = length_order([c.embed_text for c in todo])
        todo = [todo[i] for i in order]
        if vectors is not None:
            vectors = np.asarray(vectors[0])[order], [vectors[1][i] for i in order]
        try:
            self._write_blocks(store, todo, report, vectors, bar)
        except (MemoryError, RuntimeError) as exc:  # RuntimeError: only "can't start new thread" is a limit
            if isinstance(exc, RuntimeError) and "can't start new thread" not in str(exc):
                raise
            what = "out of memory" if isinstance(exc, MemoryError) else "cannot start a thread"
            raise ResourceLimitError(
                f"indexing {report.collection!r} stopped: {what} (a memory or thread limit: ulimit -v / -u, a "
                "container's limits); run it again with more memory: a re-run resumes it, nothing stored is lost"
            ) from exc
        bar.close()

    def _write_blocks(
        self,
        store: QdrantStore,
        todo: list[Chunk],
        report: IndexReport,
        vectors: tuple[np.ndarray, list[SparseVec]] | None,
        bar: Any,  # a tqdm bar (progress_bar)
    ) -> None:
        """:meth:`_write`'s blocks: encoded here, upserted by a writer thread."""
        batch = self.settings.upsert_batch_size
        pending: list[Future] = []
        counted = 0  # of the block: its encoder batches move the bar as they finish (a block took minutes on 2 busy
        # cores with the bar at 0% and no rate or ETA)

        def encoded(n: int) -> None:
            nonlocal counted
            counted += n
            bar.update(n)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upsert") as writer:
            for block_no, start in enumerate(range(0, len(todo), ENCODE_BLOCK)):
                block = todo[start : start + ENCODE_BLOCK]
                from_cache = counted = 0
                if vectors is None:
                    self._encoded = encoded
                    try:
                        dense, from_cache = self.encode_dense(block)
                    finally:
                        self._encoded = None
                    sparse = self.encode_sparse(block)
                else:
                    dense = vectors[0][start : start + ENCODE_BLOCK]
                    sparse = vectors[1][start : start + ENCODE_BLOCK]
                for s in range(0, len(block), batch):
                    pending.append(
                        writer.submit(store.upsert, block[s : s + batch], dense[s : s + batch], sparse[s : s + batch])
                    )
                while len(pending) > 2 * (ENCODE_BLOCK // batch + 1):
                    pending.pop(0).result()
                for future in pending:  # surface a failed upsert before doing more work
                    if future.done():
                        future.result()
                report.embedded += len(block) - from_cache
                report.reused_from_cache += from_cache
                report.written += len(block)
                bar.update(len(block) - counted)
                if self.after_batch:
                    for future in pending:
                        future.result()
                    self.after_batch(block_no)
            for future in pending:
                future.result()

    def _rewrite(
        self,
        store: QdrantStore,
        todo: list[Chunk],
        stored: dict[str, StoredChunk],
        overwritten: dict[str, StoredHit],
        report: IndexReport,
        bar: Any,
    ) -> list[Chunk]:
        """Write the chunks of ``todo`` whose points ``store`` holds with the same embedded text (title and text:
        the same content, rewritten only to carry their document's new fingerprint, or new metadata) with the
        vectors their points have, so they are not encoded again (the write's models and encoding settings are the
        collection's: :meth:`QdrantStore.ensure`; ``overwritten``: the stored points of the chunks with new
        content); returns the rest (and any whose point was not found)."""
        held = [c for c in todo if c.id in stored]
        done: set[str] = set()
        batch = self.settings.upsert_batch_size
        for start in range(0, len(held), batch):
            part = held[start : start + batch]
            part = [  # a metadata edit leaves the embedded text, so the vectors, as they are
                c
                for c in part
                if stored[c.id].content_hash == c.content_hash
                or (c.id in overwritten and _embeds_as_stored(overwritten[c.id].payload, c))
            ]
            found = store.stored_vectors([c.id for c in part])
            part = [c for c in part if c.id in found]
            if part:
                dense = np.stack([found[c.id][0] for c in part])
                store.upsert(part, dense, [found[c.id][1] for c in part])
            done.update(c.id for c in part)
            report.reused += len(part)
            report.written += len(part)
            bar.update(len(part))
        return [c for c in todo if c.id not in done]

    def encode_dense(self, chunks: Sequence[Chunk]) -> tuple[np.ndarray, int]:
        """Dense vectors for ``chunks`` (through the embedding cache) and how many came from the cache."""
        texts = [c.embed_text for c in chunks]
        if self.cache is None:
            return self._encode_dense_locked(texts), 0
        return self.cache.encode_through(
            self.dense.cache_key,
            texts,
            self._encode_dense_locked,
            label=self.dense.model_name,
            details=getattr(self.dense, "cache_details", None),
        )

    def encode_sparse(self, chunks: Sequence[Chunk]) -> list[SparseVec]:
        """Sparse vectors (BM25 or SPLADE) for ``chunks``, in batches of ``dense_batch_size``."""
        texts = [c.embed_text for c in chunks]
        parts = locked_batches(self.sparse, self.sparse.encode_documents, texts, self.settings.dense_batch_size)
        return [v for part in parts for v in part]

    def _encode_dense_locked(self, texts: list[str]) -> np.ndarray:
        """Encoder batches of texts with (nearly) equal token counts, most first; rows in input order.

        Sorting by tokens rather than characters (as one ``encode`` call does) pads about 1% instead of 14%
        on SciFact chunks, so the pipeline computes less than a bare ``encode`` of the same texts.
        """
        if not texts:
            return self.dense.encode_documents([])
        with self.dense.lock:
            tokens = self.dense.tokenizer(texts, truncation=True, max_length=self.dense.max_tokens)["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(tokens[i]))
        step = self.dense.batch_size
        parts = locked_batches(self.dense, self.dense.encode_documents, [texts[i] for i in order], step, self._encoded)
        sorted_vectors = np.concatenate(parts)
        out = np.empty_like(sorted_vectors)
        out[order] = sorted_vectors
        return out

    def _published_hashes(self, proceed_unread: bool) -> dict[str, StoredChunk]:
        """What readers see now, for a rebuild's deletion check. A rebuild does not need the current version:
        when another process holds it, the check is skipped with a warning (``proceed_unread``), except for an
        empty source, which is refused."""
        if self.store.current_version() is None:
            return {}
        try:
            return self.store.stored_chunks()
        except StoreError as exc:
            if not proceed_unread:
                raise UnsafeDeleteError(
                    f"refusing to rebuild {self.store.collection!r} from an empty source (its current version "
                    f"cannot be read to compare: {exc}); {ALLOW_DELETE_HINT}"
                ) from exc
            log.warning("rebuild of %r: not checking how much it deletes: %s", self.store.collection, exc)
            return {}

    def _prunable(
        self,
        existing: dict[str, StoredChunk],
        chunks: Sequence[Chunk],
        present: set[str],
        prune: bool,
        rebuild: bool,
        skipped: Sequence[InputProblem],
        allow_delete: bool,
        report: IndexReport,
    ) -> set[str]:
        """The stored documents this run deletes whole (absent from ``present``, the source's document ids);
        refuses unsafe deletions.

        A rebuild cannot keep anything, so it refuses to drop a stored document that was skipped as bad input.
        """
        if not prune:
            return set()
        absent = {s.doc_id for s in existing.values()} - present
        covered = covered_by(skipped)
        skipped_ids = {d for d in absent if covered(d)}  # in a skipped file or folder
        unknown = sum(p.doc_id is None for p in skipped)
        name = self.store.collection
        hint = ALLOW_DELETE_HINT
        if rebuild:
            lost = absent & skipped_ids
            if (lost or (unknown and absent)) and not allow_delete:
                examples = (
                    ", ".join(repr(d) for d in sorted(lost)[:5])
                    or f"{counted(unknown, 'record')} without a readable id"
                )
                raise UnsafeDeleteError(
                    f"rebuilding {name!r} would drop stored documents that were skipped as bad input ({examples}): "
                    f"fix them, or {hint}"
                )
            prunable = absent
        elif unknown and absent:
            log.warning(
                "%s without a readable document id: not deleting the %s of %r absent from the source",
                counted(unknown, "skipped record"),
                counted(len(absent), "document"),
                name,
            )
            prunable = set()
        else:
            prunable = absent - skipped_ids
        report.kept = len(absent - prunable)
        if not allow_delete:
            rechunked = rebuild and bool(existing) and self._rechunked()
            _check_delete_share(existing, chunks, present, prunable, name, report.documents, rechunked)
        return prunable

    def _rechunked(self) -> bool:
        """Whether the published version was chunked otherwise than this indexer chunks (another dense model, document
        prompt or chunk sizes, as far as its schema records them): then its chunk counts say nothing of shrinking."""
        published, new = self.store.schema(), self.schema()
        if published is None:
            return False
        if canonical_model(published.dense_model) != canonical_model(new.dense_model):
            return True
        fields = ("document_prompt", "chunk_tokens", "chunk_overlap")
        return any(getattr(published, f) is not None and getattr(published, f) != getattr(new, f) for f in fields)

    def _cached_points(self, store: QdrantStore, ids: Sequence[str]) -> dict[str, StoredHit]:
        """The stored points ``ids`` (about to be deleted) when there is an embedding cache to forget them in."""
        return store.points(list(ids)) if self.cache is not None and ids else {}

    def _embedded_hashes(self, points: dict[str, StoredHit], keep: Sequence[Chunk] = ()) -> set[str]:
        """The embedding cache's text hashes of the stored ``points`` (about to be deleted or overwritten), less
        those of ``keep`` (the chunks this write stores); empty without a cache."""
        if self.cache is None or not points:
            return set()
        hashes = set()
        for hit in points.values():
            hashes |= embedded_text_hashes(str(hit.payload.get("title") or ""), str(hit.payload.get("text") or ""))
        return hashes - {text_hash(c.embed_text) for c in keep}

    def _forget(self, hashes: set[str]) -> None:
        """Delete the embedding cache's rows of deleted points' texts, once their deletion is written and before it
        is published: a stop right after the publish would otherwise leave them for good (a rerun finds nothing left
        to delete), while a row forgotten for a write that then fails only costs its text an encode later."""
        if self.cache is not None and hashes:
            log.info("embedding cache: forgot %s of deleted chunks", counted(self.cache.forget(hashes), "row"))

    def _unchanged(
        self,
        chunks: Sequence[Chunk],
        fresh: dict[str, int],
        stored: dict[str, StoredChunk],
        prune: bool,
        allow_delete: bool,
        skipped: Sequence[InputProblem],
        report: IndexReport,
    ) -> bool:
        """Whether the published version (``stored``: what it holds of the documents written, or all of it with
        ``prune``) already holds ``chunks`` and the ``fresh`` documents, and nothing to delete (then the report
        says so)."""
        present = {c.doc_id for c in chunks} | fresh.keys()
        prunable = self._prunable(stored, chunks, present, prune, False, skipped, allow_delete, report)
        if _todo(chunks, stored) or _stale(chunks, stored, prunable):
            return False
        report.chunks = report.unchanged = len(chunks) + sum(fresh.values())
        report.points, report.changed = (len(stored) if prune else self.store.count()), False
        return True


def _check_delete_share(
    existing: dict[str, StoredChunk],
    chunks: Sequence[Chunk],
    present: set[str],
    prunable: set[str],
    name: str,
    documents: int,
    rechunked: bool = False,
) -> None:
    """Refuse (:class:`UnsafeDeleteError`) a pruning write that deletes more than half of the stored documents,
    or more than half of the stored points (the ``prunable`` documents' and the surplus chunks of documents that
    shrank; only the former when ``rechunked``: a rebuild with other chunking), or any point from an empty
    source; the message gives both figures and marks the one over half."""
    lost = _stale(chunks, existing, prunable)
    if rechunked:
        lost = [pid for pid in lost if existing[pid].doc_id in prunable]
    if not lost:
        return
    stored_docs = {s.doc_id for s in existing.values()}
    gone = len(prunable & stored_docs)
    figures = [(len(lost), len(existing), "point"), (gone, len(stored_docs), "document")]
    if present and all(part <= MAX_DELETE_SHARE * whole for part, whole, _ in figures):
        return
    shares = " and ".join(
        f"{part:,} of the {counted(whole, what)}" + (" (over half)" if part > MAX_DELETE_SHARE * whole else "")
        for part, whole, what in figures
    )
    surplus = sum(existing[pid].doc_id not in prunable for pid in lost)
    shrunk = len({existing[pid].doc_id for pid in lost} - prunable)
    causes = [f"{counted(gone, 'document')} absent from the source"] if gone else []
    causes += [f"{counted(surplus, 'surplus chunk')} of {counted(shrunk, 'document')} that shrank"] if surplus else []
    causes.append("the source is empty" if not present else f"the source holds {counted(documents, 'document')}")
    raise UnsafeDeleteError(
        f"refusing to delete {shares} of collection {name!r} ({'; '.join(causes)}): {ALLOW_DELETE_HINT}"
    )


def write_intent(
    chunks: Sequence[Chunk],
    *,
    prune: bool,
    rebuild: bool,
    skipped: Sequence[InputProblem] = (),
    unchanged: Iterable[str] = (),
) -> str:
    """A fingerprint of one write: its chunks (ids and content hashes), the documents it found stored as they are
    (``unchanged``, not chunked) and its mode; the same input written the same way (e.g. a run repeated after a
    failure) gives the same fingerprint, any other write another one."""
    digest = hashlib.sha256(f"prune={prune} rebuild={rebuild}\n".encode())
    for line in sorted(f"{c.id} {c.content_hash}" for c in chunks):
        digest.update(line.encode() + b"\n")
    for doc_id in sorted(unchanged):
        digest.update(f"unchanged {doc_id}\n".encode())
    kept = sorted({f"{p.doc_id}{'/' if p.folder else ''}" for p in skipped if p.doc_id is not None})
    digest.update(f"kept={kept} unknown={sum(p.doc_id is None for p in skipped)}".encode())
    return digest.hexdigest()


def _embeds_as_stored(payload: dict[str, Any], chunk: Chunk) -> bool:
    """Whether a stored point's ``payload`` holds ``chunk``'s title and text (what is embedded; metadata is not)."""
    return (payload.get("title") or "") == chunk.title and payload.get("text") == chunk.text


def _text_changed(chunk: Chunk, stored: dict[str, StoredChunk]) -> bool:
    """Whether writing ``chunk`` overwrites a stored point that holds other content (title, text or metadata)."""
    s = stored.get(chunk.id)
    return s is not None and s.content_hash != chunk.content_hash


def _todo(chunks: Sequence[Chunk], stored: dict[str, StoredChunk]) -> list[int]:
    """Positions of the ``chunks`` to write: new and changed ones, and every chunk of a document that has any to
    write or delete, or whose stored points carry another fingerprint (see :class:`DocumentChunk`), so that the
    points of a document written from a document carry one fingerprint (points without one are compared by chunk)."""

    def differs(c: Chunk) -> bool:
        s = stored.get(c.id)
        if s is None or s.content_hash != c.content_hash:
            return True
        mine = (c.doc_hash, c.doc_chunks) if isinstance(c, DocumentChunk) else None
        return mine is not None and s.doc_hash is not None and (s.doc_hash, s.doc_chunks) != mine

    changed = [differs(c) for c in chunks]
    whole = {c.doc_id for c in chunks if isinstance(c, DocumentChunk)}
    if whole:
        ids = {c.id for c in chunks}
        touched = {c.doc_id for c, d in zip(chunks, changed, strict=True) if d}
        touched |= {s.doc_id for pid, s in stored.items() if s.doc_id in whole and pid not in ids}  # surplus
        whole &= touched
    return [i for i, c in enumerate(chunks) if changed[i] or c.doc_id in whole]


def _stale(
    chunks: Sequence[Chunk], stored: dict[str, StoredChunk], prunable: set[str], everything: bool = False
) -> list[str]:
    """The stored points to delete: surplus chunks of the indexed documents, all chunks of ``prunable`` documents
    (or of every document absent from ``chunks`` when ``everything``)."""
    current = {c.id for c in chunks}
    indexed_docs = {c.doc_id for c in chunks}
    return [
        pid
        for pid, s in stored.items()
        if pid not in current and (s.doc_id in indexed_docs or s.doc_id in prunable or everything)
    ]


def _select(
    vectors: tuple[np.ndarray, Sequence[SparseVec]] | None, rows: list[int]
) -> tuple[np.ndarray, list[SparseVec]] | None:
    if vectors is None:
        return None
    dense, sparse = vectors
    return np.asarray(dense)[rows], [sparse[i] for i in rows]
