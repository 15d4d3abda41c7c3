"""Indexing: documents -> chunks -> dense + sparse vectors -> Qdrant, idempotently."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from retrieval.chunking import Chunk, Chunker
from retrieval.documents import Document, InputProblem
from retrieval.embedding_cache import EmbeddingCache
from retrieval.encoders import DenseEncoder, make_sparse_encoder
from retrieval.encoders.sparse import Bm25Encoder, SparseVec, SpladeEncoder
from retrieval.settings import RetrievalSettings
from retrieval.store import CollectionSchema, QdrantStore, open_store

log = logging.getLogger(__name__)
ENCODE_BLOCK = 1024

_encoder_locks: weakref.WeakKeyDictionary[object, threading.RLock] = weakref.WeakKeyDictionary()
_encoder_locks_guard = threading.Lock()


def encoder_lock(encoder: object) -> threading.RLock:
    """The lock of one encoder object, shared by every indexer and retriever using it.

    A Hugging Face tokenizer switches its truncation settings on each call (chunking tokenizes without
    truncation, encoding with it), so calls on one encoder from several threads must not interleave.
    """
    with _encoder_locks_guard:
        lock = _encoder_locks.get(encoder)
        if lock is None:
            lock = _encoder_locks[encoder] = threading.RLock()
        return lock


def locked_batches(encoder: object, encode: Callable[[list[str]], Any], texts: Sequence[str], step: int) -> list:
    """``encode`` over ``texts`` in batches of ``step``, each under the encoder's lock (so searches interleave)."""
    parts = []
    texts, step = list(texts), max(step, 1)
    for start in range(0, max(len(texts), 1), step):
        with encoder_lock(encoder):
            parts.append(encode(texts[start : start + step]))
    return parts


@dataclass
class IndexReport:
    """What one indexing run did (``version``: the collection version written; 0 for an unversioned one)."""

    collection: str
    version: int | None = None
    rebuilt: bool = False
    documents: int = 0
    chunks: int = 0
    embedded: int = 0
    unchanged: int = 0
    deleted: int = 0
    cache_reused: int = 0
    points: int = 0
    seconds: float = 0.0
    skipped: list[InputProblem] = field(default_factory=list)

    @property
    def chunks_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds else 0.0


def build_encoders(settings: RetrievalSettings) -> tuple[DenseEncoder, Bm25Encoder | SpladeEncoder]:
    dense = DenseEncoder(
        settings.dense_model,
        device=settings.dense_device,
        batch_size=settings.dense_batch_size,
        backend=settings.dense_backend,
        query_prompt=settings.dense_query_prompt,
        document_prompt=settings.dense_document_prompt,
        cache_dir=settings.cache_dir,
    )
    sparse = make_sparse_encoder(
        settings.sparse_model,
        k1=settings.bm25_k1,
        b=settings.bm25_b,
        avg_len=settings.bm25_avg_len,
        device=settings.dense_device,
    )
    return dense, sparse


def collection_schema(dense: DenseEncoder, sparse: Bm25Encoder | SpladeEncoder) -> CollectionSchema:
    return CollectionSchema(
        dense_model=dense.model_name,
        dense_dim=dense.dimension,
        sparse_model=sparse.name,
        sparse_idf=sparse.uses_idf_modifier,
    )


class Indexer:
    """Keeps a collection equal to its source documents.

    Point ids derive from (document id, chunk index) and each point stores its content hash, so a second
    run over the same input embeds and writes nothing; a changed document gets its chunks replaced and its
    surplus chunks deleted. Deletions happen only after every upsert succeeded.
    """

    def __init__(
        self,
        settings: RetrievalSettings | None = None,
        *,
        store: QdrantStore | None = None,
        dense: DenseEncoder | None = None,
        sparse: Bm25Encoder | SpladeEncoder | None = None,
    ):
        self.settings = settings or RetrievalSettings()
        default_dense, default_sparse = (None, None) if dense and sparse else build_encoders(self.settings)
        self.dense = dense or default_dense
        self.sparse = sparse or default_sparse
        self.store = store or open_store(self.settings)
        self.cache = (
            EmbeddingCache(self.settings.cache_dir / "embeddings.sqlite") if self.settings.embedding_cache else None
        )
        self.after_batch: Callable[[int], None] | None = None  # hook for progress or fault injection

    @cached_property
    def chunker(self) -> Chunker:
        max_tokens = min(self.settings.chunk_tokens, self.dense.max_tokens)
        prompt = self.dense.document_prompt
        reserved = len(self.dense.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0
        return Chunker(self.dense.tokenizer, max_tokens, self.settings.chunk_overlap, reserved_tokens=reserved)

    def schema(self) -> CollectionSchema:
        return collection_schema(self.dense, self.sparse)

    def chunk(self, documents: Iterable[Document], progress: bool = False) -> list[Chunk]:
        """Cut ``documents`` into chunks (under the dense encoder's lock, so concurrent searches stay correct)."""
        chunks: list[Chunk] = []
        for doc in tqdm(documents, desc="chunking", unit="doc", disable=not progress):
            with encoder_lock(self.dense):
                chunks.extend(self.chunker.chunk(doc))
        return chunks

    def index(
        self, documents: Iterable[Document], *, prune: bool = False, progress: bool = True, rebuild: bool = False
    ) -> IndexReport:
        """Index ``documents``; with ``prune`` the collection is made to hold exactly these documents.

        With ``rebuild`` they go into a new version of the collection that readers switch to atomically (see
        :meth:`rebuild`).
        """
        docs = list(documents)
        chunks = self.chunk(docs, progress=progress)
        return self.sync(chunks, prune=prune, progress=progress, documents=len(docs), rebuild=rebuild)

    def rebuild(self, documents: Iterable[Document], *, progress: bool = True) -> IndexReport:
        """Build a new version of the collection holding exactly ``documents``, then switch readers to it.

        Searches keep being answered from the current version while the new one is written; the switch is
        atomic (an alias on a server, a pointer file for the embedded engine) and the old version is deleted
        afterwards. The new version gets the current models' schema, so this is also how a collection moves
        to another dense or sparse model. A failed rebuild leaves readers untouched; the next one resumes it.
        """
        return self.index(documents, progress=progress, rebuild=True)

    def sync(
        self,
        chunks: Sequence[Chunk],
        *,
        vectors: tuple[np.ndarray, Sequence[SparseVec]] | None = None,
        prune: bool = False,
        progress: bool = True,
        documents: int | None = None,
        rebuild: bool = False,
        publish: bool = True,
    ) -> IndexReport:
        """Make the collection hold ``chunks``: write new and changed ones, then delete stale ones.

        ``vectors`` (dense matrix and sparse list, aligned with ``chunks``) skips encoding, for callers that
        embedded the chunks themselves (the Dagster assets); otherwise only the changed chunks are encoded.
        ``rebuild`` writes a new version of the collection and publishes it when complete (implies ``prune``).
        Where readers in other processes may hold the published version (the embedded engine), the writes go
        into a staged copy of it that is published at the end. ``publish=False`` stages and stops there: the
        caller publishes ``report.version`` (``store.publish(store.pinned(version))``) once it is vetted.
        """
        started = time.perf_counter()
        report = IndexReport(
            collection=self.store.collection,
            documents=documents or len({c.doc_id for c in chunks}),
            rebuilt=rebuild,
        )
        with self.store.write_lock():
            return self._sync_locked(chunks, report, vectors, prune, progress, rebuild, publish, started)

    def _sync_locked(self, chunks, report, vectors, prune, progress, rebuild, publish, started) -> IndexReport:
        pinned = self.store.version is not None  # an explicit version (e.g. a staged one) is written in place
        staged = rebuild or (not pinned and (not publish or not self.store.writes_in_place))
        if rebuild:
            target = self.store.stage(self.schema())
        elif staged:
            if self.store.schema() is not None:
                self.store.ensure(self.schema())  # refuses other models
            target = self.store.stage(self.schema(), copy_current=True)
        else:
            self.store.ensure(self.schema())
            target = self.store
        try:
            report.chunks = len(chunks)
            stored = target.stored_hashes()
            todo = [i for i, c in enumerate(chunks) if stored.get(c.id, ("", ""))[1] != c.content_hash]
            report.unchanged = len(chunks) - len(todo)
            self._write(target, [chunks[i] for i in todo], report, progress, _select(vectors, todo))
            report.deleted = self._delete_stale(target, chunks, stored, prune or rebuild)
            target.flush()
            report.points = target.count()
            if staged:
                self.store.seal(target)
            if staged and publish:
                self.store.publish(target)
        finally:
            if target is not self.store:
                target.close()
        report.version = target.version if staged else self.store.current_version()
        report.seconds = time.perf_counter() - started
        log.info(
            "indexed %s (version %s%s): %d docs, %d chunks, %d written, %d unchanged, %d deleted in %.1fs",
            report.collection,
            report.version,
            ", rebuilt" if rebuild else "" if publish else ", staged",
            report.documents,
            report.chunks,
            report.embedded,
            report.unchanged,
            report.deleted,
            report.seconds,
        )
        return report

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        self.store.delete_documents(list(doc_ids))

    # -- internals ----------------------------------------------------------------------------------
    def _write(
        self,
        store: QdrantStore,
        todo: list[Chunk],
        report: IndexReport,
        progress: bool,
        vectors: tuple[np.ndarray, list[SparseVec]] | None,
    ) -> None:
        """Encode in blocks while the previous block is being upserted in the background."""
        batch = self.settings.upsert_batch_size
        bar = tqdm(total=len(todo), desc=f"embedding {report.collection}", unit="chunk", disable=not progress)
        pending: list[Future] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="upsert") as writer:
            for block_no, start in enumerate(range(0, len(todo), ENCODE_BLOCK)):
                block = todo[start : start + ENCODE_BLOCK]
                if vectors is None:
                    dense, reused = self.encode_dense(block)
                    sparse = self.encode_sparse(block)
                    report.cache_reused += reused
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
                report.embedded += len(block)
                bar.update(len(block))
                if self.after_batch:
                    for future in pending:
                        future.result()
                    self.after_batch(block_no)
            for future in pending:
                future.result()
        bar.close()

    def encode_dense(self, chunks: Sequence[Chunk]) -> tuple[np.ndarray, int]:
        """Dense vectors for ``chunks`` (through the embedding cache) and how many came from the cache."""
        texts = [c.embed_text for c in chunks]
        if self.cache is None:
            return self._encode_dense_locked(texts), 0
        return self.cache.encode_through(self.dense.cache_key, texts, self._encode_dense_locked)

    def encode_sparse(self, chunks: Sequence[Chunk]) -> list[SparseVec]:
        texts = [c.embed_text for c in chunks]
        parts = locked_batches(self.sparse, self.sparse.encode_documents, texts, self.settings.dense_batch_size)
        return [v for part in parts for v in part]

    def _encode_dense_locked(self, texts: list[str]) -> np.ndarray:
        return np.concatenate(locked_batches(self.dense, self.dense.encode_documents, texts, self.dense.batch_size))

    def _delete_stale(
        self, store: QdrantStore, chunks: Sequence[Chunk], stored: dict[str, tuple[str, str]], prune: bool
    ) -> int:
        current = {c.id for c in chunks}
        indexed_docs = {c.doc_id for c in chunks}
        stale = [pid for pid, (doc_id, _) in stored.items() if pid not in current and (doc_id in indexed_docs or prune)]
        store.delete_ids(stale)
        return len(stale)


def _select(
    vectors: tuple[np.ndarray, Sequence[SparseVec]] | None, rows: list[int]
) -> tuple[np.ndarray, list[SparseVec]] | None:
    if vectors is None:
        return None
    dense, sparse = vectors
    return np.asarray(dense)[rows], [sparse[i] for i in rows]
