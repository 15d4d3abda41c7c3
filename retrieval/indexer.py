"""Indexing: documents -> chunks -> dense + sparse vectors -> Qdrant, idempotently."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

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


@dataclass
class IndexReport:
    """What one indexing run did."""

    collection: str
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

    def index(self, documents: Iterable[Document], *, prune: bool = False, progress: bool = True) -> IndexReport:
        """Index ``documents``; with ``prune`` the collection is made to hold exactly these documents."""
        docs = list(documents)
        chunks = list(self.chunker.chunk_all(tqdm(docs, desc="chunking", unit="doc", disable=not progress)))
        return self.sync(chunks, prune=prune, progress=progress, documents=len(docs))

    def sync(
        self,
        chunks: Sequence[Chunk],
        *,
        vectors: tuple[np.ndarray, Sequence[SparseVec]] | None = None,
        prune: bool = False,
        progress: bool = True,
        documents: int | None = None,
    ) -> IndexReport:
        """Make the collection hold ``chunks``: write new and changed ones, then delete stale ones.

        ``vectors`` (dense matrix and sparse list, aligned with ``chunks``) skips encoding, for callers that
        embedded the chunks themselves (the Dagster assets); otherwise only the changed chunks are encoded.
        """
        started = time.perf_counter()
        report = IndexReport(collection=self.store.collection, documents=documents or len({c.doc_id for c in chunks}))
        self.store.ensure(self.schema())
        report.chunks = len(chunks)
        stored = self.store.stored_hashes()
        todo = [i for i, c in enumerate(chunks) if stored.get(c.id, ("", ""))[1] != c.content_hash]
        report.unchanged = len(chunks) - len(todo)
        self._write([chunks[i] for i in todo], report, progress, _select(vectors, todo))
        report.deleted = self._delete_stale(chunks, stored, prune)
        self.store.flush()
        report.points = self.store.count()
        report.seconds = time.perf_counter() - started
        log.info(
            "indexed %s: %d docs, %d chunks, %d written, %d unchanged, %d deleted in %.1fs",
            report.collection,
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
                    sparse = self.sparse.encode_documents([c.embed_text for c in block])
                    report.cache_reused += reused
                else:
                    dense = vectors[0][start : start + ENCODE_BLOCK]
                    sparse = vectors[1][start : start + ENCODE_BLOCK]
                for s in range(0, len(block), batch):
                    pending.append(
                        writer.submit(
                            self.store.upsert, block[s : s + batch], dense[s : s + batch], sparse[s : s + batch]
                        )
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
        texts = [c.embed_text for c in chunks]
        if self.cache is None:
            return self.dense.encode_documents(texts), 0
        return self.cache.encode_through(self.dense.cache_key, texts, self.dense.encode_documents)

    def _delete_stale(self, chunks: list[Chunk], stored: dict[str, tuple[str, str]], prune: bool) -> int:
        current = {c.id for c in chunks}
        indexed_docs = {c.doc_id for c in chunks}
        stale = [pid for pid, (doc_id, _) in stored.items() if pid not in current and (doc_id in indexed_docs or prune)]
        self.store.delete_ids(stale)
        return len(stale)


def _select(
    vectors: tuple[np.ndarray, Sequence[SparseVec]] | None, rows: list[int]
) -> tuple[np.ndarray, list[SparseVec]] | None:
    if vectors is None:
        return None
    dense, sparse = vectors
    return np.asarray(dense)[rows], [sparse[i] for i in rows]
