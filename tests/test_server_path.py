"""The Qdrant-server code path (qdrant-client's local mode, as the server backend drives it): a first build is staged
and published when complete, a model that cannot load leaves nothing behind, the listing skips collections
hybrid-rag did not create, and a bad or unreachable URL fails in one line."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings

import pytest
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from retrieval import Document, RetrievalSettings, RetrievalStack
from retrieval.encoders.sparse import SpladeEncoder
from retrieval.errors import InvalidArgumentError, ModelLoadError
from retrieval.store import NotQdrantServerError, StoreError, collection_names, connect
from retrieval.store.base import ForeignPointsError
from tests.conftest import BACKENDS, LEXICAL_QUERY, TINY_DOCS, cli_invoker
from tests.test_reliability_versions import (
    NEW_DOCS,
    crash_after_two_blocks,
    physical_names,
    settings_for,
    small_block_indexer,
    store_pair,
)
from tests.test_reliability_writes import REPO
from tests.test_store_lifecycle import in_forked_child

MISSING_SPLADE = "naver/splade-x"  # a hub name that is not in the local cache: cannot load offline


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """Runs the CLI from an empty folder with its settings under tmp_path; returns (exit code, output)."""
    for key, sub in (("QDRANT_PATH", "data/index"), ("CACHE_DIR", "cache"), ("MODELS_DIR", "models")):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(tmp_path / sub))
    monkeypatch.setenv("HYBRID_RAG_HISTORY_PATH", str(tmp_path / "history.sqlite"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cli_invoker(monkeypatch)


def write_docs(path, docs) -> str:
    path.write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in docs))
    return str(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_first_build_publishes_nothing_and_is_resumed(
    backend, tmp_path, dense_encoder, sparse_encoder, monkeypatch
):
    root = tmp_path / "index"
    store, reader = store_pair(backend, root)
    indexer = small_block_indexer(root, store, dense_encoder, sparse_encoder, monkeypatch)
    indexer.after_batch = crash_after_two_blocks
    with pytest.raises(RuntimeError, match="injected"):
        indexer.index(NEW_DOCS, progress=False)
    assert reader.current_version() is None and reader.schema() is None  # readers see no collection
    indexer.after_batch = None
    resumed = indexer.index(NEW_DOCS, progress=False)
    assert (resumed.version, resumed.unchanged, resumed.embedded) == (1, 16, len(NEW_DOCS) - 16)
    assert reader.count() == len(NEW_DOCS) and physical_names(backend, root, store) & {"test__v1", "test__v2"} == {
        "test__v1"
    }
    store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_model_that_cannot_load_fails_before_anything_is_made(backend, tmp_path, dense_encoder):
    root = tmp_path / "index"
    store, _ = store_pair(backend, root)
    sparse = SpladeEncoder(MISSING_SPLADE)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse).indexer()
    with pytest.raises(ModelLoadError, match=r"cannot load sparse model 'naver/splade-x' \(setting HYBRID_RAG_SPAR"):
        indexer.index(TINY_DOCS, progress=False)
    assert store._versions() == [] and store.current_version() is None
    if backend == "edge":
        assert not root.exists() or not any(root.iterdir())  # no folder, no lock file
    store.close()


def test_cli_first_index_that_fails_leaves_the_name_free_on_a_server(cli, tmp_path):
    docs = write_docs(tmp_path / "docs.jsonl", TINY_DOCS)
    url = f"file://{tmp_path / 'srv'}"
    code, out = cli("index", docs, "-c", "notes", QDRANT_URL=url, SPARSE_MODEL=MISSING_SPLADE)
    assert code == 2 and out.strip().splitlines()[-1].startswith("error: cannot load sparse model 'naver/splade-x'")
    code, out = cli("collections", "--json")
    assert (code, json.loads(out)) == (0, [])
    code, out = cli("index", docs, "-c", "notes", SPARSE_MODEL="bm25")
    assert code == 0, out
    code, out = cli("collections", "--json")
    [row] = json.loads(out)
    assert (row["collection"], row["points"], row["sparse_model"], row["version"]) == (
        "notes",
        len(TINY_DOCS),
        "bm25",
        1,
    )


def test_collections_skips_the_server_collections_hybrid_rag_did_not_create(
    cli, tmp_path, dense_encoder, sparse_encoder, caplog
):
    url = f"file://{tmp_path / 'srv'}"
    settings = RetrievalSettings(qdrant_url=url, collection="notes", cache_dir=tmp_path / "cache", _env_file=None)
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    client = QdrantClient(path=str(tmp_path / "srv"))
    client.create_collection("langchain_docs", vectors_config=qm.VectorParams(size=4, distance=qm.Distance.COSINE))
    alias = qm.CreateAlias(collection_name="langchain_docs", alias_name="docs")
    client.update_collection_aliases(change_aliases_operations=[qm.CreateAliasOperation(create_alias=alias)])
    client.close()
    with caplog.at_level(logging.WARNING):
        code, out = cli("collections", "--json", QDRANT_URL=url)
    assert code == 0, out
    assert [(r["collection"], r["points"]) for r in json.loads(out)] == [("notes", len(TINY_DOCS))]
    warned = [r.getMessage() for r in caplog.records if "did not create" in r.getMessage()]
    assert len(warned) == 1 and "langchain_docs" in warned[0]


@pytest.mark.parametrize("url", ["ftp://qdrant.example.com:6333", " ", "http://:6333", "http://qdrant:port", "qdrant"])
def test_malformed_qdrant_url_is_a_settings_error(url, cli):
    with pytest.raises(InvalidArgumentError, match="^invalid settings: qdrant_url: "):
        RetrievalSettings(qdrant_url=url, _env_file=None)
    code, out = cli("collections", QDRANT_URL=url)
    assert code == 2 and out.strip().splitlines()[-1].startswith(
        "error: invalid settings: HYBRID_RAG_QDRANT_URL (environment): "
    ), out


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://qdrant:6333", "http://qdrant:6333"),
        ("https://q.example.com", "https://q.example.com"),
        ("file:///tmp/x", "file:///tmp/x"),
        (":memory:", ":memory:"),
        ("", None),
    ],
)
def test_supported_qdrant_urls_pass(url, expected):
    assert RetrievalSettings(qdrant_url=url, _env_file=None).qdrant_url == expected


def test_unreachable_server_names_the_operation_and_prints_no_client_warning(cli):
    code, out = cli("collections", QDRANT_URL="http://127.0.0.1:9", QDRANT_RETRIES="0", QDRANT_TIMEOUT_S="2")
    line = out.strip().splitlines()[-1]
    assert code == 2 and "get_aliases failed" in line and "on collection" not in line, out
    assert line.endswith("check HYBRID_RAG_QDRANT_URL's host and port, and that the server is running)"), line
    before = set(threading.enumerate())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        connect("http://127.0.0.1:9", timeout_s=2).close()
        deadline = time.monotonic() + 10  # the client checks the server's version in a background thread
        while any(t.is_alive() for t in set(threading.enumerate()) - before) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not [w for w in caught if "server version" in str(w.message)]


def test_a_server_that_never_answers_names_the_timeout_setting(cli):
    """A port that accepts connections and never answers (a hung server, a firewall's tarpit): the one line names
    HYBRID_RAG_QDRANT_TIMEOUT_S after that many seconds, not a bare ReadTimeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        code, out = cli("collections", QDRANT_URL=url, QDRANT_RETRIES="0", QDRANT_TIMEOUT_S="1")
    line = out.strip().splitlines()[-1]
    assert code == 2 and line.startswith(f"error: Qdrant at {url}: get_aliases failed after 1 attempts"), out
    assert "no answer within HYBRID_RAG_QDRANT_TIMEOUT_S" in line and time.monotonic() - started < 15, line


QDRANT_VERSION = b'{"title":"qdrant - vector search engine","version":"1.15.0"}'  # what Qdrant answers at /


class _WebPage(http.server.BaseHTTPRequestHandler):
    """Another web service on the port: an HTML page with status 200 for every path and method (a catch-all web
    app), or, with ``qdrant_root``, Qdrant's version at ``/`` and a 404 HTML page elsewhere (a Qdrant behind a
    proxy that maps other paths elsewhere: still Qdrant)."""

    qdrant_root = False

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        root = self.path.split("?")[0] == "/"
        if self.qdrant_root and root:
            status, kind, body = 200, "application/json", QDRANT_VERSION
        else:
            status, kind, body = (404 if self.qdrant_root else 200), "text/html", b"<html><body>Welcome</body></html>"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        pass


class _QdrantBehindProxy(_WebPage):
    qdrant_root = True


class _Files(http.server.SimpleHTTPRequestHandler):
    """``python -m http.server``'s handler, quiet."""

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def web_server(tmp_path):
    """Starts a real HTTP server (``python -m http.server``'s handler on a folder, or a :class:`_WebPage` kind) on a
    free port in a thread; returns a function giving its URL."""
    servers = []

    def start(handler: type[http.server.BaseHTTPRequestHandler]) -> str:
        if handler is _Files:
            (tmp_path / "site").mkdir(exist_ok=True)
            handler = functools.partial(_Files, directory=str(tmp_path / "site"))  # type: ignore[assignment]
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


TLS_FAILED = "error: Qdrant at {url}: get_aliases failed (a TLS error, not retried): "


def test_https_to_a_plain_http_port_says_the_tls_handshake_failed(web_server, cli):
    """Not retried (the default 4 retries would wait 7.5 s for nothing): a wrong protocol does not fix itself."""
    url = web_server(_WebPage).replace("http://", "https://")
    code, out = cli("collections", QDRANT_URL=url)
    line = out.strip().splitlines()[-1]
    assert code == 2 and line.startswith(TLS_FAILED.format(url=url)), out
    assert "retrying" not in out, out
    assert line.endswith(
        "(the TLS handshake failed: is HYBRID_RAG_QDRANT_URL's port serving https? http:// for plain http)"
    )


@pytest.mark.skipif(shutil.which("openssl") is None, reason="makes its certificate with the openssl command")
def test_a_self_signed_certificate_is_named_with_the_setting_that_trusts_it(tmp_path, cli, monkeypatch):
    """A Qdrant behind TLS with a private CA: the one line says SSL_CERT_FILE (httpx's) trusts it, and it does."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QdrantBehindProxy)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}"
    try:
        started = time.monotonic()
        code, out = cli("collections", QDRANT_URL=url)  # the default retries: none is made for a certificate
        line = out.strip().splitlines()[-1]
        assert time.monotonic() - started < 3 and "retrying" not in out, out
        assert code == 2 and line.startswith(TLS_FAILED.format(url=url)) and "CERTIFICATE_VERIFY_FAILED" in line, out
        assert line.endswith("set SSL_CERT_FILE to its CA certificate, a PEM file)"), line
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        code, out = cli("collections", QDRANT_URL=url, QDRANT_RETRIES="0")
        assert "CERTIFICATE_VERIFY_FAILED" not in out and "TLS" not in out, out  # trusted: Qdrant's answer, read
    finally:
        server.shutdown()
        server.server_close()


NOT_QDRANT = (
    "HYBRID_RAG_QDRANT_URL={url} answered but is not a Qdrant server ({said}; GET /: no Qdrant version in its "
    "answer): check the host and port (Qdrant's REST port is 6333)"
)


@pytest.mark.parametrize(
    ("handler", "said"),
    [
        (_Files, "get_aliases: HTTP 404 File not found, text/html"),  # python -m http.server: 404 pages, a listing at /
        (_WebPage, "get_aliases: an answer that is not Qdrant's JSON"),  # was qdrant-client's JSONDecodeError traceback
    ],
)
def test_a_web_server_that_is_not_qdrant_is_one_line_at_the_first_call(
    web_server, cli, handler, said, dense_encoder, sparse_encoder
):
    url = web_server(handler)
    message = NOT_QDRANT.format(url=url, said=said)
    code, out = cli("collections", QDRANT_URL=url)  # the default retries: none is made, nothing to retry
    assert code == 2 and out.strip() == f"error: {message}", out
    settings = RetrievalSettings(qdrant_url=url, _env_file=None)
    with pytest.raises(NotQdrantServerError) as info:
        collection_names(settings)
    assert str(info.value) == message
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        retriever = stack.retriever()
        with pytest.raises(NotQdrantServerError) as info:
            retriever.search("red planet")
        retriever.close()
    assert str(info.value) == message and isinstance(info.value, StoreError)  # what callers catch today


def test_a_qdrant_whose_root_answers_is_not_called_another_server(web_server):
    """A 404 page for one request, while ``/`` gives Qdrant's version (a proxy in front of Qdrant): Qdrant's 404, as
    before, not the "not a Qdrant server" advice."""
    url = web_server(_QdrantBehindProxy)
    with pytest.raises(StoreError) as info:
        collection_names(RetrievalSettings(qdrant_url=url, qdrant_retries=0, _env_file=None))
    assert not isinstance(info.value, NotQdrantServerError)
    assert str(info.value).startswith(f"Qdrant at {url}: get_aliases was refused: HTTP 404 Not Found: b'<html>")


def test_sync_with_publish_false_stages_on_a_server(tmp_path, dense_encoder, sparse_encoder):
    """What the ``qdrant_index`` asset does: the server's readers keep the published version until it is published."""
    root = tmp_path / "index"
    store, reader = store_pair("server", root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    chunks = indexer.chunk(NEW_DOCS)
    report = indexer.sync(chunks, prune=True, progress=False, publish=False)
    assert (report.version, reader.current_version(), reader.count()) == (2, 1, len(TINY_DOCS))
    store.publish(store.pinned(2))
    assert (reader.current_version(), reader.count()) == (2, len(NEW_DOCS))
    store.close()


@pytest.mark.parametrize("between", ["index", "delete"])
def test_staged_write_resumed_after_an_in_place_write_keeps_that_write(
    between, tmp_path, dense_encoder, sparse_encoder, monkeypatch
):
    """A failed staged (Dagster) write, then a plain ``index`` or ``delete`` into the live collection: re-running
    the staged write must not resume the old copy (that would publish a collection without the in-place write)."""
    root = tmp_path / "index"
    store, reader = store_pair("server", root)
    indexer = small_block_indexer(root, store, dense_encoder, sparse_encoder, monkeypatch)
    indexer.index(TINY_DOCS, progress=False)
    staged_docs = NEW_DOCS[1:]  # all but "valve": a staged write without pruning keeps the published "valve"
    indexer.after_batch = crash_after_two_blocks
    with pytest.raises(RuntimeError, match="injected"):
        indexer.sync(indexer.chunk(staged_docs), prune=False, progress=False, publish=False)
    indexer.after_batch = None
    late = Document("late", "Added in place while the staged copy waited.")
    if between == "index":
        assert indexer.index([late], progress=False).version == 1  # in place: the version number is unchanged
        expected = {d.id for d in NEW_DOCS} | {"late"}
    else:
        assert indexer.delete_documents(["valve"]).version == 1
        expected = {d.id for d in NEW_DOCS} - {"valve"}
    report = indexer.sync(indexer.chunk(staged_docs), prune=False, progress=False, publish=False)
    assert report.version == 3  # a fresh copy: the unfinished version 2 misses the in-place write
    store.publish(store.pinned(report.version))
    assert {doc_id for doc_id, _ in reader.stored_hashes().values()} == expected
    assert physical_names("server", root, store) == {"test__v3"}
    store.close()


def test_staged_copy_is_not_published_after_an_in_place_write(tmp_path, dense_encoder, sparse_encoder):
    """A complete staged copy (``qdrant_index`` done, ``published_index`` not yet), then a plain ``index``: publishing
    the copy would drop that write, so it is refused clearly; the staged write run again publishes both."""
    root = tmp_path / "index"
    store, reader = store_pair("server", root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    staged = indexer.sync(indexer.chunk(NEW_DOCS), prune=False, progress=False, publish=False)
    indexer.index([Document("late", "Added in place before the staged copy was published.")], progress=False)
    with pytest.raises(StoreError, match="written in place .* after it was copied; run the staged write again"):
        store.publish(store.pinned(staged.version))
    assert reader.current_version() == 1
    again = indexer.sync(indexer.chunk(NEW_DOCS), prune=False, progress=False, publish=False)
    store.publish(store.pinned(again.version))
    assert {doc_id for doc_id, _ in reader.stored_hashes().values()} == {d.id for d in NEW_DOCS} | {"late"}
    store.close()


def foreign_collection(client: QdrantClient, name: str, points: int = 3) -> None:
    """Another application's collection, made with plain qdrant-client (no hybrid-rag schema metadata)."""
    client.create_collection(name, vectors_config={"theirs": qm.VectorParams(size=8, distance=qm.Distance.DOT)})
    payload = {"doc_id": "t", "content_hash": "x", "owner": "team"}  # keys like hybrid-rag's do not make it ours
    client.upsert(
        name, points=[qm.PointStruct(id=i, vector={"theirs": [0.1] * 8}, payload=payload) for i in range(points)]
    )


def aliases(client: QdrantClient) -> dict[str, str]:
    return {a.alias_name: a.collection_name for a in client.get_aliases().aliases}


@pytest.mark.parametrize("write", ["rebuild", "staged"])
def test_writes_keep_another_applications_collection_named_like_a_version(
    write, tmp_path, dense_encoder, sparse_encoder
):
    """A team's ``test__v7`` (plain qdrant-client) beside hybrid-rag's ``test``: a rebuild, or the ``qdrant_index``
    asset's staged copy, used to drop it as an abandoned staging of ``test``."""
    root = tmp_path / "index"
    store, reader = store_pair("server", root)
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    foreign_collection(store.client, "test__v7")
    if write == "rebuild":
        report = indexer.rebuild(NEW_DOCS, progress=False)
    else:
        report = indexer.sync(indexer.chunk(NEW_DOCS), prune=True, progress=False, publish=False)
        store.publish(store.pinned(report.version))
    assert report.version == 8  # not a number another collection has
    assert (reader.current_version(), reader.count()) == (8, len(NEW_DOCS))
    assert physical_names("server", root, store) == {"test__v7", "test__v8"}
    assert store.client.count("test__v7").count == 3
    store.close()


@pytest.mark.parametrize("foreign", ["collection", "alias"])
def test_rebuild_refuses_a_collection_or_alias_hybrid_rag_did_not_make(
    foreign, tmp_path, dense_encoder, sparse_encoder
):
    """``index --rebuild`` into a team's collection ``test`` (or their alias ``test`` on ``team_data``) deleted it and
    made ``test`` hybrid-rag's alias, or crashed on its points; like every other write it refuses, touching nothing."""
    root = tmp_path / "index"
    store, _ = store_pair("server", root)
    client = store.client
    foreign_collection(client, "test" if foreign == "collection" else "team_data")
    if foreign == "alias":
        alias = qm.CreateAlias(collection_name="team_data", alias_name="test")
        client.update_collection_aliases(change_aliases_operations=[qm.CreateAliasOperation(create_alias=alias)])
    before = (physical_names("server", root, store), aliases(client))
    indexer = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    with pytest.raises(StoreError, match=r"was not created by hybrid-rag \(no schema metadata\)"):
        indexer.rebuild(TINY_DOCS, allow_delete=True, progress=False)
    assert (physical_names("server", root, store), aliases(client)) == before
    # the publish itself refuses too (a restore, a staged version published later)
    staged = store.stage(indexer.schema())
    with pytest.raises(StoreError, match="hybrid-rag did not make|was not created by hybrid-rag"):
        store.publish(staged)
    assert aliases(client) == before[1] and client.count("test").count == 3  # their points, through their name
    store.close()


def test_points_another_tool_wrote_into_a_collection_are_no_hits_and_stop_sync_and_rebuild(
    tmp_path, dense_encoder, sparse_encoder, caplog
):
    """A point langchain-qdrant (``vector_name="dense"``) added to a hybrid-rag collection came back as an empty hit,
    and a sync or rebuild crashed with ``KeyError: 'doc_id'``: it is left out of searches with a warning, and a
    sync or rebuild refuses in one line naming it (deleting another tool's data is for its owner to decide)."""
    root = tmp_path / "index"
    store, reader = store_pair("server", root)
    stack = RetrievalStack(settings_for(root), store=store, dense=dense_encoder, sparse=sparse_encoder)
    indexer = stack.indexer()
    indexer.index(TINY_DOCS, progress=False)
    query = "how often to replace the valve gasket"
    lc_id = "5c5b4a52-0000-4000-8000-000000000001"
    vector = dense_encoder.encode_queries([query])[0].tolist()  # the best dense match of the query
    point = qm.PointStruct(id=lc_id, vector={"dense": vector}, payload={"page_content": "x", "metadata": {"s": "lc"}})
    store.client.upsert("test", points=[point])
    with caplog.at_level(logging.WARNING):
        hits = stack.retriever().search(query, k=len(TINY_DOCS) + 1)
    assert lc_id not in {h.chunk_id for h in hits} and all(h.doc_id and h.text for h in hits)
    assert any(lc_id in r.getMessage() and "did not write" in r.getMessage() for r in caplog.records)
    for write in (
        lambda: indexer.index(TINY_DOCS, prune=True, allow_delete=True, progress=False),
        lambda: indexer.rebuild(TINY_DOCS, allow_delete=True, progress=False),
    ):
        with pytest.raises(ForeignPointsError, match=f"1 point that hybrid-rag did not write .*'{lc_id}'"):
            write()
    assert (reader.current_version(), reader.count()) == (1, store.client.count("test").count)
    assert store.client.retrieve("test", [lc_id])  # still there
    assert indexer.index(NEW_DOCS[:1], progress=False).version == 1  # a plain index reads its documents only
    store.close()


def test_team_alias_on_a_version_is_no_collection_and_keeps_its_version(
    tmp_path, dense_encoder, sparse_encoder, caplog
):
    """A team's alias ``prod`` on ``notes__v1``: ``collections`` listed it as a collection, and a rebuild of ``notes``
    deleted ``notes__v1`` and with it the alias."""
    url = f"file://{tmp_path / 'srv'}"
    settings = RetrievalSettings(
        qdrant_url=url, collection="notes", cache_dir=tmp_path / "cache", rerank=False, _env_file=None
    )
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    client = QdrantClient(path=str(tmp_path / "srv"))
    alias = qm.CreateAlias(collection_name="notes__v1", alias_name="prod")
    client.update_collection_aliases(change_aliases_operations=[qm.CreateAliasOperation(create_alias=alias)])
    client.close()
    with caplog.at_level(logging.WARNING):
        assert collection_names(settings) == ["notes"]
    assert any("'prod' -> 'notes__v1'" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        with caplog.at_level(logging.WARNING):
            assert stack.indexer().rebuild(NEW_DOCS, progress=False).version == 2
        assert any("keeping 'notes__v1'" in r.getMessage() and "'prod'" in r.getMessage() for r in caplog.records)
        client = stack.store().client
        assert aliases(client) == {"notes": "notes__v2", "prod": "notes__v1"}
        assert client.count("prod").count == len(TINY_DOCS)


@pytest.mark.parametrize("where", ["memory", "file"])
def test_local_mode_handles_of_one_process_share_its_database(where, tmp_path, dense_encoder, sparse_encoder):
    """qdrant-client's local mode: each ``:memory:`` client is a database of its own and a folder admits one client
    at a time, so a derived stack, a pinned version and a second stack must share the first store's client (as
    every handle of the embedded engine sees the same data); the last handle closed frees the folder."""
    url = ":memory:" if where == "memory" else f"file://{tmp_path / 'srv'}"
    settings = RetrievalSettings(
        qdrant_url=url, collection="mem", rerank=False, cache_dir=tmp_path / "cache", _env_file=None
    )
    stack = RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        version = stack.indexer().index(TINY_DOCS, progress=False).version
    assert not [str(w.message) for w in caught if "Payload indexes" in str(w.message)]
    second = RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder)
    derived = stack.derive(k=1)
    expected = {d.id for d in TINY_DOCS}
    for retriever in (stack.retriever("mem", version=version), second.retriever(), derived.retriever(k=10)):
        assert {h.doc_id for h in retriever.search("valve gasket", k=10)} == expected
    for handle in (derived, second, stack):
        handle.close()
    if where == "file":  # every handle closed: the folder is free for another client
        QdrantClient(path=str(tmp_path / "srv")).close()


FORK_AND_EXIT = """
import os, sys
from retrieval import RetrievalSettings
from retrieval.store import open_store
store = open_store(RetrievalSettings(qdrant_url=sys.argv[1], collection="notes", _env_file=None))
pid = os.fork()
if pid == 0:  # a worker ending as gunicorn's do: its own close (or not), then the interpreter's exit
    if sys.argv[2] == "close":
        store.close()
    elif sys.argv[2] == "client":  # what qdrant-client's __del__ does when the client is collected
        store.client.close()
    sys.exit(0)  # the exit handlers run
os.waitpid(pid, 0)
print("child exited", flush=True)
sys.stdin.readline()
store.close()
"""


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["exit", "close", "client"])
def test_a_forked_child_that_exits_keeps_its_parents_local_mode_folder_lock(ending, tmp_path):
    """The child shares the parent's open lock file: its store's close, the exit handler's or the client's own
    (qdrant-client's ``__del__``) unlocked it for both, so another process could open the folder the parent still
    held and both wrote it. After the child, the folder is still refused to others until the parent closes it."""
    url = f"file://{tmp_path / 'srv'}"
    parent = subprocess.Popen(
        [sys.executable, "-c", FORK_AND_EXIT, url, ending],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout.readline() == "child exited\n"
        with pytest.raises(StoreError, match="is in use by another process"):
            connect(url)
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.wait(timeout=60) == 0
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    connect(url).close()  # the parent's close freed it


@pytest.mark.parametrize("where", ["memory", "file"])
def test_a_forked_child_cannot_use_its_parents_local_mode_store(where, tmp_path, dense_encoder, sparse_encoder):
    """A forked child searched and wrote through the parent's local-mode client: its writes went to the folder but
    not to the parent's in-memory copy, so the parent missed them and its counts disagreed with the folder
    (``:memory:``: the two copies diverge silently). The child's every request through it is refused in one
    line; a stack the child builds after the fork is refused the folder the parent holds (``:memory:``: a new,
    empty database), and the parent's data is as it left it."""
    url = ":memory:" if where == "memory" else f"file://{tmp_path / 'srv'}"
    settings = RetrievalSettings(
        qdrant_url=url, collection="notes", rerank=False, cache_dir=tmp_path / "cache", _env_file=None
    )
    stack = RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder)
    stack.indexer().index(TINY_DOCS, progress=False)
    retriever = stack.retriever()
    encoded = retriever.encode([LEXICAL_QUERY[0]])  # the child tests the store, not the encoder
    expected = [h.doc_id for h in retriever.search(LEXICAL_QUERY[0], k=3, encoded=encoded)]
    assert expected[0] == LEXICAL_QUERY[1]

    def search() -> list[str]:
        return [h.doc_id for h in retriever.search(LEXICAL_QUERY[0], k=3, encoded=encoded)]

    def write() -> int:
        return stack.indexer().delete_documents([LEXICAL_QUERY[1]]).points

    def own_stack() -> int | None:
        with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as own:
            return own.store().current_version()

    refused = f"StoreError: Qdrant at {url}: "
    for work in (search, write):
        outcome, message = in_forked_child(work)
        assert outcome == "error" and message.startswith(refused), message
        assert "forked from the process that opened this local-mode store" in message and "\n" not in message
    outcome, message = in_forked_child(own_stack)
    if where == "file":
        assert outcome == "error" and " is in use by another process " in message, message
    else:
        assert (outcome, message) == ("ok", None)  # a database of its own: no collection there
    assert search() == expected and stack.store().count() == len(TINY_DOCS)
    stack.close()
    if where == "file":  # the folder holds what the parent saw
        with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as again:
            assert again.store().count() == len(TINY_DOCS)
