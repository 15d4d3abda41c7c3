"""The Qdrant API key comes from the environment, is never logged or shown, and HTTPS URLs work."""

from __future__ import annotations

import logging
import uuid
import warnings

import pytest
from pydantic import SecretStr

from retrieval import RetrievalSettings
from retrieval.store import ServerStore, StoreError, connect, open_store

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
