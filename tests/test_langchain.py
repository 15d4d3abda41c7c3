"""The LangChain adapter returns real documents, sync and async."""

import asyncio
import copy
import json
import pickle
import subprocess
import sys
import time

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnablePassthrough

from retrieval.adapters import hit_metadata
from retrieval.errors import ClosedError, InvalidArgumentError
from retrieval.langchain import LangChainRetriever
from tests.conftest import DUPLICATED, LEXICAL_QUERY, MOON_QUERY, SEMANTIC_QUERY


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
    # what the LlamaIndex and Haystack adapters attach, and the source LangChain's chains cite (no source_path: the id)
    assert top.metadata == {**hit_metadata(hit), "source": hit.doc_id}
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


def test_a_deep_copy_shares_the_store_and_models_and_owns_its_search_kwargs(lc_retriever):
    """LangChain's runnables and users copy retrievers (``copy.deepcopy``, ``model_copy(deep=True)``): it raised
    "cannot pickle '_thread.lock' object". A copy opens nothing and loads nothing again; its settings are its own."""
    for other in (copy.deepcopy(lc_retriever), lc_retriever.model_copy(deep=True)):
        original, copied = lc_retriever.retriever, other.retriever
        assert copied is not original and copied.store is original.store and copied.dense is original.dense
        other.search_kwargs["k"] = 1
        assert lc_retriever.search_kwargs == {"k": 3} and len(other.invoke(LEXICAL_QUERY[0])) == 1
        copied.close()  # closing a copy leaves the original, and the stack's store, open
        assert lc_retriever.invoke(LEXICAL_QUERY[0])[0].metadata["doc_id"] == LEXICAL_QUERY[1]


def test_a_pickled_retriever_reopens_its_collection(lc_retriever):
    """A retriever pickles as what reopens it (its collection, where it is and the changed settings): unpickled,
    it searches the same collection on a stack of its own, which closes with the last of it and its copies."""
    loaded = pickle.loads(pickle.dumps(lc_retriever))
    try:
        assert loaded.search_kwargs == {"k": 3} and loaded.retriever.store is not lc_retriever.retriever.store
        assert [d.id for d in loaded.invoke(LEXICAL_QUERY[0])] == [d.id for d in lc_retriever.invoke(LEXICAL_QUERY[0])]
        stack, twin = loaded.retriever.own_stack, copy.deepcopy(loaded)
    finally:
        loaded.retriever.close()
    assert twin.invoke(SEMANTIC_QUERY[0])[0].metadata["doc_id"] == SEMANTIC_QUERY[1]  # its copy still searches
    twin.retriever.close()
    with pytest.raises(ClosedError):
        stack.store()
    assert lc_retriever.invoke(LEXICAL_QUERY[0])  # the fixture's stack is not the one closed


def test_a_retriever_whose_store_its_settings_do_not_locate_refuses_to_pickle(indexed_stack):
    """A store given to the stack (here qdrant-client's in-memory local mode) cannot be reopened from the settings:
    pickling says what to do instead; copying still works."""
    stack = indexed_stack("server", (), collection="lc-memory")
    retriever = stack.retriever().as_langchain()
    with pytest.raises(TypeError, match="its store was not opened from its settings.*pickle the RetrievalSettings"):
        pickle.dumps(retriever)
    with pytest.raises(TypeError, match="cannot pickle a RetrievalStack"):
        pickle.dumps(stack)
    assert copy.deepcopy(retriever).retriever.store is retriever.retriever.store
    stack.close()


UNPICKLE = """
import json, pickle, sys
retriever = pickle.loads(sys.stdin.buffer.read())
print(json.dumps([d.id for d in retriever.invoke(sys.argv[1], variant="sparse")]))
"""


@pytest.mark.slow
def test_another_process_unpickles_a_reader_of_the_embedded_collection(lc_retriever):
    """multiprocessing hands a retriever to a worker pickled: the worker reopens the embedded collection while this
    process holds it open (the engine locks it: the worker reads a view of it)."""
    expected = [d.id for d in lc_retriever.invoke(LEXICAL_QUERY[0], variant="sparse")]  # this process holds it open
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", UNPICKLE, LEXICAL_QUERY[0]],
        input=pickle.dumps(lc_retriever),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout.decode().splitlines()[-1]) == expected
    print(f"unpickled and searched in another process in {time.perf_counter() - started:.1f} s")


def test_search_type_mmr_takes_langchains_lambda_mult_and_fetch_k(indexed_stack):
    stack = indexed_stack("edge", DUPLICATED, collection="lc-mmr")
    retriever = stack.retriever()
    assert {d.metadata["doc_id"] for d in retriever.as_langchain(k=2).invoke(MOON_QUERY)} == {"moon", "moon-copy"}
    mmr = retriever.as_langchain(search_type="mmr", search_kwargs={"k": 2, "lambda_mult": 0.25, "fetch_k": 5})
    docs = mmr.invoke(MOON_QUERY)
    assert [d.id for d in docs] == [
        h.chunk_id for h in retriever.search(MOON_QUERY, 2, diversity=0.75, diversity_depth=5)
    ]
    assert len({"moon", "moon-copy"} & {d.metadata["doc_id"] for d in docs}) == 1
    default_lambda = retriever.as_langchain(search_type="mmr", k=2).invoke(MOON_QUERY)  # LangChain's 0.5
    assert [d.id for d in default_lambda] == [h.chunk_id for h in retriever.search(MOON_QUERY, 2, diversity=0.5)]
    relevance_only = mmr.invoke(MOON_QUERY, lambda_mult=1)  # a call's own lambda_mult: diversity 0, the default
    assert {d.metadata["doc_id"] for d in relevance_only} == {"moon", "moon-copy"}
    with pytest.raises(InvalidArgumentError, match=r"lambda_mult must be a number from 0 .* to 1 .*got 1.5"):
        retriever.as_langchain(search_type="mmr", lambda_mult=1.5)
    with pytest.raises(InvalidArgumentError, match=r"unknown search arguments \['lambda_mult'\] \(.*search_type='mmr'"):
        retriever.as_langchain(lambda_mult=0.5)
    with pytest.raises(InvalidArgumentError, match="search_type must be one of similarity, mmr, got 'mmmr'"):
        retriever.as_langchain(search_type="mmmr")
    with pytest.raises(InvalidArgumentError, match="diversity must be a number"):
        retriever.as_langchain(diversity=2)
    stack.close()


class RetrieverEvents(BaseCallbackHandler):
    """What LangChain's tracing sees of a retriever run."""

    def __init__(self):
        self.events: list[tuple] = []

    def on_retriever_start(self, serialized, query, *, tags=None, metadata=None, **kwargs):
        self.events.append(("start", query, tags, metadata))

    def on_retriever_end(self, documents, **kwargs):
        self.events.append(("end", [d.metadata["doc_id"] for d in documents]))


def test_a_rag_chain_traces_the_retriever_with_as_retrievers_tags_and_metadata(lc_retriever):
    """README's LCEL chain, the LLM a LangChain test double: callbacks see the retriever's run with the ``tags`` and
    ``metadata`` given to ``as_langchain`` (as LangChain's ``as_retriever`` takes them; they were refused as
    unknown search arguments) and the documents it returned."""
    lc = lc_retriever.retriever.as_langchain(search_kwargs={"k": 2}, tags=["kb"], metadata={"tenant": "a"}, name="kb")
    assert (lc.tags, lc.metadata, lc.name, lc.search_kwargs) == (["kb"], {"tenant": "a"}, "kb", {"k": 2})
    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = (
        {"context": lc | (lambda docs: "\n\n".join(d.page_content for d in docs)), "question": RunnablePassthrough()}
        | prompt
        | FakeListChatModel(responses=["every two years"])
        | StrOutputParser()
    )
    events = RetrieverEvents()
    assert chain.invoke(LEXICAL_QUERY[0], config={"callbacks": [events]}) == "every two years"
    (start, query, tags, metadata), end = events.events
    assert (start, query, "kb" in tags, metadata["tenant"]) == ("start", LEXICAL_QUERY[0], True, "a")
    assert end == ("end", [d.metadata["doc_id"] for d in lc.invoke(LEXICAL_QUERY[0])]) and end[1][0] == "valve"


def test_similarity_score_threshold_says_where_the_threshold_goes(lc_retriever):
    """LangChain's third ``search_type``: refused, saying to give ``score_threshold`` in ``search_kwargs`` and
    that a hybrid score is no 0-1 relevance."""
    with pytest.raises(InvalidArgumentError, match=r"similarity_score_threshold' \(give search_kwargs=\{'score_thr"):
        lc_retriever.retriever.as_langchain(search_type="similarity_score_threshold", score_threshold=0.5)
