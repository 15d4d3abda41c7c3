"""Arrow tables for the asset values: documents, chunks, dense vectors (fixed-size lists), sparse vectors.

Tables are turned into Python objects :data:`BATCH_ROWS` rows at a time (a whole table's ``to_pylist`` held its
rows twice over, as dicts and as objects), and sparse vectors only when a point is written (:class:`SparseRows`):
the Dagster run's memory grows with the corpus as the CLI's does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retrieval import Chunk, Document
from retrieval.documents import InputProblem
from retrieval.encoders.sparse import SparseVec
from retrieval.indexer import DocumentChunk

DOCUMENTS = pa.schema(
    [("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string()), ("metadata", pa.string())]
)
CHUNKS = pa.schema(
    [
        ("chunk_id", pa.string()),
        ("doc_id", pa.string()),
        ("chunk_index", pa.int32()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("metadata", pa.string()),
        ("content_hash", pa.string()),
        ("embed_title", pa.string()),  # null: the whole title is embedded
        ("doc_hash", pa.string()),  # the document's fingerprint (Indexer.fingerprint); null in a bare chunk's row
        ("doc_chunks", pa.int32()),  # the document's number of chunks; null in a bare chunk's row
        ("start", pa.int64()),  # where the text lies in the document's text; null: not known
        ("end", pa.int64()),
    ]
)
MODEL_KEY = b"hybrid_rag.model"  # a vector table's model; a chunks table's tokenizer (the dense model's)
ENCODER_KEY = b"hybrid_rag.encoder"  # a vector table's encoder identity: its ``cache_key`` (model and settings)
DETAILS_KEY = b"hybrid_rag.encoder_details"  # what that identity stands for (JSON: backend, prompt...), where known
SKIPPED_KEY = b"hybrid_rag.skipped"  # the records the reader skipped as bad input (JSON), passed on to chunks
BATCH_ROWS = 8_192  # rows turned into Python objects (or encoded) at a time
Source = pa.Table | pq.ParquetFile  # an asset input: loaded whole, or opened lazily (see ParquetIOManager)


def _json(metadata: dict) -> str:
    return json.dumps(metadata, sort_keys=True, default=str)


def documents_to_table(docs: Sequence[Document], skipped: Sequence[InputProblem] = ()) -> pa.Table:
    """The documents; ``skipped`` (records skipped as bad input) goes into the schema metadata."""
    table = pa.Table.from_pydict(
        {
            "doc_id": [d.id for d in docs],
            "title": [d.title for d in docs],
            "text": [d.text for d in docs],
            "metadata": [_json(d.metadata) for d in docs],
        },
        schema=DOCUMENTS,
    )
    return with_skipped(table, skipped)


def with_skipped(table: pa.Table, skipped: Sequence[InputProblem]) -> pa.Table:
    """``table`` carrying ``skipped`` in its schema metadata (Parquet keeps it), so an index sync keeps what is
    stored for the skipped documents (``folder``: a skipped folder or broken link keeps those below its id)."""
    rows = [
        {"path": str(p.path), "line": p.line, "reason": p.reason, "doc_id": p.doc_id, "folder": p.folder}
        for p in skipped
    ]
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SKIPPED_KEY: json.dumps(rows).encode()})


def batches(source: Source, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """``source`` (``columns`` of it) :data:`BATCH_ROWS` rows at a time; a Parquet file is read batch by batch."""
    if isinstance(source, pq.ParquetFile):
        yield from source.iter_batches(BATCH_ROWS, columns=list(columns) if columns else None)
    else:
        yield from (source.select(list(columns)) if columns else source).to_batches(BATCH_ROWS)


def release_read_buffers() -> None:
    """Give the memory Arrow's pool kept from reading (decompression buffers, batches already converted) back to
    the system: it would otherwise stay in the process under what the step allocates next (80 MiB at 10,000
    documents)."""
    pa.default_memory_pool().release_unused()


def schema_of(source: Source) -> pa.Schema:
    return source.schema_arrow if isinstance(source, pq.ParquetFile) else source.schema


def table_skipped(table: Source) -> list[InputProblem]:
    """The skipped records carried by a documents or chunks table (none for a table written without them; a
    record of a table written before ``folder`` was saved is a file's)."""
    raw = (schema_of(table).metadata or {}).get(SKIPPED_KEY)
    rows = json.loads(raw) if raw else []
    return [
        InputProblem(Path(r["path"]), r["line"], r["reason"], r["doc_id"], folder=bool(r.get("folder", False)))
        for r in rows
    ]


def table_to_documents(table: Source) -> list[Document]:
    return [
        Document(id=r["doc_id"], text=r["text"], title=r["title"], metadata=json.loads(r["metadata"]))
        for batch in batches(table)
        for r in batch.to_pylist()
    ]


def chunks_to_table(
    chunks: Sequence[Chunk], skipped: Sequence[InputProblem] = (), tokenizer: str | None = None
) -> pa.Table:
    """The chunks, with their document's fingerprint and chunk count (null for a bare :class:`Chunk`);
    ``skipped``: as in :func:`documents_to_table`; ``tokenizer``: the model whose tokenizer cut them (schema
    metadata, read by :func:`table_model`)."""
    fingerprinted = [c if isinstance(c, DocumentChunk) else None for c in chunks]
    table = pa.Table.from_pydict(
        {
            "chunk_id": [c.id for c in chunks],
            "doc_id": [c.doc_id for c in chunks],
            "chunk_index": [c.chunk_index for c in chunks],
            "title": [c.title for c in chunks],
            "text": [c.text for c in chunks],
            "metadata": [_json(c.metadata) for c in chunks],
            "content_hash": [c.content_hash for c in chunks],
            "embed_title": [c.embed_title for c in chunks],
            "doc_hash": [c.doc_hash if c else None for c in fingerprinted],
            "doc_chunks": [c.doc_chunks if c else None for c in fingerprinted],
            "start": [c.start for c in chunks],
            "end": [c.end for c in chunks],
        },
        schema=CHUNKS,
    )
    if tokenizer:
        table = table.replace_schema_metadata({MODEL_KEY: tokenizer.encode()})
    return with_skipped(table, skipped)


def table_to_chunks(table: Source) -> list[Chunk]:
    return [chunk for batch in batches(table) for chunk in batch_to_chunks(batch)]


def batch_to_chunks(batch: pa.RecordBatch) -> list[Chunk]:
    """The rows as chunks: a :class:`DocumentChunk` where the row has a fingerprint, else a bare :class:`Chunk`
    (a table of an earlier release has no ``doc_hash`` column)."""
    chunks: list[Chunk] = []
    for r in batch.to_pylist():
        fields = (r["doc_id"], r["chunk_index"], r["text"], r["title"], json.loads(r["metadata"]), r.get("embed_title"))
        span = {"start": r.get("start"), "end": r.get("end")}  # none in a table of an earlier release
        if r.get("doc_hash") is None:
            chunks.append(Chunk(*fields, **span))
        else:
            chunks.append(DocumentChunk(*fields, **span, doc_hash=r["doc_hash"], doc_chunks=r["doc_chunks"]))
    return chunks


def unchanged_documents(previous: Source, fingerprints: dict[str, str]) -> set[str]:
    """The documents of ``fingerprints`` (doc_id -> :meth:`~retrieval.Indexer.fingerprint`) that ``previous``, a
    chunks table, holds as they are: every row of theirs carries their fingerprint and their number of rows (none
    for a table of an earlier release, which has no fingerprints or no offsets). Read a few columns a batch at a
    time."""
    if not {"doc_hash", "start"} <= set(schema_of(previous).names):
        return set()
    rows: dict[str, int] = {}
    counts: dict[str, int] = {}
    stale: set[str] = set()
    for batch in batches(previous, ["doc_id", "doc_hash", "doc_chunks", "chunk_index"]):
        for doc_id, doc_hash, count, index in zip(*(column.to_pylist() for column in batch.columns), strict=True):
            rows[doc_id] = rows.get(doc_id, 0) + 1
            expected = counts.setdefault(doc_id, count)
            consistent = count is not None and count == expected and 0 <= index < count
            if not consistent or doc_hash is None or doc_hash != fingerprints.get(doc_id):
                stale.add(doc_id)
    return {doc_id for doc_id, n in rows.items() if doc_id not in stale and n == counts[doc_id]}


def rows_of_documents(source: Source, doc_ids: set[str]) -> pa.Table:
    """The rows of ``doc_ids`` in a chunks table (as :data:`CHUNKS`, without schema metadata), a batch at a time."""
    wanted = pa.array(sorted(doc_ids), type=pa.string())
    parts = [batch.filter(pc.is_in(batch.column("doc_id"), value_set=wanted)) for batch in batches(source)]
    table = pa.Table.from_batches(parts, schema=schema_of(source)) if parts else CHUNKS.empty_table()
    return table.select(CHUNKS.names).cast(CHUNKS)


def in_document_order(table: pa.Table, doc_ids: Sequence[str]) -> pa.Table:
    """A chunks table's rows by the position of their document in ``doc_ids``, then by chunk index (the order
    in which chunking the documents in that order gives them)."""
    rank = pc.index_in(table.column("doc_id"), value_set=pa.array(doc_ids, type=pa.string()))
    keys = pa.table({"rank": rank, "chunk_index": table.column("chunk_index")})
    return table.take(pc.sort_indices(keys, sort_keys=[("rank", "ascending"), ("chunk_index", "ascending")]))


def dense_to_table(
    chunks: pa.Table, vectors: np.ndarray, model: str, encoder: str, details: dict | None = None
) -> pa.Table:
    """``chunk_id``, ``content_hash`` and ``vector`` as ``fixed_size_list<float32>[dim]``; the schema metadata
    records ``model`` and ``encoder``, the encoder's ``cache_key`` (read by :func:`table_encoder`), and ``details``,
    what that key stands for (read by :func:`table_encoder_details`)."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = int(matrix.shape[1])
    vector = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), type=pa.float32()), dim)
    table = pa.table({"chunk_id": chunks["chunk_id"], "content_hash": chunks["content_hash"], "vector": vector})
    metadata = {MODEL_KEY: model.encode(), ENCODER_KEY: encoder.encode()}
    if details is not None:
        metadata[DETAILS_KEY] = _json(details).encode()
    return table.replace_schema_metadata(metadata)


def read_dense(source: Source) -> np.ndarray:
    """The ``vector`` column of a dense vector table as one float32 matrix, filled a batch at a time."""
    dim = schema_of(source).field("vector").type.list_size
    rows = source.metadata.num_rows if isinstance(source, pq.ParquetFile) else source.num_rows
    matrix, row = np.empty((rows, dim), dtype=np.float32), 0
    for batch in batches(source, ["vector"]):
        part = batch.column(0).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        matrix[row : row + len(part)], row = part, row + len(part)
    return matrix


def ids_and_hashes(source: Source) -> pa.Table:
    """The ``chunk_id`` and ``content_hash`` columns (all a vector table needs of the chunks, or checks)."""
    columns = ["chunk_id", "content_hash"]
    return source.read(columns=columns) if isinstance(source, pq.ParquetFile) else source.select(columns)


def sparse_to_table(chunks: pa.Table, parts: Iterable[Sequence[SparseVec]], model: str, encoder: str) -> pa.Table:
    """``chunk_id``, ``content_hash``, ``indices`` (list<uint32>) and ``values`` (list<float32>), from the vectors
    in ``parts`` (consecutive lists; each is turned into Arrow arrays before the next is drawn); ``model`` and
    ``encoder`` as in :func:`dense_to_table`."""
    indices: list[pa.Array] = []
    values: list[pa.Array] = []
    for part in parts:
        indices.append(pa.array([v.indices for v in part], type=pa.list_(pa.uint32())))
        values.append(pa.array([v.values for v in part], type=pa.list_(pa.float32())))
        del part  # freed before the next part is drawn
    table = pa.table(
        {
            "chunk_id": chunks["chunk_id"],
            "content_hash": chunks["content_hash"],
            "indices": pa.chunked_array(indices, type=pa.list_(pa.uint32())),
            "values": pa.chunked_array(values, type=pa.list_(pa.float32())),
        }
    )
    return table.replace_schema_metadata({MODEL_KEY: model.encode(), ENCODER_KEY: encoder.encode()})


def nonzeros(table: pa.Table) -> np.ndarray:
    """The number of terms of each sparse vector of a sparse vector table."""
    return pc.list_value_length(table.column("indices")).to_numpy(zero_copy_only=False)


class SparseRows(Sequence[SparseVec]):
    """The sparse vectors of a sparse vector table, each a :class:`LazySparseVec` (two Arrow offsets): its lists
    are made when a point is written, so the corpus' vectors never exist as Python lists all at once."""

    def __init__(self, source: Source):
        table = source.read(columns=["indices", "values"]) if isinstance(source, pq.ParquetFile) else source
        self.indices = table.column("indices").combine_chunks()
        self.values = table.column("values").combine_chunks()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return LazySparseVec(self, i % len(self))


class LazySparseVec:
    """Row ``row`` of a :class:`SparseRows`, read as a :class:`SparseVec` is (``indices``, ``values``, ``len``)."""

    __slots__ = ("rows", "row")

    def __init__(self, rows: SparseRows, row: int):
        self.rows, self.row = rows, row

    @property
    def indices(self) -> list[int]:
        return self.rows.indices[self.row].as_py()

    @property
    def values(self) -> list[float]:
        return self.rows.values[self.row].as_py()

    def __len__(self) -> int:
        return len(self.rows.indices[self.row].values)


def table_model(table: Source | pa.Schema) -> str | None:
    """The model a vector table (or its schema) was made with (stored in the Parquet schema metadata)."""
    schema = table if isinstance(table, pa.Schema) else schema_of(table)
    raw = (schema.metadata or {}).get(MODEL_KEY)
    return raw.decode() if raw else None


def table_encoder(table: Source) -> str | None:
    """The ``cache_key`` of the encoder a vector table was made with: the model and every setting that changes its
    vectors (None: written by an earlier release, which did not record it)."""
    raw = (schema_of(table).metadata or {}).get(ENCODER_KEY)
    return raw.decode() if raw else None


def table_encoder_details(table: Source) -> dict | None:
    """What a vector table's encoder identity stands for (the dense encoder's ``cache_details``: backend, document
    prompt, token limit, model fingerprint); None where the table does not record it."""
    raw = (schema_of(table).metadata or {}).get(DETAILS_KEY)
    return json.loads(raw) if raw else None


def stale_rows(chunks: pa.Table, vectors: pa.Table) -> int:
    """How many chunks a vector table is out of date for: chunk ids added, removed, or with another content hash
    (0 when it holds the chunks' rows in the same order; the same rows in another order count as differing at
    their positions, since vectors are read by position)."""
    wanted = dict(zip(chunks["chunk_id"].to_pylist(), chunks["content_hash"].to_pylist(), strict=True))
    held = dict(zip(vectors["chunk_id"].to_pylist(), vectors["content_hash"].to_pylist(), strict=True))
    stale = len(wanted.keys() ^ held.keys()) + sum(held[i] != h for i, h in wanted.items() if i in held)
    if stale == 0 and list(wanted) != list(held):
        return sum(a != b for a, b in zip(wanted, held, strict=True))
    return stale


def same_rows(chunks: pq.ParquetFile, vectors: pq.ParquetFile, batch_size: int = 65_536) -> bool:
    """Whether a stored vector table holds the chunks' rows (chunk id and content hash) in the same order: what
    :func:`stale_rows` counts as 0, read a batch of those two columns at a time (memory bounded by the batch)."""
    if chunks.metadata.num_rows != vectors.metadata.num_rows:
        return False

    def rows(table: pq.ParquetFile) -> Iterator[tuple[str, str]]:
        for batch in table.iter_batches(batch_size, columns=["chunk_id", "content_hash"]):
            yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)

    return all(a == b for a, b in zip(rows(chunks), rows(vectors), strict=True))
