"""The Haystack adapter in a Haystack ``Pipeline`` (``run`` and ``run_async``) with a fake generator."""

import asyncio
import copy
import os
import pickle

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network here
pytest.importorskip("haystack")

from haystack import Pipeline, component  # noqa: E402
from haystack.components.builders import PromptBuilder  # noqa: E402

from retrieval import Document  # noqa: E402
from retrieval.errors import FilterError, HybridRagError, InvalidArgumentError  # noqa: E402
from retrieval.haystack import to_filter  # noqa: E402
from tests.conftest import BACKENDS, LEXICAL_QUERY, SEMANTIC_QUERY  # noqa: E402

RANGE = {"field": "meta.year", "operator": ">", "value": 2000}
DEEP_AND = RANGE
for _ in range(5000):  # an AND nested 5,000 levels deep: a FilterError, not a RecursionError
    DEEP_AND = {"operator": "AND", "conditions": [DEEP_AND]}
TEMPLATE = "{% for d in documents %}[{{ d.meta.doc_id }}] {{ d.content }}\n{% endfor %}Question: {{ query }}"


@component
class FakeEchoGenerator:
    """A fake LLM (the only fake here): replies with the prompt it was given."""

    @component.output_types(replies=list[str])
    def run(self, prompt: str) -> dict:
        return {"replies": [prompt]}


@pytest.fixture(scope="module")
def retriever(indexed_stack):
    stack = indexed_stack("edge", collection="hs")
    yield stack.retriever()
    stack.close()


def rag(retriever):
    pipe = Pipeline()
    pipe.add_component("retriever", retriever.as_haystack(top_k=3))
    pipe.add_component("prompt", PromptBuilder(TEMPLATE, required_variables=["documents", "query"]))
    pipe.add_component("llm", FakeEchoGenerator())
    pipe.connect("retriever.documents", "prompt.documents")
    pipe.connect("prompt.prompt", "llm.prompt")
    return pipe


def test_documents_carry_ids_ranks_and_scores(retriever):
    documents = retriever.as_haystack(top_k=3).run(LEXICAL_QUERY[0])["documents"]
    hit = retriever.search(LEXICAL_QUERY[0], k=3)[0]
    top = documents[0]
    assert len(documents) == 3 and top.id == hit.chunk_id and "ZX-4471" in top.content
    assert top.score == pytest.approx(hit.score) and top.score > documents[1].score
    assert top.meta["doc_id"] == LEXICAL_QUERY[1] and top.meta["chunk_id"] == hit.chunk_id
    assert top.meta["sparse_rank"] == 1 and top.meta["fused_rank"] == 1 and top.meta["topic"] == "home"
    assert {"dense_rank", "dense_score", "sparse_score", "rerank_score"} <= set(top.meta)
    awaited = asyncio.run(retriever.as_haystack(top_k=3).run_async(LEXICAL_QUERY[0]))["documents"]
    assert [d.id for d in awaited] == [d.id for d in documents]


def test_haystack_filters_and_top_k_at_run_time(retriever):
    component = retriever.as_haystack(top_k=1)
    science = {
        "operator": "AND",
        "conditions": [
            {"field": "meta.topic", "operator": "==", "value": "science"},
            {"field": "meta.year", "operator": ">=", "value": 2016},
        ],
    }
    documents = component.run("natural satellite orbit", top_k=8, filters=science)["documents"]
    assert [d.meta["doc_id"] for d in documents] == ["bees"]  # the moon (2015) is filtered out
    assert len(component.run("natural satellite orbit")["documents"]) == 1
    assert to_filter({"year": {"gte": 2016}}) == {"year": {"gte": 2016}}  # our own filter dicts pass through
    with pytest.raises(ValueError, match="only AND"):
        to_filter({"operator": "OR", "conditions": science["conditions"]})
    with pytest.raises(ValueError, match="'!='"):
        to_filter({"field": "meta.year", "operator": "!=", "value": 1})


def test_in_none_and_date_comparisons_map_onto_the_library_filters(retriever):
    component = retriever.as_haystack(top_k=8)
    in_list = {"field": "meta.topic", "operator": "in", "value": ["science", "home"]}
    assert {d.meta["doc_id"] for d in component.run("anything", filters=in_list)["documents"]} == {
        "moon",
        "bees",
        "valve",
    }
    assert component.run("anything", filters={"field": "meta.note", "operator": "==", "value": None})["documents"]
    assert to_filter(
        {
            "operator": "AND",
            "conditions": [
                {"field": "meta.at", "operator": ">=", "value": "2024-01-01"},
                {"operator": "AND", "conditions": [{"field": "meta.at", "operator": "<", "value": "2025-01-01"}]},
                {"field": "meta.doc_id", "operator": "==", "value": "x"},
            ],
        }
    ) == {"at": {"gte": "2024-01-01", "lt": "2025-01-01"}, "doc_id": "x"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_number_filter_matches_the_number_stored_as_a_float(indexed_stack, backend):
    """Python and Haystack: ``4`` matches ``4.0`` (as pandas or JSON write it), and vice versa; a dotted key and
    None (missing, null or an empty list) on the retriever's path."""
    hotels = [
        Document("a", "Hotel A review.", metadata={"stars": 4.0, "dc.creator": "Ann"}),
        Document("b", "Hotel B review.", metadata={"stars": 3, "tags": []}),
    ]
    stack = indexed_stack(backend, hotels, collection="stars")
    retriever = stack.retriever()

    def found(**kwargs) -> list[str]:
        return sorted(h.doc_id for h in retriever.search("hotel review", **kwargs))

    assert found(filter={"stars": 4}) == found(filter={"stars": [4]}) == found(filter={"stars": 4.0}) == ["a"]
    assert found(filter={"stars": 3.0}) == found(filter={"stars": [3.0, 5]}) == ["b"]
    assert found(filter={"dc.creator": "Ann"}) == ["a"] and found(filter={"tags": None}) == ["a", "b"]
    component = retriever.as_haystack()
    for filters in (
        {"field": "meta.stars", "operator": "==", "value": 4},
        {"field": "meta.stars", "operator": "in", "value": [4, 5.5]},
    ):
        assert [d.meta["doc_id"] for d in component.run("hotel", filters=filters)["documents"]] == ["a"]


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"operator": "OR", "conditions": [{"field": "meta.year", "operator": "==", "value": 2018}]}, "only AND"),
        ({"operator": "NOT", "conditions": [{"field": "meta.year", "operator": "==", "value": 2018}]}, "only AND"),
        ({"field": "meta.year", "operator": "!=", "value": 2018}, r"operator '!=' is not supported; valid: ==, in"),
        ({"field": "meta.topic", "operator": "not in", "value": ["a"]}, "operator 'not in' is not supported"),
        ({"field": "meta.topic", "operator": "in", "value": "astronomy"}, "'in' needs a list, got 'astronomy'"),
        ({"field": "meta.topic", "operator": "==", "value": ["a", "b"]}, "a list: use 'in'"),
        ({"field": "content", "operator": "==", "value": "x"}, r"only metadata fields \('meta.<key>'\)"),
        ({"field": "meta.year", "operator": ">="}, "needs 'field', 'operator' and 'value'"),
        ({"field": "meta.year", "operator": ">=", "value": "soon"}, "'soon' is not an ISO 8601"),
        ({"field": "meta.topic", "operator": "in", "value": [1, "a"]}, "a list must hold strings or numbers"),
        ({"field": "meta.id", "operator": "==", "value": 2**64}, "18446744073709551616 is outside the 64-bit"),
        ({"operator": "AND", "conditions": [RANGE, {**RANGE, "operator": "=="}]}, "== or in and another condition"),
        ({"operator": "AND", "conditions": RANGE}, "'conditions' must be a list"),
        (DEEP_AND, "the Haystack filter nests dicts and lists deeper than 64 levels"),
        ({"field": "meta.metadata.", "operator": "==", "value": 1}, "filter on 'metadata.': after 'metadata.'"),
    ],
)
def test_every_bad_filter_raises_the_filter_error(retriever, filters, message):
    component = retriever.as_haystack(top_k=3)
    with pytest.raises(FilterError, match=message):
        component.run("red planet", filters=filters)
    with pytest.raises(FilterError, match=message):
        asyncio.run(component.run_async("red planet", filters=filters))


@pytest.mark.parametrize("top_k", [0, -2])
def test_top_k_below_one_raises_like_search(retriever, top_k):
    with pytest.raises(InvalidArgumentError, match=f"k must be a positive integer, got {top_k}"):
        retriever.as_haystack(top_k=3).run("red planet", top_k=top_k)
    with pytest.raises(HybridRagError):
        retriever.as_haystack(top_k=top_k).run("red planet")


def test_pipeline_with_prompt_builder_and_fake_generator(retriever):
    out = rag(retriever).run({"retriever": {"query": SEMANTIC_QUERY[0]}, "prompt": {"query": SEMANTIC_QUERY[0]}})
    reply = out["llm"]["replies"][0]
    assert reply.startswith(f"[{SEMANTIC_QUERY[1]}]") and "noodles" in reply and SEMANTIC_QUERY[0] in reply


def test_pipeline_run_async_matches_run(retriever):
    pipe = rag(retriever)

    async def both():
        return await asyncio.gather(
            *(
                pipe.run_async({"retriever": {"query": q}, "prompt": {"query": q}})
                for q, _ in (LEXICAL_QUERY, SEMANTIC_QUERY)
            )
        )

    lexical, semantic = asyncio.run(both())
    sync = rag(retriever).run({"retriever": {"query": LEXICAL_QUERY[0]}, "prompt": {"query": LEXICAL_QUERY[0]}})
    assert lexical["llm"]["replies"] == sync["llm"]["replies"]
    assert lexical["llm"]["replies"][0].startswith(f"[{LEXICAL_QUERY[1]}]")
    assert semantic["llm"]["replies"][0].startswith(f"[{SEMANTIC_QUERY[1]}]")


def test_copies_share_the_store_and_pickles_reopen_it(retriever):
    """``copy.deepcopy`` and ``pickle`` raised "cannot pickle '_thread.lock' object": a deep copy (of a pipeline
    too) shares the store and models and owns its ``filters``; a pickle reopens the collection, as ``from_dict``."""
    component = retriever.as_haystack(top_k=3, filters={"topic": "home"})
    pipe = Pipeline()
    pipe.add_component("retriever", component)
    twin = copy.deepcopy(pipe).get_component("retriever")
    twin.filters["topic"] = "science"
    assert twin.retriever.store is retriever.store and component.filters == {"topic": "home"}
    assert component.stack is None  # a stack's retriever: that stack owns the store
    shown = f"HaystackRetriever(retriever={retriever!r}, top_k=3, filters={{'topic': 'home'}})\nretriever\nInputs:"
    assert repr(component).startswith(shown)  # was Haystack's <...HaystackRetriever object at 0x...>
    loaded = pickle.loads(pickle.dumps(component))
    try:
        assert loaded.to_dict() == component.to_dict() and loaded.stack is not None
        expected = [d.id for d in component.run(LEXICAL_QUERY[0])["documents"]]
        assert [d.id for d in loaded.run(LEXICAL_QUERY[0])["documents"]] == expected
    finally:
        loaded.retriever.close()


ORBIT = "natural satellite orbit"


def test_diversity_reaches_the_search_and_is_saved(retriever):
    component = retriever.as_haystack(top_k=3, diversity=1.0, diversity_depth=6)
    expected = [h.chunk_id for h in retriever.search(ORBIT, k=3, diversity=1.0, diversity_depth=6)]
    assert [d.id for d in component.run(ORBIT)["documents"]] == expected
    assert expected != [h.chunk_id for h in retriever.search(ORBIT, k=3)]  # it did reorder
    saved = component.to_dict()["init_parameters"]
    assert (saved["diversity"], saved["diversity_depth"]) == (1.0, 6)
    with pytest.raises(InvalidArgumentError, match="diversity must be a number from 0"):
        retriever.as_haystack(diversity=1.01)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"k": 3}, r"unknown arguments \['k'\]; k: give top_k; valid: top_k, filters, rerank, "),
        ({"filter": {"topic": "home"}}, r"unknown arguments \['filter'\]; filter: give filters"),
        ({"topk": 3}, r"unknown arguments \['topk'\]; valid: top_k, "),
    ],
)
def test_unknown_arguments_name_the_valid_ones(retriever, given, message):
    """The search's names (``k``, ``filter``) raised Python's TypeError naming ``HaystackRetriever.__init__``, which
    the caller of ``as_haystack`` never called; now the valid arguments and which one to give."""
    with pytest.raises(InvalidArgumentError, match=message):
        retriever.as_haystack(**given)
