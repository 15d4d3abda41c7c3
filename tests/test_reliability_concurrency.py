"""One retriever shared by many threads and asyncio tasks answers exactly as it does sequentially."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from retrieval import Document, Hit
from tests.conftest import LEXICAL_QUERY, SEMANTIC_QUERY, TINY_DOCS

QUERIES = [
    LEXICAL_QUERY[0],
    SEMANTIC_QUERY[0],
    "inflation and interest rates",
    "roman history",
    "blood pressure and the heart",
    "how do bees tell each other where flowers are",
    "appending to a python list",
    "distance to the moon",
]
WORKERS, PER_WORKER = 8, 50


def signature(hits: list[Hit]) -> list[tuple[str, float]]:
    return [(h.chunk_id, round(h.score, 4)) for h in hits]


@pytest.fixture(scope="module")
def stack(indexed_stack):
    stack = indexed_stack("edge")  # reranking on
    yield stack
    stack.close()


@pytest.fixture(scope="module")
def retriever(stack):
    return stack.retriever()


@pytest.fixture(scope="module")
def sequential(retriever) -> dict[str, list[tuple[str, float]]]:
    return {q: signature(retriever.search(q, k=5)) for q in QUERIES}


def test_threads_match_sequential(retriever, sequential):
    def worker(n: int) -> list[tuple[str, list[tuple[str, float]]]]:
        out = []
        for i in range(PER_WORKER):
            query = QUERIES[(n + i) % len(QUERIES)]
            out.append((query, signature(retriever.search(query, k=5))))
        return out

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = [r for chunk in pool.map(worker, range(WORKERS)) for r in chunk]
    assert len(results) == WORKERS * PER_WORKER
    mismatches = [(q, got) for q, got in results if got != sequential[q]]
    assert not mismatches, mismatches[:3]


def test_asyncio_matches_sequential(retriever, sequential):
    lc = retriever.as_langchain(k=5)
    jobs = [QUERIES[i % len(QUERIES)] for i in range(WORKERS * PER_WORKER // 4)]

    async def run():
        return await asyncio.gather(*(lc.ainvoke(q) for q in jobs))

    results = asyncio.run(run())
    for query, docs in zip(jobs, results, strict=True):
        assert [(d.id, round(d.metadata["score"], 4)) for d in docs] == sequential[query]


def test_searches_and_incremental_writes_interleave(stack, retriever, sequential):
    """Indexing long documents (chunked and embedded on the shared encoders) while searching changes neither."""
    indexer = stack.indexer()
    filler = " ".join(f"Shelf {i} of the warehouse holds crates of assorted spare parts." for i in range(60))
    extra = [Document(f"noise{i}", f"Record {i}. {filler}") for i in range(12)]
    expected_chunks = {d.id: len(indexer.chunker.chunk(d)) for d in extra}
    assert min(expected_chunks.values()) > 1
    with ThreadPoolExecutor(max_workers=4) as pool:
        writes = pool.submit(lambda: [indexer.index(extra[i : i + 3], progress=False) for i in range(0, 12, 3)])
        hits = list(pool.map(lambda q: retriever.search(q, k=1), QUERIES * 8))
        writes.result()
    for query, top in zip(QUERIES * 8, hits, strict=True):
        assert top and top[0].chunk_id == sequential[query][0][0]
    stored = Counter(doc_id for doc_id, _ in retriever.store.stored_hashes().values())
    assert {d.id: stored[d.id] for d in extra} == expected_chunks
    indexer.delete_documents([d.id for d in extra])
    assert retriever.store.count() == len(TINY_DOCS)


def test_chunking_and_long_queries_on_shared_encoders(stack, retriever):
    """Chunking tokenizes without truncation and query encoding with it: unlocked, a long query reaches the
    model untruncated (a crash) or a document is cut short (silently)."""
    indexer = stack.indexer()
    assert indexer.dense is retriever.query_encoder  # one encoder, one lock
    doc = Document("long", " ".join(f"word{i} about stuff." for i in range(400)))
    expected = [c.text for c in indexer.chunk([doc])]
    query = " ".join(["long query text"] * 200)

    def job(i: int) -> bool:
        if i % 2:
            return [c.text for c in indexer.chunk([doc])] == expected
        return bool(retriever.search(query, k=1, rerank=False))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(job, range(120)))
