"""Arrow tables for the asset values: documents, chunks, dense vectors (fixed-size lists), sparse vectors."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from retrieval import Chunk, Document
from retrieval.encoders.sparse import SparseVec

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
    ]
)
MODEL_KEY = b"hybrid_rag.model"


def _json(metadata: dict) -> str:
    return json.dumps(metadata, sort_keys=True, default=str)


def documents_to_table(docs: Sequence[Document]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "doc_id": [d.id for d in docs],
            "title": [d.title for d in docs],
            "text": [d.text for d in docs],
            "metadata": [_json(d.metadata) for d in docs],
        },
        schema=DOCUMENTS,
    )


def table_to_documents(table: pa.Table) -> list[Document]:
    return [
        Document(id=r["doc_id"], text=r["text"], title=r["title"], metadata=json.loads(r["metadata"]))
        for r in table.to_pylist()
    ]


def chunks_to_table(chunks: Sequence[Chunk]) -> pa.Table:
    return pa.Table.from_pydict(
        {
            "chunk_id": [c.id for c in chunks],
            "doc_id": [c.doc_id for c in chunks],
            "chunk_index": [c.chunk_index for c in chunks],
            "title": [c.title for c in chunks],
            "text": [c.text for c in chunks],
            "metadata": [_json(c.metadata) for c in chunks],
            "content_hash": [c.content_hash for c in chunks],
        },
        schema=CHUNKS,
    )


def table_to_chunks(table: pa.Table) -> list[Chunk]:
    return [
        Chunk(r["doc_id"], r["chunk_index"], r["text"], r["title"], json.loads(r["metadata"]))
        for r in table.to_pylist()
    ]


def dense_to_table(chunks: pa.Table, vectors: np.ndarray, model: str) -> pa.Table:
    """``chunk_id``, ``content_hash`` and ``vector`` as ``fixed_size_list<float32>[dim]``."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = int(matrix.shape[1])
    vector = pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1), type=pa.float32()), dim)
    table = pa.table({"chunk_id": chunks["chunk_id"], "content_hash": chunks["content_hash"], "vector": vector})
    return table.replace_schema_metadata({MODEL_KEY: model.encode()})


def table_to_dense(table: pa.Table) -> np.ndarray:
    column = table.column("vector")
    dim = column.type.list_size
    if table.num_rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


def sparse_to_table(chunks: pa.Table, vectors: Sequence[SparseVec], model: str) -> pa.Table:
    """``chunk_id``, ``content_hash``, ``indices`` (list<uint32>) and ``values`` (list<float32>)."""
    table = pa.table(
        {
            "chunk_id": chunks["chunk_id"],
            "content_hash": chunks["content_hash"],
            "indices": pa.array([v.indices for v in vectors], type=pa.list_(pa.uint32())),
            "values": pa.array([v.values for v in vectors], type=pa.list_(pa.float32())),
        }
    )
    return table.replace_schema_metadata({MODEL_KEY: model.encode()})


def table_to_sparse(table: pa.Table) -> list[SparseVec]:
    indices = table.column("indices").to_pylist()
    values = table.column("values").to_pylist()
    return [SparseVec(i, v) for i, v in zip(indices, values, strict=True)]


def table_model(table: pa.Table) -> str | None:
    """The model a vector table was made with (stored in the Parquet schema metadata)."""
    raw = (table.schema.metadata or {}).get(MODEL_KEY)
    return raw.decode() if raw else None


def stale_rows(chunks: pa.Table, vectors: pa.Table) -> int:
    """How many rows of a vector table do not belong to the same-position chunk (0 when aligned)."""
    if chunks.num_rows != vectors.num_rows:
        return max(chunks.num_rows, vectors.num_rows)
    same = np.asarray(chunks["content_hash"].to_pylist()) == np.asarray(vectors["content_hash"].to_pylist())
    ids = np.asarray(chunks["chunk_id"].to_pylist()) == np.asarray(vectors["chunk_id"].to_pylist())
    return int((~(same & ids)).sum()) if chunks.num_rows else 0
