"""What the LangChain, LlamaIndex and Haystack adapters attach: the document's own metadata wins a clash with the
adapter's keys (its values round-trip exactly) except the ids ``doc_id`` and ``chunk_id``, always the hit's (a
``doc_id`` filter matches them); the hit's values stay on the framework's own fields."""

import json
import os

import pytest

from retrieval import Document
from retrieval.errors import EmptyQueryError, FilterError, InvalidArgumentError
from tests.conftest import BACKENDS

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network here

OWN = {"score": 0.5, "title": "Paper title from metadata", "chunk_index": "sec-2", "year": 2024, "content_hash": "h"}
IDS = {"doc_id": "ext-42", "chunk_id": "c-7"}  # metadata named like the hit's ids (e.g. a JSONL export's fields)
PAPER = Document("p1", "Paper about hybrid retrieval and rank fusion.", title="Doc title", metadata={**OWN, **IDS})
OTHER = Document("p2", "Notes about hybrid cars and their batteries.", title="Other", metadata={"year": 2020})
# a null or empty metadata title/chunk_index counts as none: the stored ones show (and are filtered)
EMPTY = Document("p3", "Hybrid vigour in plant breeding.", title="Plants", metadata={"title": None, "chunk_index": []})


@pytest.fixture(params=BACKENDS, scope="module")
def retriever(request, indexed_stack):
    stack = indexed_stack(request.param, [PAPER, OTHER, EMPTY], collection="adapters", rerank=False)
    yield stack.retriever()
    stack.close()


def test_langchain_keeps_the_documents_own_metadata(retriever):
    hit = retriever.search("hybrid retrieval", filter={"score": 0.5})[0]
    assert hit.metadata == {**OWN, **IDS} and hit.score != 0.5 and hit.chunk_index == 0 and hit.title == "Doc title"
    doc = retriever.as_langchain().invoke("hybrid retrieval", filter={"score": 0.5})[0]
    assert {key: doc.metadata[key] for key in OWN} == OWN
    assert doc.id == hit.chunk_id and doc.metadata["chunk_id"] == hit.chunk_id and doc.metadata["doc_id"] == "p1"
    # the doc_id shown is the one a doc_id filter matches
    assert retriever.as_langchain().invoke("hybrid retrieval", filter={"doc_id": doc.metadata["doc_id"]})
    assert doc.metadata["fused_rank"] == 1 and doc.metadata["sparse_rank"] == 1
    # a key the document does not have is still the hit's
    other = retriever.as_langchain().invoke("batteries", filter={"year": 2020})[0]
    assert other.metadata["doc_id"] == "p2" and other.metadata["title"] == "Other"
    assert other.metadata["score"] == pytest.approx(retriever.search("batteries", filter={"year": 2020})[0].score)


def test_llamaindex_keeps_the_documents_own_metadata(retriever):
    pytest.importorskip("llama_index.core")
    hit = retriever.search("hybrid retrieval", filter={"score": 0.5})[0]
    node = retriever.as_llamaindex(filter={"score": 0.5}).retrieve("hybrid retrieval")[0]
    assert {key: node.node.metadata[key] for key in OWN} == OWN
    assert node.score == pytest.approx(hit.score) and node.node.node_id == hit.chunk_id
    assert (node.node.metadata["doc_id"], node.node.metadata["chunk_id"]) == ("p1", hit.chunk_id)


def test_haystack_keeps_the_documents_own_metadata(retriever):
    pytest.importorskip("haystack")
    hit = retriever.search("hybrid retrieval", filter={"score": 0.5})[0]
    documents = retriever.as_haystack().run(
        "hybrid retrieval", filters={"field": "meta.score", "operator": "==", "value": 0.5}
    )["documents"]
    assert len(documents) == 1
    assert {key: documents[0].meta[key] for key in OWN} == OWN  # the filter and what it returns agree
    assert documents[0].score == pytest.approx(hit.score) and documents[0].id == hit.chunk_id
    assert (documents[0].meta["doc_id"], documents[0].meta["chunk_id"]) == ("p1", hit.chunk_id)
    by_id = retriever.as_haystack().run(
        "hybrid retrieval", filters={"field": "meta.doc_id", "operator": "==", "value": documents[0].meta["doc_id"]}
    )["documents"]
    assert [d.id for d in by_id] == [hit.chunk_id]


QUERY = "hybrid"  # every document is a hit (dense)
ADAPTERS = ["langchain", "llamaindex", "haystack"]


def shown(retriever, adapter: str, key: str | None = None, operator: str = "==", value=None) -> dict[str, dict]:
    """doc_id -> the metadata the adapter shows of each document it returns (filtered on ``key``, if given)."""
    flt = None if key is None else {key: value} if operator == "==" else {key: {operator: value}}
    if adapter == "langchain":
        return {d.metadata["doc_id"]: d.metadata for d in retriever.as_langchain(k=10).invoke(QUERY, filter=flt)}
    if adapter == "llamaindex":
        pytest.importorskip("llama_index.core")
        nodes = retriever.as_llamaindex(k=10, filter=flt).retrieve(QUERY)
        return {n.node.metadata["doc_id"]: n.node.metadata for n in nodes}
    pytest.importorskip("haystack")
    haystack_op = {"==": "==", "gte": ">="}[operator]
    filters = None if key is None else {"field": f"meta.{key}", "operator": haystack_op, "value": value}
    return {d.meta["doc_id"]: d.meta for d in retriever.as_haystack(top_k=10).run(QUERY, filters=filters)["documents"]}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_a_filter_tests_the_value_the_adapter_shows(retriever, adapter):
    """title and chunk_index show the document's own metadata value over the stored field; a filter on them
    returns exactly the documents showing the value (the stored 'Doc title' and chunk 0 of p1 are not shown)."""
    everything = shown(retriever, adapter)
    assert set(everything) == {"p1", "p2", "p3"}
    assert [everything[d]["title"] for d in ("p1", "p2", "p3")] == ["Paper title from metadata", "Other", "Plants"]
    assert [everything[d]["chunk_index"] for d in ("p1", "p2", "p3")] == ["sec-2", 0, 0]
    cases = [
        ("title", "==", "Paper title from metadata"),
        ("title", "==", "Doc title"),
        ("title", "==", "Other"),
        ("title", "==", "Plants"),
        ("chunk_index", "==", "sec-2"),
        ("chunk_index", "==", 0),
        ("chunk_index", "gte", 0),
        ("content_hash", "==", "h"),
    ]
    for key, operator, value in cases:
        got = shown(retriever, adapter, key, operator, value)
        want = {
            d
            for d, meta in everything.items()
            if (meta.get(key) == value if operator == "==" else isinstance(meta[key], int) and meta[key] >= value)
        }
        assert set(got) == want, (key, operator, value)
        assert all(got[d].get(key) == everything[d].get(key) for d in got)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_refuse_bad_search_arguments_before_searching(retriever, adapter):
    """A filter on the hit's chunk id (the point's id, not filterable), a bad 'metadata.' key, a k over the limit
    and a rerank that is no bool raise the library's errors, whichever adapter they come through."""
    bad_filters = [({"chunk_id": "c-7"}, "filter on 'chunk_id'"), ({"metadata.": 1}, "filter on 'metadata.'")]
    for flt, message in bad_filters:
        with pytest.raises(FilterError, match=message):
            if adapter == "langchain":
                retriever.as_langchain().invoke(QUERY, filter=flt)
            elif adapter == "llamaindex":
                pytest.importorskip("llama_index.core")
                retriever.as_llamaindex(filter=flt).retrieve(QUERY)
            else:
                pytest.importorskip("haystack")
                key, value = next(iter(flt.items()))
                retriever.as_haystack().run(QUERY, filters={"field": f"meta.{key}", "operator": "==", "value": value})
    for kwargs, message in (({"k": 2**64}, "k must be at most 1,000,000,000"), ({"rerank": "false"}, "rerank must")):
        with pytest.raises(InvalidArgumentError, match=message):
            if adapter == "langchain":
                retriever.as_langchain().invoke(QUERY, **kwargs)
            elif adapter == "llamaindex":
                retriever.as_llamaindex(**kwargs).retrieve(QUERY)
            else:
                retriever.as_haystack(**{"top_k" if k == "k" else k: v for k, v in kwargs.items()}).run(QUERY)


def test_a_haystack_pipeline_saves_and_loads_a_working_retriever(tmp_path, monkeypatch, dense_encoder, sparse_encoder):
    """``Pipeline.dumps()`` holds the settings that rebuild the retriever (never the API key: the loading process's
    environment gives it); ``Pipeline.loads()`` gives a component that searches the same collection alike."""
    haystack = pytest.importorskip("haystack")
    from retrieval import RetrievalSettings, RetrievalStack
    from retrieval.haystack import HaystackRetriever

    settings = RetrievalSettings(
        qdrant_path=tmp_path / "index", collection="saved", embedding_cache=False, rrf_k=20, qdrant_api_key="s3cret"
    )
    filters = {"field": "meta.year", "operator": ">=", "value": 2020}
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index([PAPER, OTHER, EMPTY], progress=False)
        pipe = haystack.Pipeline()
        pipe.add_component("retriever", stack.retriever(rerank=False).as_haystack(top_k=2, filters=filters))
        before = pipe.run({"retriever": {"query": QUERY}})["retriever"]["documents"]
        saved = pipe.dumps()
    assert "s3cret" not in saved and "saved" in saved and "rrf_k: 20" in saved
    monkeypatch.setenv("HYBRID_RAG_QDRANT_API_KEY", "from-env")
    loaded = haystack.Pipeline.loads(saved, allowed_modules=["retrieval.haystack"])  # Haystack trusts no module
    component = loaded.get_component("retriever")
    try:
        assert isinstance(component, HaystackRetriever) and component.top_k == 2 and component.rerank is None
        assert component.retriever.settings.rerank is False and component.retriever.settings.rrf_k == 20
        assert component.retriever.settings.qdrant_api_key.get_secret_value() == "from-env"
        after = loaded.run({"retriever": {"query": QUERY}})["retriever"]["documents"]
        assert [(d.meta["doc_id"], d.score) for d in after] == [(d.meta["doc_id"], d.score) for d in before]
        assert len(after) == 2 and all(d.meta["year"] >= 2020 for d in after)  # the saved filters apply
        assert loaded.dumps() == saved  # saving the loaded pipeline again changes nothing
    finally:
        component.stack.close()


def test_a_haystack_top_k_of_a_numpy_integer_is_saved_as_a_plain_int(tmp_path, dense_encoder, sparse_encoder):
    """search takes k of numpy's integer types, so the Haystack component does: its pipeline must save too (it
    raised SerializationError 'unsupported value of type int64 ... under key top_k')."""
    haystack = pytest.importorskip("haystack")
    import numpy as np

    from retrieval import RetrievalSettings, RetrievalStack

    settings = RetrievalSettings(qdrant_path=tmp_path / "index", collection="np", embedding_cache=False)
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index([PAPER, OTHER], progress=False)
        pipe = haystack.Pipeline()
        pipe.add_component("retriever", stack.retriever().as_haystack(top_k=np.int64(1)))
        assert len(pipe.run({"retriever": {"query": QUERY}})["retriever"]["documents"]) == 1
        saved = pipe.dumps()
    assert "top_k: 1\n" in saved
    assert type(pipe.get_component("retriever").top_k) is int


def test_a_haystack_retriever_whose_url_holds_a_password_is_not_saved(dense_encoder, sparse_encoder):
    pytest.importorskip("haystack")
    from retrieval import RetrievalSettings, RetrievalStack

    settings = RetrievalSettings(collection="notes", qdrant_url="http://admin:hunter2@127.0.0.1:1")  # never reached
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        component = stack.retriever().as_haystack()
        with pytest.raises(InvalidArgumentError, match=r"admin:\*\*\*@.*HYBRID_RAG_QDRANT_API_KEY") as refused:
            component.to_dict()
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_refuse_a_query_with_no_visible_text(retriever, adapter):
    """A zero-width space and a byte order mark are an empty query through every adapter too."""
    with pytest.raises(EmptyQueryError, match="empty query"):
        if adapter == "langchain":
            retriever.as_langchain().invoke("\u200b\ufeff")
        elif adapter == "llamaindex":
            pytest.importorskip("llama_index.core")
            retriever.as_llamaindex().retrieve("\u200b\ufeff")
        else:
            pytest.importorskip("haystack")
            retriever.as_haystack().run("\u200b\ufeff")


# a document of several chunks, with whitespace the chunks leave out at its edges: offsets are not 0 and len(text)
LONG = Document(
    "long",
    "  \n" + " ".join(f"Paragraph {i} about quokkas on Rottnest Island and their burrows." for i in range(60)) + "\n",
    title="Quokkas",
)


@pytest.fixture(scope="module")
def long_retriever(indexed_stack):
    stack = indexed_stack("edge", [LONG], collection="adapter-offsets", rerank=False, chunk_tokens=64)
    yield stack.retriever()
    stack.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_carry_where_the_text_lies_in_its_document(long_retriever, adapter):
    """A citation needs the chunk's place in its document: ``start``/``end`` in each adapter's metadata (LlamaIndex
    also on its own ``start_char_idx``/``end_char_idx``, and the document id as its ``ref_doc_id``), as on ``Hit``."""
    modules = {"langchain": "langchain_core", "llamaindex": "llama_index.core", "haystack": "haystack"}
    pytest.importorskip(modules[adapter])
    hits = long_retriever.search("quokkas burrows", k=5)
    assert len({h.chunk_index for h in hits}) > 1 and hits[0].start is not None
    if adapter == "langchain":
        shown = [(d.page_content, d.metadata) for d in long_retriever.as_langchain(k=5).invoke("quokkas burrows")]
    elif adapter == "llamaindex":
        nodes = long_retriever.as_llamaindex(k=5).retrieve("quokkas burrows")
        shown = [(n.node.text, n.node.metadata) for n in nodes]
        assert [(n.node.start_char_idx, n.node.end_char_idx) for n in nodes] == [(h.start, h.end) for h in hits]
        assert {n.node.ref_doc_id for n in nodes} == {"long"}
    else:
        shown = [(d.content, d.meta) for d in long_retriever.as_haystack(top_k=5).run("quokkas burrows")["documents"]]
    assert [(meta["start"], meta["end"]) for _, meta in shown] == [(h.start, h.end) for h in hits]
    assert all(LONG.text[meta["start"] : meta["end"]] == text for text, meta in shown)
    assert any(meta["start"] > 0 for _, meta in shown)


@pytest.mark.parametrize("adapter", ["llamaindex", "haystack"])
def test_llamaindex_and_haystack_can_ask_for_one_hit_per_document(long_retriever, adapter):
    """Several chunks of one document fill an LLM's context with near-copies: ``group_by="doc"`` (as LangChain's
    ``search_kwargs``) gives one node/document per document, its best chunk; Haystack saves it with the pipeline."""
    pytest.importorskip({"llamaindex": "llama_index.core", "haystack": "haystack"}[adapter])
    best = long_retriever.search("quokkas burrows", k=5, group_by="doc")
    assert len(best) == 1 and len(long_retriever.search("quokkas burrows", k=5)) == 5
    if adapter == "llamaindex":
        ids = [n.node.node_id for n in long_retriever.as_llamaindex(k=5, group_by="doc").retrieve("quokkas burrows")]
    else:
        component = long_retriever.as_haystack(top_k=5, group_by="doc")
        ids = [d.id for d in component.run("quokkas burrows")["documents"]]
        assert component.to_dict()["init_parameters"]["group_by"] == "doc"
    assert ids == [best[0].chunk_id]
    maker = long_retriever.as_llamaindex if adapter == "llamaindex" else long_retriever.as_haystack
    with pytest.raises(InvalidArgumentError, match="unknown group_by 'document'"):
        maker(group_by="document")


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_check_their_search_arguments_when_built(retriever, adapter):
    """A bad k, variant or filter given to the adapter fails where it is given (a service's start-up), not at its
    first query."""
    pytest.importorskip(
        {"langchain": "langchain_core", "llamaindex": "llama_index.core", "haystack": "haystack"}[adapter]
    )
    make = {
        "langchain": retriever.as_langchain,
        "llamaindex": retriever.as_llamaindex,
        "haystack": retriever.as_haystack,
    }
    k = "top_k" if adapter == "haystack" else "k"
    with pytest.raises(InvalidArgumentError, match="k must be a positive integer, got 0"):
        make[adapter](**{k: 0})
    with pytest.raises(InvalidArgumentError, match="rerank must be True, False or None"):
        make[adapter](rerank="no")
    with pytest.raises(FilterError, match="filter on 'chunk_id'"):
        make[adapter](**{"filters" if adapter == "haystack" else "filter": {"chunk_id": "c-7"}})
    if adapter == "langchain":
        with pytest.raises(InvalidArgumentError, match="rerank=True with variant 'dense'"):
            make[adapter](variant="dense", rerank=True)


@pytest.fixture(params=BACKENDS, scope="module")
def sourced(request, tmp_path_factory, indexed_stack):
    """A folder's Markdown file (``source_path``: its path in the folder), a JSONL record without a source and one
    with its own ``source``, read as ``hybrid-rag index`` reads them."""
    from retrieval import read_documents

    root = tmp_path_factory.mktemp("sourced")
    (root / "kb" / "guides").mkdir(parents=True)
    (root / "kb" / "guides" / "pump.md").write_text("# Pump\n\nBleed the quokka pump before its first start.\n")
    records = [
        {"_id": "rec-1", "text": "The quokka valve is tightened by hand."},
        {"_id": "rec-2", "text": "Quokka filters are changed yearly.", "source": "https://example.org/filters"},
    ]
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    docs = read_documents(root / "kb")[0] + read_documents(root / "records.jsonl")[0]
    stack = indexed_stack(request.param, docs, collection="sourced", rerank=False)
    yield stack.retriever()
    stack.close()


def test_langchain_documents_carry_the_source_its_chains_cite(sourced):
    """``metadata["source"]`` (LangChain's loaders: the file path; ``{source}`` in a document prompt): a folder
    file's ``source_path``, a JSONL record's id, a document's own ``source`` as it is; a ``source`` filter tests
    that value."""
    from langchain_core.prompts import PromptTemplate, format_document

    docs = sourced.as_langchain(k=10).invoke("quokka")
    shown = {d.metadata["doc_id"]: d.metadata["source"] for d in docs}
    assert shown == {"guides/pump.md": "guides/pump.md", "rec-1": "rec-1", "rec-2": "https://example.org/filters"}
    pump = next(d for d in docs if d.metadata["doc_id"] == "guides/pump.md")
    assert pump.metadata["source_path"] == "guides/pump.md"
    assert format_document(pump, PromptTemplate.from_template("{source}: {page_content}")).startswith("guides/pump")
    for doc_id, source in shown.items():
        assert [
            d.metadata["doc_id"] for d in sourced.as_langchain(k=10).invoke("quokka", filter={"source": source})
        ] == [doc_id]
    assert sourced.as_langchain(k=10).invoke("quokka", filter={"source": "rec-2"}) == []  # its own source shows
    assert sourced.as_langchain(k=10).invoke("quokka", filter={"source": None}) == []  # every document shows one
