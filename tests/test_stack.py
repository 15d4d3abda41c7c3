"""One RetrievalStack owns the parts: what it hands out shares encoders (and their locks), stores and cache."""

import copy
import json
import os
import pickle

import pytest

from retrieval import RetrievalSettings, RetrievalStack
from retrieval.encoders import Bm25Encoder, DenseEncoder
from retrieval.encoders.dense import resolve_model_path
from retrieval.errors import ClosedError, InvalidArgumentError
from retrieval.parts import Parts
from retrieval.search import HybridRetriever
from retrieval.settings import ADAPTED_MARKER, DEFAULT_DENSE_MODEL
from retrieval.store import SchemaMismatchError
from tests.conftest import LEXICAL_QUERY, TINY_DOCS


@pytest.fixture(scope="module")
def stack(indexed_stack):
    stack = indexed_stack("edge", collection="stack", rerank=False)
    yield stack
    stack.close()


def test_indexers_and_retrievers_share_the_stacks_parts(stack):
    indexer, retriever = stack.indexer(), stack.retriever()
    assert indexer.store is retriever.store is stack.store()
    assert indexer.dense is retriever.dense is retriever.query_encoder is stack.dense
    assert indexer.sparse is retriever.sparse is stack.sparse and indexer.cache is stack.cache
    assert stack.dense.lock is not stack.sparse.lock  # one lock per encoder, not one for all
    second = stack.indexer().index(TINY_DOCS, progress=False)
    assert (second.embedded, second.unchanged) == (0, len(TINY_DOCS))  # the same collection
    assert retriever.search(LEXICAL_QUERY[0], k=1)[0].doc_id == LEXICAL_QUERY[1]


def test_retriever_overrides_share_unchanged_encoders_and_build_changed_ones(stack):
    shallow = stack.retriever(k=2, rerank=True)
    assert shallow.settings.k == 2 and shallow.settings.rerank and not stack.settings.rerank
    assert shallow.dense is stack.dense and shallow.sparse is stack.sparse
    other_bm25 = stack.retriever(bm25_k1=0.9)
    assert other_bm25.dense is stack.dense  # the dense model is unchanged
    assert other_bm25.sparse is not stack.sparse and other_bm25.sparse.k1 == 0.9
    assert other_bm25.sparse.lock is not stack.sparse.lock
    elsewhere = stack.retriever("stack_other", bm25_k1=0.9)  # another collection and a changed encoder
    assert elsewhere.store.collection == "stack_other" and elsewhere.sparse.k1 == 0.9
    assert elsewhere.dense is stack.dense
    assert other_bm25.store is stack.store()


def test_retriever_overrides_are_validated_by_the_settings(stack):
    with pytest.raises(
        InvalidArgumentError, match="^invalid settings: chunk_overlap=32 must be smaller than chunk_tokens=16$"
    ):
        stack.retriever(chunk_tokens=16, chunk_overlap=32)
    with pytest.raises(InvalidArgumentError, match="invalid settings: k: "):
        stack.retriever(k=0)
    with pytest.raises(InvalidArgumentError, match=r"unknown setting 'rerank_weigth' \(did you mean rerank_weight\?\)"):
        stack.retriever(rerank_weigth=0.9)  # a misspelt setting is not silently ignored


def test_a_retriever_searches_its_stacks_store_so_a_location_override_is_refused(stack, tmp_path):
    for override in (
        {"qdrant_path": tmp_path / "elsewhere"},
        {"qdrant_url": ":memory:"},
        {"qdrant_api_key": "key"},
        {"qdrant_timeout_s": 1.0},
        {"qdrant_retries": 0},
    ):
        name = next(iter(override))
        with pytest.raises(
            InvalidArgumentError,
            match=rf"^retriever\(\) .* {name} cannot be overridden here: use stack\.derive\({name}=\.\.\.\)",
        ):
            stack.retriever(**override)
    assert stack.retriever(qdrant_path=stack.settings.qdrant_path, k=1).store is stack.store()  # the same: fine
    assert not (tmp_path / "elsewhere").exists()
    moved = stack.derive(qdrant_path=tmp_path / "elsewhere")  # the way to search another store
    assert moved.retriever().store.location.startswith(str(tmp_path / "elsewhere"))
    moved.close()


def test_the_stack_keeps_its_own_settings(dense_encoder, sparse_encoder, tmp_path):
    settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="mine")
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        settings.collection, settings.k = "alias", 3  # the caller's object changes; the stack does not follow
        retriever = stack.retriever()
        assert (retriever.settings.collection, retriever.store.collection, retriever.settings.k) == ("mine", "mine", 10)
    with pytest.raises(InvalidArgumentError, match=r"^settings must be RetrievalSettings, not dict: "):
        RetrievalStack({"collection": "x"})


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            {"rrf_k": 0, "dense_weight": -1.0},
            "rrf_k: Input should be greater than or equal to 1; dense_weight: Input should be greater than 0",
        ),
        ({"fusion": "bogus"}, "fusion: Input should be 'rrf', 'dbsf' or 'zscore'"),
        ({"colection": "typo"}, "unknown setting 'colection' (did you mean collection?)"),
    ],
)
def test_the_stack_checks_the_settings_it_is_given_however_they_were_made(
    dense_encoder, sparse_encoder, tmp_path, change, error
):
    """pydantic checks neither ``model_copy(update=...)`` nor ``model_construct(...)`` (which drops unknown names): the
    stack checks what it gets, with the one line the constructor gives."""
    base = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="mine")
    with pytest.raises(InvalidArgumentError) as err:
        RetrievalStack(base.model_copy(update=change), dense=dense_encoder, sparse=sparse_encoder)
    assert str(err.value) == f"invalid settings: {error}"
    with pytest.raises(InvalidArgumentError, match=r"^invalid settings: rrf_k: Input should be greater than or equal"):
        RetrievalStack(RetrievalSettings.model_construct(**{**dict(base), "rrf_k": 0}), dense=dense_encoder)


def test_the_stack_expands_a_home_path_it_is_given_unchecked(dense_encoder, sparse_encoder, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = RetrievalSettings(cache_dir=tmp_path / "cache").model_copy(update={"qdrant_path": "~/rag/index"})
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        assert stack.settings.qdrant_path == tmp_path / "home/rag/index"
        assert stack.settings.collection_models_dir() == tmp_path / "home/rag/models/sample"


def test_a_stack_on_relative_paths_keeps_its_index_and_adapted_encoder_after_a_chdir(
    dense_encoder, sparse_encoder, tmp_path, monkeypatch
):
    """The default ``data/index`` (and ``data/models`` beside it) and a relative cache are where they were when the
    stack was made: after the process changes directory it searches, writes and follows the adapted query encoder
    there (an adapted encoder's model loads on first use: its marker is enough here)."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    for name in [n for n in os.environ if n.upper().startswith("HYBRID_RAG_")]:
        monkeypatch.delenv(name)
    settings = RetrievalSettings(collection="notes", cache_dir="cache", rerank=False)
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS[:4], progress=False)
        retriever = stack.retriever()
        monkeypatch.chdir(elsewhere)
        assert retriever.search(LEXICAL_QUERY[0], k=1)[0].doc_id == LEXICAL_QUERY[1]
        stack.indexer().index(TINY_DOCS[4:], progress=False)  # into the same collection
        assert retriever.search("honeybees waggle dance", k=1)[0].doc_id == "bees"
        assert str(work / "data/index") in repr(stack) and retriever.store.location.startswith(str(work))
        adapted = work / "data/models/notes/query_encoder"
        adapted.mkdir(parents=True)
        (adapted / ADAPTED_MARKER).write_text(json.dumps({"base_model": settings.dense_model}))
        assert stack.query_encoder.model_name == str(adapted)  # what its retrievers encode the next query with
    assert (work / "data/index/notes.current.json").is_file() and (work / "cache/embeddings.sqlite").is_file()
    assert list(elsewhere.iterdir()) == []


def test_a_stacks_settings_cannot_be_changed_under_it(stack):
    """The stack has built its encoders and opened its stores from its settings: an assignment is refused, pointing
    at ``derive`` (it would otherwise be half followed: a retriever reporting one collection and searching another)."""
    retrievers = (stack.retriever(), stack.retriever(k=2))
    for settings in (stack.settings, *(r.settings for r in retrievers), stack.indexer().settings):
        with pytest.raises(InvalidArgumentError) as err:
            settings.collection = "sf"
        assert str(err.value) == (
            "invalid settings: collection cannot be changed on the settings a RetrievalStack uses (stack.settings, "
            "its retrievers' and indexers'): use stack.derive(collection=...) or stack.retriever(collection=...)"
        )
    retriever = stack.retriever()
    assert retriever.settings.collection == retriever.store.collection == "stack"
    assert retriever.search(LEXICAL_QUERY[0], k=1)[0].doc_id == LEXICAL_QUERY[1]
    mine = stack.settings.model_copy()  # a copy is the caller's own, equal until changed
    assert mine == stack.settings == copy.deepcopy(stack.settings)
    mine.collection, mine.k = "sf", 2
    assert mine != stack.settings
    for other in (copy.copy(stack.settings), copy.deepcopy(stack.settings), pickle.loads(pickle.dumps(stack.settings))):
        other.k = 3
        assert other.k == 3 and stack.settings.k == 10
    assert (mine.collection, mine.k, stack.settings.collection, stack.settings.k) == ("sf", 2, "stack", 10)


def test_the_settings_of_a_stack_retriever_or_indexer_cannot_be_replaced(stack):
    """Replacing the whole object (``stack.settings = RetrievalSettings(collection="other")``) was accepted and half
    followed, as assigning a field was: a retriever reported ``other`` and searched ``stack``."""
    other = RetrievalSettings(collection="other", k=2, _env_file=None)
    for owner in (stack, stack.retriever(), stack.indexer()):
        with pytest.raises(InvalidArgumentError, match=f"the settings of a {type(owner).__name__} cannot be replaced"):
            owner.settings = other
        assert owner.settings.collection == "stack"


@pytest.mark.parametrize("name", ["", "..", "../escape", "sub/dir", "stack__v1", "stack.write.lock"])
def test_a_collection_name_is_checked_wherever_it_enters(stack, name):
    root = stack.settings.qdrant_path
    before = sorted(p.name for p in root.parent.rglob("*"))
    for hand_out in (stack.store, stack.indexer, stack.retriever):
        with pytest.raises(InvalidArgumentError, match=f"invalid collection name {name!r}"):
            hand_out(name)
    with pytest.raises(InvalidArgumentError, match="invalid collection name"):
        stack.retriever(name, k=3)
    assert sorted(p.name for p in root.parent.rglob("*")) == before  # nothing opened or created
    assert stack.retriever("stack").store is stack.store()  # the default collection by its name: the same store


def test_one_schema_check_with_one_message(stack, indexed_stack):
    empty = indexed_stack("server", [], collection="nothing")
    message = "collection 'nothing' does not exist at :memory:; index documents first"
    with pytest.raises(SchemaMismatchError, match=message):
        empty.retriever().search("anything")
    with pytest.raises(SchemaMismatchError, match=message):
        empty.check_schema()
    assert empty.check_schema(missing_ok=True) is None
    assert stack.check_schema() == stack.schema()

    class OtherSparse(Bm25Encoder):
        name = "other-sparse"

    mismatched = RetrievalStack(stack.settings, dense=stack.dense, sparse=OtherSparse(), store=stack.store())
    message = "sparse_model: collection has 'bm25', settings give 'other-sparse'"
    # a read names the setting that reads it; rebuilding would re-encode it for every reader
    read = "To search it, use the models it was built with: set HYBRID_RAG_SPARSE_MODEL=bm25 (sparse_model in Python)."
    for refused in (mismatched.check_schema, lambda: mismatched.retriever().search("anything")):
        with pytest.raises(SchemaMismatchError, match=message) as err:
            refused()
        assert str(err.value).endswith(read) and "rebuild" not in str(err.value)
    with pytest.raises(SchemaMismatchError, match=message) as err:
        mismatched.indexer().index(TINY_DOCS[:1], progress=False)
    assert "hybrid-rag index --rebuild" in str(err.value) and "HYBRID_RAG_SPARSE_MODEL" not in str(err.value)


def test_a_search_of_a_collection_built_with_another_dense_model_names_the_setting_to_set(stack):
    """As `hybrid-rag search` and `eval` meet it: the collection's dense model, as the setting to give."""
    folder = resolve_model_path(DEFAULT_DENSE_MODEL)  # the bundled model by its folder: another name, another model
    other = RetrievalStack(stack.settings, dense=DenseEncoder(folder), sparse=stack.sparse, store=stack.store())
    with pytest.raises(SchemaMismatchError) as err:
        other.retriever().search("anything")
    assert str(err.value).endswith(
        f"(dense_model: collection has {DEFAULT_DENSE_MODEL!r}, settings give {folder!r}). To search it, use the "
        f"models it was built with: set HYBRID_RAG_DENSE_MODEL={DEFAULT_DENSE_MODEL} (dense_model in Python)."
    )


def test_a_query_model_needs_its_encoder(stack):
    settings = RetrievalSettings(**{**stack.settings.model_dump(), "query_model": "some/trained-encoder"})
    with pytest.raises(InvalidArgumentError, match="RetrievalStack"):
        HybridRetriever(Parts(settings, stack.store(), stack.dense, stack.sparse))


def test_closing_the_stack_lets_go_of_its_stores(indexed_stack):
    stack = indexed_stack("edge", collection="closing")
    first = stack.store()
    assert stack.store() is first  # opened once
    assert first.count() == len(TINY_DOCS)
    stack.close()
    with pytest.raises(ClosedError):  # not reopened on the next use: closing is final
        first.count()
    with pytest.raises(ClosedError):
        stack.store()
    stack.close()


def test_closing_the_stack_closes_every_part_when_one_fails(indexed_stack, monkeypatch):
    """A store whose close() failed left the stores after it and the embedding cache open: each part is closed,
    then the first error is raised, the others noted on it."""
    stack = indexed_stack("edge", collection="closefail")
    first = stack.store()
    pinned = stack.store(version=first.current_version())
    assert pinned is not first and pinned.count() == len(TINY_DOCS)
    stack.cache.get_many("m", ["x"])  # a connection open
    close_cache = stack.cache.close

    def store_fails() -> None:
        raise OSError("disk gone")

    def cache_fails() -> None:
        close_cache()
        raise OSError("cache busy")

    monkeypatch.setattr(first, "close", store_fails)
    monkeypatch.setattr(stack.cache, "close", cache_fails)
    with pytest.raises(OSError, match="disk gone") as raised:
        stack.close()
    assert raised.value.__notes__ == ["closing the stack also failed: OSError: cache busy"]
    with pytest.raises(ClosedError):
        pinned.count()
    assert stack.cache._open == []
