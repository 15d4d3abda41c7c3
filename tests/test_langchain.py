"""The LangChain adapter returns real documents, sync and async."""

import asyncio

import pytest
from langchain_core.retrievers import BaseRetriever

from retrieval.adapters import hit_metadata
from retrieval.errors import InvalidArgumentError
from retrieval.langchain import LangChainRetriever
from tests.conftest import LEXICAL_QUERY, SEMANTIC_QUERY


@pytest.fixture(scope="module")
def lc_retriever(indexed_stack):
    stack = indexed_stack("edge", collection="lc")
    yield stack.retriever().as_langchain(k=3)
    stack.close()


def test_is_a_base_retriever_yielding_documents(lc_retriever):
    assert isinstance(lc_retriever, BaseRetriever)
    docs = lc_retriever.invoke(LEXICAL_QUERY[0])
    assert len(docs) == 3
    top = docs[0]
    assert "ZX-4471" in top.page_content
    assert top.metadata["doc_id"] == LEXICAL_QUERY[1]
    assert top.metadata["score"] > 0 and top.metadata["sparse_rank"] == 1
    assert top.metadata["topic"] == "home"
    hit = lc_retriever.retriever.search(LEXICAL_QUERY[0], k=3)[0]
    assert top.metadata == hit_metadata(hit)  # what the LlamaIndex and Haystack adapters attach
    assert top.metadata["dense_score"] == pytest.approx(hit.dense_score) and top.metadata["sparse_score"] > 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: r.as_langchain(search_kwargs={"kk": 1}), r"unknown search arguments \['kk'\]; valid: k, filter"),
        (lambda r: r.as_langchain(top_k=1), r"unknown search arguments \['top_k'\]"),
        (lambda r: LangChainRetriever(retriever=r, search_kwargs=["k"]), "search_kwargs must be a dict, got list"),
    ],
)
def test_bad_search_kwargs_raise_at_construction(lc_retriever, build, message):
    with pytest.raises(InvalidArgumentError, match=message):
        build(lc_retriever.retriever)
    with pytest.raises(InvalidArgumentError, match="unknown search arguments"):
        lc_retriever.invoke(LEXICAL_QUERY[0], kk=1)


def test_async_matches_sync(lc_retriever):
    async def run():
        return await asyncio.gather(*(lc_retriever.ainvoke(q) for q in (LEXICAL_QUERY[0], SEMANTIC_QUERY[0])))

    lexical, semantic = asyncio.run(run())
    assert [d.id for d in lexical] == [d.id for d in lc_retriever.invoke(LEXICAL_QUERY[0])]
    assert semantic[0].metadata["doc_id"] == SEMANTIC_QUERY[1]


def test_ainvoke_leaves_its_search_timings_to_the_awaiting_thread(lc_retriever):
    """``last_timings`` is per thread and the async adapters search in a worker thread: after ``ainvoke`` the
    caller reads that search's timings, not its own previous search's."""
    retriever = lc_retriever.retriever
    retriever.search(LEXICAL_QUERY[0], variant="sparse")
    before = retriever.last_timings
    asyncio.run(lc_retriever.ainvoke(SEMANTIC_QUERY[0]))
    assert retriever.last_timings is not before and retriever.last_timings != before
    assert {"open_s", "encode_s", "qdrant_s"} <= retriever.last_timings.keys()
