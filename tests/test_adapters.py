"""What the LangChain, LlamaIndex and Haystack adapters attach: the document's own metadata wins a clash with the
adapter's keys (its values round-trip exactly) except the ids ``doc_id`` and ``chunk_id``, always the hit's (a
``doc_id`` filter matches them); the hit's values stay on the framework's own fields."""

import os

import pytest

from retrieval import Document

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # no network here

OWN = {"score": 0.5, "title": "Paper title from metadata", "chunk_index": "sec-2", "year": 2024}
IDS = {"doc_id": "ext-42", "chunk_id": "c-7"}  # metadata named like the hit's ids (e.g. a JSONL export's fields)
PAPER = Document("p1", "Paper about hybrid retrieval and rank fusion.", title="Doc title", metadata={**OWN, **IDS})
OTHER = Document("p2", "Notes about hybrid cars and their batteries.", title="Other", metadata={"year": 2020})


@pytest.fixture(params=["edge", "server"], scope="module")
def retriever(request, indexed_stack):
    stack = indexed_stack(request.param, [PAPER, OTHER], collection="adapters", rerank=False)
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
