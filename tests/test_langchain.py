"""The LangChain adapter returns real documents, sync and async."""

import asyncio

import pytest
from langchain_core.retrievers import BaseRetriever

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


def test_async_matches_sync(lc_retriever):
    async def run():
        return await asyncio.gather(*(lc_retriever.ainvoke(q) for q in (LEXICAL_QUERY[0], SEMANTIC_QUERY[0])))

    lexical, semantic = asyncio.run(run())
    assert [d.id for d in lexical] == [d.id for d in lc_retriever.invoke(LEXICAL_QUERY[0])]
    assert semantic[0].metadata["doc_id"] == SEMANTIC_QUERY[1]
