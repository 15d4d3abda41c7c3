"""The LlamaIndex adapter in LlamaIndex's own query engine (with its MockLLM), sync and async."""

import asyncio
import copy
import pickle

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.retrievers import BaseRetriever  # noqa: E402

from retrieval.errors import FilterError, InvalidArgumentError  # noqa: E402
from tests.conftest import LEXICAL_QUERY, SEMANTIC_QUERY  # noqa: E402


@pytest.fixture(scope="module")
def retriever(indexed_stack):
    stack = indexed_stack("edge", collection="li")
    yield stack.retriever()
    stack.close()


def test_nodes_carry_ids_ranks_and_scores(retriever):
    li = retriever.as_llamaindex(k=3)
    assert isinstance(li, BaseRetriever)
    nodes = li.retrieve(LEXICAL_QUERY[0])
    assert len(nodes) == 3
    top = nodes[0]
    hit = retriever.search(LEXICAL_QUERY[0], k=3)[0]
    assert top.node.node_id == hit.chunk_id and "ZX-4471" in top.node.get_content()
    assert top.score == pytest.approx(hit.score) and top.score > nodes[1].score
    meta = top.node.metadata
    assert meta["doc_id"] == LEXICAL_QUERY[1] and meta["chunk_id"] == hit.chunk_id
    assert meta["sparse_rank"] == 1 and meta["fused_rank"] == 1 and meta["topic"] == "home"
    assert {"dense_rank", "dense_score", "sparse_score", "rerank_score"} <= set(meta)


def test_filter_is_applied(retriever):
    nodes = retriever.as_llamaindex(k=8, filter={"topic": "science"}).retrieve("natural satellite orbit")
    assert {n.node.metadata["doc_id"] for n in nodes} == {"moon", "bees"}


def test_query_engine_with_mock_llm_sync_and_async(retriever):
    engine = RetrieverQueryEngine.from_args(retriever.as_llamaindex(k=2), llm=MockLLM())
    response = engine.query(SEMANTIC_QUERY[0])
    assert response.source_nodes[0].node.metadata["doc_id"] == SEMANTIC_QUERY[1]
    assert "noodles" in str(response)  # MockLLM echoes its prompt: the retrieved text reached the LLM

    async def both():
        return await asyncio.gather(engine.aquery(LEXICAL_QUERY[0]), engine.aquery(SEMANTIC_QUERY[0]))

    lexical, semantic = asyncio.run(both())
    assert [n.node.node_id for n in lexical.source_nodes] == [
        n.node.node_id for n in engine.query(LEXICAL_QUERY[0]).source_nodes
    ]
    assert "ZX-4471" in str(lexical)
    assert semantic.source_nodes[0].node.metadata["doc_id"] == SEMANTIC_QUERY[1]


def test_copies_share_the_store_and_pickles_reopen_it(retriever):
    """``copy.deepcopy`` and ``pickle`` raised "cannot pickle '_thread.lock' object": a deep copy shares the store
    and models and owns its ``k`` and ``filter``; a pickle reopens the collection (a stack of its own)."""
    li = retriever.as_llamaindex(k=3, filter={"topic": "home"})
    twin = copy.deepcopy(li)
    twin.filter["topic"], twin.k = "science", 8
    assert twin.retriever.store is retriever.store and li.filter == {"topic": "home"} and li.k == 3
    assert repr(li) == f"LlamaIndexRetriever(retriever={retriever!r}, k=3, filter={{'topic': 'home'}})"
    loaded = pickle.loads(pickle.dumps(li))
    try:
        assert (loaded.k, loaded.filter) == (3, {"topic": "home"}) and loaded.retriever.own_stack is not None
        ids = [n.node.node_id for n in li.retrieve(LEXICAL_QUERY[0])]
        assert [n.node.node_id for n in loaded.retrieve(LEXICAL_QUERY[0])] == ids
    finally:
        loaded.retriever.close()


ORBIT = "natural satellite orbit"


def test_diversity_reaches_the_search_and_is_checked_when_built(retriever):
    li = retriever.as_llamaindex(k=3, diversity=1.0, diversity_depth=6)
    expected = [h.chunk_id for h in retriever.search(ORBIT, k=3, diversity=1.0, diversity_depth=6)]
    assert [n.node.node_id for n in li.retrieve(ORBIT)] == expected
    assert [n.node.node_id for n in asyncio.run(li.aretrieve(ORBIT))] == expected
    assert expected != [h.chunk_id for h in retriever.search(ORBIT, k=3)]  # it did reorder
    assert "diversity=1.0, diversity_depth=6" in repr(li)
    with pytest.raises(InvalidArgumentError, match="diversity must be a number from 0"):
        retriever.as_llamaindex(diversity=-1)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"similarity_top_k": 2}, r"unknown arguments \['similarity_top_k'\]; similarity_top_k: give k; valid: k, "),
        ({"filters": {"topic": "home"}}, r"unknown arguments \['filters'\]; filters: give filter"),
        ({"kk": 2}, r"unknown arguments \['kk'\]; valid: k, filter, .* and LlamaIndex's callback_manager, "),
    ],
)
def test_unknown_arguments_name_the_valid_ones(retriever, given, message):
    """LlamaIndex's own names (``index.as_retriever(similarity_top_k=...)``) raised a TypeError naming
    ``BaseRetriever.__init__``; now the valid arguments and which one to give."""
    with pytest.raises(InvalidArgumentError, match=message):
        retriever.as_llamaindex(**given)


def test_llamaindex_metadata_filters_are_read_as_this_librarys(retriever):
    """LlamaIndex's own filter type (``MetadataFilters``, as its vector stores take it) was refused as "a filter must
    be a dict"; AND of ==, in, is_empty and ranges map to the filter dict, the rest raise naming what is valid."""
    from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters
    from llama_index.core.vector_stores import MetadataFilter as F

    science = MetadataFilters(filters=[ExactMatchFilter(key="topic", value="science")])
    nodes = retriever.as_llamaindex(k=8, filter=science).retrieve(ORBIT)
    assert {n.node.metadata["doc_id"] for n in nodes} == {"moon", "bees"}
    years = [F(key="year", value=2016, operator=">="), F(key="year", value=2021, operator="<")]
    nested = MetadataFilters(filters=[F(key="topic", value=["home", "health"], operator="in")])
    li = retriever.as_llamaindex(k=8, filter=MetadataFilters(filters=[*years, nested]))
    assert {n.node.metadata["doc_id"] for n in asyncio.run(li.aretrieve(ORBIT))} == {"valve", "heart"}
    with pytest.raises(FilterError, match=r"on 'topic': operator '!=' is not supported; valid: ==, in, is_empty, >"):
        retriever.as_llamaindex(filter=MetadataFilters(filters=[F(key="topic", value="x", operator="!=")]))
    with pytest.raises(FilterError, match="only AND combines conditions, not 'or'"):
        retriever.as_llamaindex(filter=MetadataFilters(filters=[*years], condition="or"))
