"""The Qdrant API key comes from the environment, is never logged or shown, and HTTPS URLs work."""

from __future__ import annotations

import base64
import http.server
import json
import logging
import threading
import uuid
import warnings
from importlib.metadata import version
from urllib.parse import quote

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval import RetrievalSettings
from retrieval.errors import InvalidArgumentError
from retrieval.store import ServerStore, StoreError, collection_names, connect, open_store

KEY = f"hr-secret-{uuid.uuid4().hex}"
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version")


def exception_chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_api_key_from_env_never_appears_in_logs_errors_or_repr(monkeypatch, caplog):
    monkeypatch.setenv("HYBRID_RAG_QDRANT_API_KEY", KEY)
    monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("HYBRID_RAG_QDRANT_RETRIES", "1")
    monkeypatch.setenv("HYBRID_RAG_QDRANT_TIMEOUT_S", "1")
    settings = RetrievalSettings(_env_file=None)
    assert isinstance(settings.qdrant_api_key, SecretStr) and settings.qdrant_api_key.get_secret_value() == KEY
    for shown in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert KEY not in shown

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = open_store(settings)
        assert isinstance(store, ServerStore) and store.location == "http://127.0.0.1:1"
        with pytest.raises(StoreError) as info:
            store.schema()
        store.close()
    assert "http://127.0.0.1:1" in str(info.value) and "get_aliases" in str(info.value)
    assert caplog.records, "the retry should have been logged"
    assert KEY not in caplog.text
    for exc in exception_chain(info.value):
        assert KEY not in str(exc) and KEY not in repr(exc)
    assert all(KEY not in str(w.message) for w in caught)


def test_https_url_builds_an_https_client():
    settings = RetrievalSettings(qdrant_url="https://qdrant.example.com:6333", qdrant_api_key=KEY, _env_file=None)
    store = open_store(settings)
    remote = store.client._client  # qdrant-client's REST client: configuration only, no request is made here
    assert remote.rest_uri == "https://qdrant.example.com:6333"
    assert remote._rest_headers["api-key"] == KEY
    assert KEY not in store.location
    store.close()


def test_https_without_port_and_plain_http():
    https = connect("https://qdrant.example.com", check_compatibility=False)
    assert https._client.rest_uri == "https://qdrant.example.com:6333"
    assert connect("http://localhost:6333", check_compatibility=False)._client.rest_uri == "http://localhost:6333"


# -- a password in HYBRID_RAG_QDRANT_URL (https://user:pass@host) --------------------------------------------------
PASSWORD = f"hr-pass-{uuid.uuid4().hex}"


class _QdrantStub(http.server.BaseHTTPRequestHandler):
    """A fake Qdrant server (none runs here): an empty server's answers, and the Authorization header of each
    request it got."""

    authorization: list[str | None] = []
    api_keys: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).authorization.append(self.headers.get("Authorization"))
        type(self).api_keys.append(self.headers.get("api-key"))
        result = {"/aliases": {"aliases": []}, "/collections": {"collections": []}}.get(self.path.split("?")[0])
        body = (
            {"title": "qdrant", "version": version("qdrant-client")}
            if result is None
            else {"result": result, "status": "ok"}
        )
        data = json.dumps({**body, "time": 0.0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def qdrant_stub():
    _QdrantStub.authorization, _QdrantStub.api_keys = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QdrantStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_credentials_reach_the_server_as_basic_auth_and_are_masked_in_the_title(qdrant_stub, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", f"http://user:{quote(PASSWORD + '@:/', safe='')}@{qdrant_stub}")
    settings = RetrievalSettings(_env_file=None)
    assert collection_names(settings) == []
    basic = "Basic " + base64.b64encode(f"user:{PASSWORD}@:/".encode()).decode()
    assert _QdrantStub.authorization and set(_QdrantStub.authorization) == {basic}  # decoded, on every request
    result = CliRunner().invoke(app, ["collections"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"collections at http://user:***@{qdrant_stub}" in result.output and PASSWORD not in result.output


def test_an_api_key_with_surrounding_whitespace_reaches_the_server_without_it(qdrant_stub, tmp_path, monkeypatch):
    """A key written by ``echo`` (the environment) or read from a file into an env file: the server gets it without
    the whitespace (it was httpx's "Illegal header value" error, quoting the key); a key with a control character
    inside is the one-line settings error, the key not shown, and no request is made."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", f"http://{qdrant_stub}")
    monkeypatch.delenv("HYBRID_RAG_QDRANT_API_KEY", raising=False)
    (tmp_path / "key.env").write_text(f'HYBRID_RAG_QDRANT_API_KEY="  {KEY}\\n"\n')  # dotenv reads \n as a newline
    (tmp_path / "bad.env").write_text(f'HYBRID_RAG_QDRANT_API_KEY="{KEY[:8]}\\n{KEY[8:]}"\n')
    refused = (
        "error: invalid settings: HYBRID_RAG_QDRANT_API_KEY ({}): a control character inside it (the key is not "
        "shown): give the key alone, on one line"
    )
    for args, env, where in (
        (["--env-file", "bad.env", "collections"], {}, "bad.env:1"),
        (["collections"], {"HYBRID_RAG_QDRANT_API_KEY": f"{KEY[:8]}\x1b{KEY[8:]}"}, "environment"),
    ):
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 2 and result.output.strip() == refused.format(where), result.output
        assert KEY[8:] not in result.output and _QdrantStub.api_keys == []
    for args, env in (
        (["--env-file", "key.env", "collections"], {}),
        (["collections"], {"HYBRID_RAG_QDRANT_API_KEY": f"{KEY}\n"}),
    ):
        _QdrantStub.api_keys = []
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert _QdrantStub.api_keys and set(_QdrantStub.api_keys) == {KEY}


def test_url_password_never_appears_in_messages_logs_or_exceptions(monkeypatch, caplog):
    url = f"https://user:{PASSWORD}@127.0.0.1:1"
    monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", url)
    monkeypatch.setenv("HYBRID_RAG_QDRANT_RETRIES", "1")
    monkeypatch.setenv("HYBRID_RAG_QDRANT_TIMEOUT_S", "1")
    caplog.set_level(logging.DEBUG)
    settings = RetrievalSettings(_env_file=None)
    assert settings.qdrant_url == url and PASSWORD not in repr(settings) + str(settings)
    store = open_store(settings)
    assert store.location == "https://user:***@127.0.0.1:1"
    with pytest.raises(StoreError) as info:
        store.schema()
    store.close()
    assert "Qdrant at https://user:***@127.0.0.1:1: get_aliases failed" in str(info.value)
    assert caplog.records and PASSWORD not in caplog.text
    assert all(PASSWORD not in str(exc) and PASSWORD not in repr(exc) for exc in exception_chain(info.value))
    result = CliRunner().invoke(app, ["collections", "--json"])
    assert result.exit_code == 2 and "error: Qdrant at https://user:***@127.0.0.1:1" in result.output
    assert PASSWORD not in result.output

    monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", f"ftp://u:{PASSWORD}@host")  # refused: the message masks it too
    with pytest.raises(InvalidArgumentError) as refused:
        RetrievalSettings(_env_file=None)
    assert "'ftp://u:***@host' is not a Qdrant URL" in str(refused.value)
    assert PASSWORD not in str(refused.value) and PASSWORD not in repr(refused.value)
    result = CliRunner().invoke(app, ["collections"])
    assert (
        result.exit_code == 2
        and "error: invalid settings: HYBRID_RAG_QDRANT_URL (environment): 'ftp://u:***@host'" in result.output
    )
    assert PASSWORD not in result.output


@pytest.mark.slow
def test_a_failed_run_keeps_the_url_password_out_of_the_output_and_the_dagster_instance(tmp_path, monkeypatch):
    """The tester's check: after `hybrid-rag run` fails on an unreachable server (and on a refused URL), grep
    every file of the Dagster instance (run storage, event log) for the password."""
    home = tmp_path / "home"
    for key, value in {
        "DAGSTER_HOME": str(home),
        "HYBRID_RAG_QDRANT_PATH": str(tmp_path / "index"),
        "HYBRID_RAG_ASSETS_DIR": str(tmp_path / "assets"),
        "HYBRID_RAG_HISTORY_PATH": str(tmp_path / "history.sqlite"),
        "HYBRID_RAG_QDRANT_RETRIES": "0",
        "HYBRID_RAG_QDRANT_TIMEOUT_S": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    outputs = []
    for url, failed_step in ((f"http://user:{PASSWORD}@127.0.0.1:1", "qdrant_index"), (f"ftp://u:{PASSWORD}@h", "")):
        monkeypatch.setenv("HYBRID_RAG_QDRANT_URL", url)
        result = CliRunner().invoke(app, ["run", "--corpus", "sample"])
        assert result.exit_code == 1, result.output
        assert f"{failed_step}: " in result.output and "***@" in result.output
        outputs.append(result.output)
    assert all(PASSWORD not in out for out in outputs)
    stored = [p for p in home.rglob("*") if p.is_file()]
    assert any(b"***@" in p.read_bytes() for p in stored)  # the masked URL is what the event log holds
    assert [p for p in stored if PASSWORD.encode() in p.read_bytes()] == []
