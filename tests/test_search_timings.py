"""``HybridRetriever.last_timings``: every part of a search timed (the version switch after another writer's
write included), per thread."""

import threading
import time

from retrieval import Document, RetrievalSettings, RetrievalStack
from tests.conftest import TINY_DOCS


def timed_search(retriever, **kwargs) -> tuple[float, dict[str, float]]:
    started = time.perf_counter()
    retriever.search("how can I keep spaghetti from sticking", k=3, **kwargs)
    return time.perf_counter() - started, dict(retriever.last_timings)


def test_timings_sum_to_the_search_including_opening_and_the_switch_after_a_write(
    tmp_path, dense_encoder, sparse_encoder
):
    settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="t")
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as writer:
        writer.indexer().index(TINY_DOCS, progress=False)
        with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as reader:
            retriever = reader.retriever(rerank=True)
            first = timed_search(retriever)  # opens the collection
            timed_search(retriever)
            writer.indexer().index([Document("new", "Fresh basil keeps best in a glass of water.")], progress=False)
            after_write = timed_search(retriever)  # switches to the new version
            assert retriever.store.version is None and "new" in {h.doc_id for h in retriever.search("basil", k=8)}
    for wall, timings in (first, after_write):
        assert sum(timings.values()) >= 0.8 * wall, (wall, timings)  # before: 0.1 of it after a write
        assert set(timings) == {"open_s", "encode_s", "qdrant_s", "rerank_s"}
    assert after_write[1]["open_s"] > 0


def test_first_stage_alone_and_within_a_search_time_the_open_once(indexed_stack):
    retriever = indexed_stack("edge").retriever(rerank=False)
    retriever.first_stage(["pasta"], "sparse", 3)
    assert set(retriever.last_timings) == {"open_s", "encode_s", "qdrant_s"}
    retriever.search("pasta", k=3)  # search_batch -> first_stage: one set of timings, not the inner block's
    assert set(retriever.last_timings) == {"open_s", "encode_s", "qdrant_s"}


def test_threads_sharing_a_retriever_read_their_own_search_timings(indexed_stack):
    retriever = indexed_stack("edge").retriever()
    sparse_done, hybrid_done = threading.Event(), threading.Event()
    seen: dict[str, dict[str, float]] = {}

    def sparse_search() -> None:
        retriever.search("valve gasket", k=3, variant="sparse")
        sparse_done.set()
        hybrid_done.wait(60)  # the other thread searches (reranked) in between
        seen["sparse"] = dict(retriever.last_timings)

    def hybrid_search() -> None:
        sparse_done.wait(60)
        retriever.search("valve gasket", k=3, rerank=True)
        seen["hybrid"] = dict(retriever.last_timings)
        hybrid_done.set()

    threads = [threading.Thread(target=sparse_search), threading.Thread(target=hybrid_search)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert "rerank_s" not in seen["sparse"]  # before: the hybrid search's timings, read by the sparse thread
    assert "rerank_s" in seen["hybrid"]
    assert retriever.last_timings == {}  # this thread searched nothing
