"""The asset tables turn into Python objects a batch at a time: the Dagster run's memory grows with the corpus as
the CLI's does. Python heap peaks (tracemalloc: counted allocations, not timings) of the conversions the assets
make, against what they hold afterwards."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from assets.tables import (
    SparseRows,
    chunks_to_table,
    documents_to_table,
    sparse_to_table,
    table_to_chunks,
    table_to_documents,
)
from retrieval import Chunk, Document
from retrieval.encoders.sparse import SparseVec


def heap(work: Callable[[], Any]) -> tuple[Any, int, int]:
    """``work()``'s result, the Python heap it holds afterwards and the heap's peak meanwhile (bytes)."""
    tracemalloc.start()
    try:
        result = work()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, held, peak


def sparse_vectors(count: int, terms: int = 200, seed: int = 0) -> list[SparseVec]:
    rng = np.random.default_rng(seed)
    return [
        SparseVec(sorted(rng.choice(1_000_000, terms, replace=False).tolist()), rng.random(terms).tolist())
        for _ in range(count)
    ]


def test_chunks_and_documents_are_made_a_batch_of_rows_at_a_time(monkeypatch) -> None:
    """Turning a 10,000-row table into objects, 2,000 rows at a time, peaks under 25% above the objects
    themselves (a whole-table ``to_pylist`` held every row as a dict beside them: 78% above), and gives the
    same objects."""
    monkeypatch.setattr("assets.tables.BATCH_ROWS", 2000, raising=False)
    chunks = [Chunk(f"d{i}", i % 3, "word " * 40 + str(i), f"title {i}", {"n": i}) for i in range(10_000)]
    table = chunks_to_table(chunks)
    made, held, peak = heap(lambda: table_to_chunks(table))
    assert made == chunks
    assert peak - held < 0.25 * held, f"peak {peak / 1e6:.1f} MB for {held / 1e6:.1f} MB of chunks"

    docs = [Document(c.id, c.text, title=c.title, metadata=c.metadata) for c in chunks]
    del chunks, made
    table = documents_to_table(docs)
    made, held, peak = heap(lambda: table_to_documents(table))
    assert made == docs
    assert peak - held < 0.25 * held, f"peak {peak / 1e6:.1f} MB for {held / 1e6:.1f} MB of documents"


def test_the_index_step_holds_no_python_lists_of_the_sparse_vectors() -> None:
    """``qdrant_index`` hands the indexer :class:`SparseRows`: taking every row (as the indexer orders the points
    to write) costs under 1 MB for 3,000 vectors of 200 terms (as Python lists: 44 MB); each row reads back
    the stored terms and weights, as a store's upsert reads them."""
    vectors = sparse_vectors(3000)
    chunks = chunks_to_table([Chunk(f"d{i}", 0, f"text {i}") for i in range(3000)])
    table = sparse_to_table(chunks, [vectors[:1000], vectors[1000:]], "bm25", "key")

    def take_all() -> list:
        rows = SparseRows(table)
        return [rows[i] for i in reversed(range(3000))]

    rows, _, peak = heap(take_all)
    assert peak < 1_000_000, f"peak {peak / 1e6:.1f} MB"
    rows.reverse()
    assert [len(r) for r in rows] == [len(v) for v in vectors]
    for i in (0, 999, 1000, 2999):
        assert rows[i].indices == vectors[i].indices
        assert np.allclose(rows[i].values, vectors[i].values, rtol=1e-6)  # stored as float32
    assert SparseRows(table)[-1].indices == vectors[-1].indices


def test_the_sparse_table_is_built_a_part_at_a_time() -> None:
    """``sparse_vectors`` encodes a batch at a time and each batch becomes Arrow arrays before the next is
    encoded: 10 parts of 500 vectors peak at about one part's Python lists, not the 10 parts' (all at once:
    about 36 MB), and the table holds every vector in order."""
    chunks = chunks_to_table([Chunk(f"d{i}", 0, f"text {i}") for i in range(5000)])

    def parts() -> Iterator[list[SparseVec]]:
        for seed in range(10):
            yield sparse_vectors(500, seed=seed)

    table, _, peak = heap(lambda: sparse_to_table(chunks, parts(), "bm25", "key"))
    assert peak < 12_000_000, f"peak {peak / 1e6:.1f} MB"
    assert table.num_rows == 5000 and table.column("chunk_id").to_pylist() == chunks.column("chunk_id").to_pylist()
    expected = [v.indices for seed in range(10) for v in sparse_vectors(500, seed=seed)]
    assert table.column("indices").to_pylist() == expected
