"""What search promises callers: clear refusals, document-level results, thresholds, LangChain kwargs."""

import itertools
import json
from dataclasses import asdict, replace

import pytest

from retrieval import Document
from retrieval import search as search_module
from retrieval.errors import EmptyQueryError, HybridRagError, InvalidArgumentError
from tests.conftest import LEXICAL_QUERY, TINY_DOCS

LONG = Document(
    "manual",
    " ".join(f"Section {i}: the ZX-4471 valve gasket needs inspection, torque and leak checks." for i in range(80)),
    "Valve service manual",
    {"topic": "home", "year": 2024},
)

NESTED: list = ["x"]
for _ in range(5000):  # a value nested 5,000 lists deep (its repr alone would exceed Python's recursion limit)
    NESTED = [NESTED]


@pytest.fixture(scope="module")
def retriever(indexed_stack):
    stack = indexed_stack("edge", [*TINY_DOCS, LONG], collection="api", rerank=False)
    yield stack.retriever()
    stack.close()


# no visible text: spaces, a zero-width space, a byte order mark, soft hyphens, a word joiner, NUL (leftovers of
# copy-paste and file reads), which neither channel reads
@pytest.mark.parametrize(
    "query", ["", "   ", "\n\t", "\u200b", "\ufeff", "\u00ad\u00ad", "\u2060", "\x00", " \u200b\u3000"]
)
def test_empty_query_is_refused(retriever, query):
    with pytest.raises(EmptyQueryError, match="empty query"):
        retriever.search(query)
    with pytest.raises(EmptyQueryError, match=r"queries\[1\]"):
        retriever.search_batch(["valve", query])


@pytest.mark.parametrize("query", ["?", "\u0301", "\U0001f642", "\u200bvalve\ufeff"])
def test_a_query_of_any_visible_character_is_searched(retriever, query):
    """Punctuation, a lone combining mark or an emoji is something to search for (the dense channel reads it)."""
    assert retriever.search(query, k=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be a positive integer, got 0"),
        ({"k": -3}, "k must be a positive integer"),
        ({"variant": "semantic"}, "unknown variant 'semantic'; valid: dense, sparse, hybrid, hybrid\\+rerank"),
        ({"group_by": "page"}, "unknown group_by 'page'; valid: chunk, doc"),
        ({"filter": {"year": {"after": 2000}}}, "filter on 'year'"),
        # checked before the engine: a k it cannot take, types that would be read as something else
        ({"k": 2**64}, "k must be at most 1,000,000,000, got 18,446,744,073,709,551,616"),
        ({"k": 10**5000}, "k must be at most 1,000,000,000, got an integer of 16610 bits"),
        ({"rerank": "false"}, "rerank must be True, False or None \\(the settings\\), got 'false'"),
        ({"rerank": 1}, "rerank must be True, False or None"),
        # an explicit rerank the variant contradicts (it was ignored silently: dense hits came back not reranked)
        ({"variant": "dense", "rerank": True}, "rerank=True with variant 'dense': the reranker reorders hybrid"),
        ({"variant": "sparse", "rerank": True}, "rerank=True with variant 'sparse'"),
        ({"variant": "hybrid+rerank", "rerank": False}, "variant 'hybrid\+rerank' with rerank=False"),
        ({"score_threshold": float("nan")}, "score_threshold must be a finite number or None, got nan"),
        ({"score_threshold": float("-inf")}, "score_threshold must be a finite number or None, got -inf"),
        ({"score_threshold": "0.5"}, "score_threshold must be a finite number"),
        ({"filter": {"metadata.": "x"}}, "filter on 'metadata.': after 'metadata.' comes a path of keys"),
        ({"filter": {'metadata.a"b': "x"}}, "filter on 'metadata.a\"b': after 'metadata.'"),
        ({"filter": {"topic": NESTED}}, "the filter nests dicts and lists deeper than 64 levels"),
    ],
)
def test_invalid_arguments_raise_typed_errors(retriever, kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message) as caught:
        retriever.search("valve", **kwargs)
    assert isinstance(caught.value, HybridRagError)


def test_group_by_doc_returns_the_best_chunk_of_each_document(retriever):
    chunks = retriever.search(LEXICAL_QUERY[0], k=5)
    assert len({h.doc_id for h in chunks}) < 5  # the long manual fills the chunk-level top 5
    assert all(h.chunk_index is not None for h in chunks)
    assert {h.chunk_index for h in chunks if h.doc_id == "manual"} != {0}
    docs = retriever.search(LEXICAL_QUERY[0], k=5, group_by="doc")
    assert len(docs) == 5 and len({h.doc_id for h in docs}) == 5
    assert docs[0].chunk_id == chunks[0].chunk_id  # each document is represented by its best chunk
    assert {docs[0].doc_id, docs[1].doc_id} == {"manual", LEXICAL_QUERY[1]}


def test_score_threshold_cuts_on_the_final_score(retriever):
    assert len(retriever.search(LEXICAL_QUERY[0], k=2, score_threshold=-1e9)) == 2  # a finite number, any sign
    hits = retriever.search(LEXICAL_QUERY[0], k=8, group_by="doc")
    threshold = (hits[1].score + hits[2].score) / 2
    kept = retriever.search(LEXICAL_QUERY[0], k=8, group_by="doc", score_threshold=threshold)
    assert [h.chunk_id for h in kept] == [h.chunk_id for h in hits[:2]]
    assert retriever.search(LEXICAL_QUERY[0], score_threshold=1e9) == []


def test_a_score_threshold_on_a_hybrid_search_is_warned_about_once_as_a_cut_by_rank(retriever, caplog, monkeypatch):
    # a hybrid hit's score comes from its ranks (reranked: always): an off-topic query's hits score as those of a
    # document's own text do
    monkeypatch.setattr(search_module, "_warned_threshold", False, raising=False)
    exact, off_topic = (retriever.search(q, k=3, rerank=True) for q in (TINY_DOCS[0].text, "chocolate cake recipe"))
    assert off_topic[0].score == pytest.approx(exact[0].score) == pytest.approx(1 / (retriever.settings.rrf_k + 1))
    assert exact[0].dense_score > 0.8 > 0.3 > off_topic[0].dense_score  # the cosine tells them apart
    with caplog.at_level("WARNING", logger="retrieval.search"):
        retriever.search("valve", variant="dense", score_threshold=0.3)  # a cosine: no warning
        assert not caplog.records
        retriever.search("valve", score_threshold=0.01)
        retriever.as_langchain(score_threshold=0.01).invoke("valve")
    [warning] = [r.getMessage() for r in caplog.records]
    assert "score_threshold on a hybrid search cuts by rank" in warning and "hit.dense_score" in warning


def test_a_query_longer_than_the_dense_model_reads_is_warned_about_once(retriever, caplog, monkeypatch):
    # a pasted page or a chat history as the query: the dense model reads its first 256 tokens, BM25 all of it
    monkeypatch.setattr(search_module, "_warned_truncated", False, raising=False)
    limit = retriever.dense.max_tokens
    long_query = " ".join(["pasta"] * (2 * limit) + ["ZX-4471 valve gasket"])
    with caplog.at_level("WARNING", logger="retrieval.search"):
        retriever.search("valve gasket " * (limit // 8))  # under the limit (about 3 tokens a repeat): no warning
        retriever.search("ünïcödé " * 30)  # more bytes than tokens allowed, fewer tokens: no warning
        assert not caplog.records
        hits = retriever.search(long_query, k=3)
        retriever.search_batch([long_query, "valve"])  # once per process
    assert hits[0].doc_id == "manual" and hits[0].sparse_rank == 1  # BM25 read the end of the query
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"longer than dense model {retriever.dense.model_name!r} reads ({limit} tokens)" in warning
    assert "BM25 all of it" in warning


def test_k_may_be_any_integer_type(retriever):
    np = pytest.importorskip("numpy")
    assert [h.chunk_id for h in retriever.search("valve", k=np.int64(2))] == [
        h.chunk_id for h in retriever.search("valve", k=2)
    ]
    assert len(retriever.as_langchain(k=np.int32(2)).invoke("valve")) == 2


def test_neighbours_give_the_chunks_around_a_hit_in_document_order(retriever):
    # context expansion for an LLM: the chunks before and after the hit, stitched by their offsets
    hits = [h for h in retriever.search("ZX-4471 valve gasket torque", k=20) if h.doc_id == "manual"]
    chunks = retriever.neighbours(hits[0].doc_id, hits[0].chunk_index, before=10**6, after=10**6)  # all of it
    assert [c.chunk_index for c in chunks] == list(range(len(chunks))) and len(chunks) > 3
    assert all(LONG.text[c.start : c.end] == c.text and c.title == LONG.title for c in chunks)
    assert hits[0].chunk_id in {c.chunk_id for c in chunks} and {c.score for c in chunks} == {0.0}
    stitched = chunks[0].text + "".join(c.text[p.end - c.start :] for p, c in itertools.pairwise(chunks))
    assert stitched == LONG.text.strip()
    around = retriever.neighbours("manual", 2, before=1, after=2)
    assert [c.chunk_index for c in around] == [1, 2, 3, 4] and around[1].text == chunks[2].text
    assert [c.chunk_index for c in retriever.neighbours("manual", 0, before=3, after=0)] == [0]
    assert [c.chunk_index for c in retriever.neighbours("manual", len(chunks) - 1, after=5)] == [
        len(chunks) - 2,
        len(chunks) - 1,
    ]
    # what a LangChain document shows is enough
    [doc] = retriever.as_langchain(k=1, filter={"doc_id": "manual"}).invoke("valve gasket")
    assert doc.id in {c.chunk_id for c in retriever.neighbours(doc.metadata["doc_id"], doc.metadata["chunk_index"])}
    assert retriever.neighbours("no-such-document", 0) == []
    for bad in ({"before": -1}, {"after": 1.5}, {"before": True}, {"chunk_index": -1}):
        with pytest.raises(InvalidArgumentError, match="must be a non-negative integer"):
            retriever.neighbours(**({"doc_id": "manual", "chunk_index": 1} | bad))
    with pytest.raises(InvalidArgumentError, match="doc_id must be a string"):
        retriever.neighbours(hits[0], 1)


def test_langchain_search_kwargs_and_per_call_overrides(retriever):
    lc = retriever.as_langchain(search_kwargs={"k": 2, "filter": {"topic": "home"}})
    docs = lc.invoke(LEXICAL_QUERY[0])
    assert len(docs) == 2 and {d.metadata["topic"] for d in docs} == {"home"}
    assert len(lc.invoke(LEXICAL_QUERY[0], k=4, group_by="doc")) == 2  # only two 'home' documents exist
    assert len(lc.invoke(LEXICAL_QUERY[0], k=1)) == 1
    assert len(lc.invoke(LEXICAL_QUERY[0], filter=None, k=6)) == 6  # the filter is overridden too
    assert len(retriever.as_langchain(k=3).invoke("valve")) == 3  # shorthand for search_kwargs={"k": 3}
    with pytest.raises(InvalidArgumentError, match="unknown search arguments \\['top_k'\\]"):
        lc.invoke("valve", top_k=3)


def test_reranked_hits_carry_their_stored_fields(retriever):
    """Reranking reads the candidates' vectors and only the final hits' payloads: those must be complete."""
    by_id = {d.id: d for d in [*TINY_DOCS, LONG]}
    plain = retriever.search(LEXICAL_QUERY[0], k=5, rerank=False)
    reranked = retriever.search(LEXICAL_QUERY[0], k=5, rerank=True)
    grouped = retriever.search(LEXICAL_QUERY[0], k=3, rerank=True, group_by="doc")
    assert {h.chunk_id for h in reranked} <= {h.chunk_id for h in retriever.search(LEXICAL_QUERY[0], k=100)}
    for hit in [*plain, *reranked, *grouped]:
        doc = by_id[hit.doc_id]
        assert hit.text and hit.text in doc.text and hit.title == doc.title and hit.metadata == doc.metadata
        assert hit.chunk_index is not None
    assert len({h.doc_id for h in grouped}) == len(grouped) == 3


def test_hits_have_one_shape_whatever_the_variant_and_vectors_only_when_asked(retriever):
    """A reranked search reads the candidates' vectors, but its hits carry none: ``asdict`` of any hit is JSON."""
    for rerank, group_by, variant in [
        (False, "chunk", "hybrid"),
        (True, "chunk", "hybrid"),
        (True, "doc", "hybrid"),
        (None, "chunk", "hybrid+rerank"),
        (None, "chunk", "dense"),
    ]:
        hits = retriever.search(LEXICAL_QUERY[0], k=3, rerank=rerank, group_by=group_by, variant=variant)
        assert hits and all(h.dense_vector is None for h in hits), (rerank, group_by, variant)
        assert json.loads(json.dumps([asdict(h) for h in hits]))[0]["doc_id"] == hits[0].doc_id
    _, [candidates] = retriever.first_stage([LEXICAL_QUERY[0]], "hybrid", 3, with_vectors=True)
    assert candidates and all(h.dense_vector.shape == (384,) for h in candidates)  # asked for: there


def test_queries_encoded_once_search_as_before_and_vectors_that_do_not_fit_are_refused(retriever):
    """``encode`` then ``search_batch(encoded=...)``: the hits of a search that encodes its queries, for every
    variant; vectors for other queries, lacking a channel or made by another query encoder are refused."""
    queries = [LEXICAL_QUERY[0], "valve gasket torque"]
    encoded = retriever.encode(queries)  # both channels: any variant
    for variant in ("dense", "sparse", "hybrid", "hybrid+rerank"):
        plain = retriever.search_batch(queries, k=6, variant=variant)
        again = retriever.search_batch(queries, k=6, variant=variant, encoded=encoded)
        assert [[(h.chunk_id, h.score) for h in hits] for hits in again] == [
            [(h.chunk_id, h.score) for h in hits] for hits in plain
        ]
    with pytest.raises(InvalidArgumentError, match="the vectors of 2 queries, not of the 1 searched"):
        retriever.search(queries[0], encoded=encoded)
    with pytest.raises(InvalidArgumentError, match="searches the dense channel, but encoded has no dense vectors"):
        retriever.search_batch(queries, variant="hybrid", encoded=retriever.encode(queries, "sparse"))
    with pytest.raises(InvalidArgumentError, match="another query encoder"):
        retriever.search_batch(queries, variant="dense", encoded=replace(encoded, encoder=None))


def test_a_query_that_is_no_string_is_named_so_not_empty(retriever):
    with pytest.raises(InvalidArgumentError, match="query must be a string, got bytes b'hybrid fusion'") as refused:
        retriever.search(b"hybrid fusion")
    assert not isinstance(refused.value, EmptyQueryError)
    with pytest.raises(InvalidArgumentError, match=r"query \(queries\[1\]\) must be a string, got int 7"):
        retriever.search_batch(["valve", 7])


def test_stacks_retrievers_and_indexers_show_their_collection_and_where_it_is(
    retriever, tmp_path, dense_encoder, sparse_encoder
):
    from retrieval import RetrievalSettings, RetrievalStack

    assert repr(retriever) == f"HybridRetriever(collection='api', at={str(retriever.store.root)!r})"
    with RetrievalStack(RetrievalSettings(qdrant_path=tmp_path, collection="notes")) as stack:
        assert repr(stack) == f"RetrievalStack(collection='notes', at={str(tmp_path)!r})"
        assert repr(stack.indexer("other")) == f"Indexer(collection='other', at={str(tmp_path)!r})"
        assert (
            repr(stack.retriever(version=3)) == f"HybridRetriever(collection='notes', at={str(tmp_path)!r}, version=3)"
        )
    url = "http://admin:hunter2@127.0.0.1:1"  # never reached: a repr reads nothing
    with RetrievalStack(RetrievalSettings(qdrant_url=url), dense=dense_encoder, sparse=sparse_encoder) as stack:
        shown = [repr(stack), repr(stack.retriever()), repr(stack.indexer())]
    assert all("admin:***@127.0.0.1:1" in r and "hunter2" not in r for r in shown)


def test_asearch_has_searchs_signature_and_results(retriever):
    """``asearch(*args, **kwargs)`` told type checkers and notebooks' signature help nothing (any name passed)."""
    import asyncio
    import inspect

    from retrieval.search import HybridRetriever

    assert inspect.signature(HybridRetriever.asearch).parameters == inspect.signature(HybridRetriever.search).parameters

    async def both() -> tuple[list, list]:  # from inside a running event loop, as in a notebook
        sync = retriever.search("valve gasket", 3, None, False, "hybrid", group_by="doc")
        return sync, await retriever.asearch("valve gasket", 3, None, False, "hybrid", group_by="doc")

    sync, hits = asyncio.run(both())
    assert [(h.doc_id, h.chunk_index) for h in hits] == [(h.doc_id, h.chunk_index) for h in sync] and len(hits) == 3
