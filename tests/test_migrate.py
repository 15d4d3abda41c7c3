"""Moving an embedded collection to a Qdrant server (`hybrid-rag migrate`, qdrant-client's local mode as the server):
the points as stored, nothing re-embedded, the same search results; the source is never changed; an existing
target, a missing URL or collection are one-line refusals; a copy that failed halfway publishes nothing and its
rerun completes it."""

from __future__ import annotations

import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from retrieval import RetrievalSettings, RetrievalStack
from retrieval.store import EdgeStore, ServerStore, StoreError, connect
from retrieval.store import edge as edge_module
from retrieval.store.migrate import copy_collection
from tests.conftest import LEXICAL_QUERY, MOON_QUERY, SEMANTIC_QUERY, TINY_DOCS, cli_invoker


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Runs the CLI from tmp_path with its cache and models there; returns (exit code, output)."""
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HYBRID_RAG_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HYBRID_RAG_QDRANT_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return cli_invoker(monkeypatch)


def results(stack: RetrievalStack) -> list[list[tuple[str, str, float]]]:
    retriever = stack.retriever(rerank=False)
    queries = [LEXICAL_QUERY[0], SEMANTIC_QUERY[0], MOON_QUERY]
    return [[(h.doc_id, h.chunk_id, round(h.score, 6)) for h in retriever.search(q, k=5)] for q in queries]


def test_migrate_copies_an_embedded_collection_to_the_server_with_the_same_results(
    cli, tmp_path, indexed_stack, dense_encoder, sparse_encoder
):
    embedded = indexed_stack("edge")
    index = embedded.settings.qdrant_path
    before = (embedded.store().current_version(), embedded.store().count())
    url = f"file://{tmp_path / 'server'}"
    code, out = cli("migrate", "-c", "test", QDRANT_PATH=str(index), QDRANT_URL=url)
    assert code == 0 and f"copied 'test' from {index} to {url}: {before[1]} points" in out, out
    settings = RetrievalSettings(qdrant_url=url, collection="test", cache_dir=tmp_path / "cache")
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as server:
        assert isinstance(server.store(), ServerStore)
        assert server.store().schema() == embedded.store().schema()
        assert results(server) == results(embedded) and results(server)[0][0][0] == LEXICAL_QUERY[1]

    code, out = cli("migrate", "-c", "test", QDRANT_PATH=str(index), QDRANT_URL=url)  # there already: refused
    assert code == 2 and out.startswith(f"error: collection 'test' already exists at {url}: nothing was copied"), out
    assert (embedded.store().current_version(), embedded.store().count()) == before  # the source, untouched


def test_a_name_another_application_holds_on_the_server_is_refused_and_copied_under_another(
    cli, tmp_path, indexed_stack
):
    index = indexed_stack("edge").settings.qdrant_path
    folder = tmp_path / "server"
    other = QdrantClient(path=str(folder))  # another application's collection called "test"
    other.create_collection("test", vectors_config=qm.VectorParams(size=4, distance=qm.Distance.COSINE))
    other.close()
    url = f"file://{folder}"
    code, out = cli("migrate", "-c", "test", QDRANT_PATH=str(index), QDRANT_URL=url)
    assert code == 2 and "reaches 'test', a collection hybrid-rag did not create" in out, out
    code, out = cli("migrate", "-c", "test", "--to-collection", "kb", QDRANT_PATH=str(index), QDRANT_URL=url)
    assert code == 0 and f"to {url} as 'kb': {len(TINY_DOCS)} points" in out, out
    code, out = cli("search", "valve gasket", "-c", "kb", "--no-rerank", QDRANT_PATH=str(index), QDRANT_URL=url)
    assert code == 0 and "valve" in out, out


def test_migrate_needs_a_server_url_and_an_embedded_collection(cli, tmp_path):
    code, out = cli("migrate", "-c", "notes", QDRANT_PATH=str(tmp_path / "index"))
    assert code == 2 and "set HYBRID_RAG_QDRANT_URL" in out and len(out.strip().splitlines()) == 1, out
    code, out = cli("migrate", "-c", "notes", QDRANT_URL=f"file://{tmp_path / 'server'}")
    assert code == 2 and out.startswith("error: collection 'notes' does not exist at"), out


def test_a_copy_that_failed_halfway_publishes_nothing_and_its_rerun_completes(indexed_stack, monkeypatch):
    source = indexed_stack("edge").store()
    target = ServerStore(connect(":memory:"), "test", location=":memory:", backoff_s=0.0, retries=0)
    monkeypatch.setattr(edge_module, "SCROLL_PAGE", 2)  # several pages to fail between
    written = []
    real = ServerStore.upsert_points

    def fail_second_page(self, points):
        written.append(len(points))
        if len(written) == 2:
            raise StoreError("injected: the server went away")
        real(self, points)

    monkeypatch.setattr(ServerStore, "upsert_points", fail_second_page)
    with pytest.raises(StoreError, match="injected"):
        copy_collection(source, target)
    assert target.current_version() is None and target.exists()  # staged, not published: readers see nothing
    monkeypatch.setattr(ServerStore, "upsert_points", real)
    assert copy_collection(source, target) == source.count() == target.count()
    assert target.current_version() == 1  # the unfinished copy resumed, not a second version
    target.close()


def test_copy_keeps_the_payload_indexes(indexed_stack, tmp_path):
    """Between two engines that keep payload indexes (two embedded folders here; a server keeps them too)."""
    source = indexed_stack("edge", payload_indexes="topic:tenant,year:integer").store()
    target = EdgeStore(tmp_path / "other", "test")
    try:
        copy_collection(source, target)
        assert target.payload_indexes() == source.payload_indexes() == {"topic": "tenant", "year": "integer"}
        assert target.count({"year": 2019}) == source.count({"year": 2019}) > 0
    finally:
        target.close()
