"""Server backend: a Qdrant server (or qdrant-client's local mode) through ``qdrant-client``.

A collection ``name`` is an alias on the physical collection ``name__v<N>`` that holds its data; a rebuild
fills ``name__v<N+1>`` and moves the alias in one ``update_collection_aliases`` call, so requests addressed
to ``name`` switch atomically. A physical collection called ``name`` (made before versioning) is version 0.
Each request resolves the alias itself: a search makes two or three requests (channel lists, then payloads or
vectors), so one that runs while a rebuild publishes may take its candidates from version N and their payloads
from N+1, where a candidate missing from N+1 is dropped (fewer than k hits). Pinning a search to N would not
help: the publish deletes N at once (no reader holds a server collection), and writes in place (``index``,
``delete``) change the live collection between requests anyway. The embedded engine has no such window.

Writers are serialised within one process only (``write_lock``: a lock per server and collection; threads
wait for it). Qdrant has no lock primitive, so two processes writing one collection are not serialised:
writes in place (``index``, ``delete``) interleave, each point as its last writer left it; two rebuilds or
staged writes may resume or delete each other's unpublished version, or fail creating the same one, and the
last publish wins (a publish never goes back to an older version: it fails with "version N was published
after it"). Run one writer per collection at a time.
"""

from __future__ import annotations

import atexit
import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
from pydantic import ValidationError
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.common.version_check import get_server_version, is_compatible
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from qdrant_client.local.qdrant_local import QdrantLocal

from retrieval.encoders.sparse import SparseVec
from retrieval.errors import ClosedError, not_one_string
from retrieval.settings import WRITE_LOCK_TIMEOUT_S, FusionMethod
from retrieval.store.base import (
    DENSE,
    HASH_FIELDS,
    LOCK_WAIT_SETTING,
    SCROLL_PAGE,
    SPARSE,
    CollectionSchema,
    NotQdrantServerError,
    QdrantStore,
    QueryPlan,
    StoredChunk,
    StoredHit,
    StoredPoint,
    StoreError,
    doc_id_batches,
    filter_conditions,
    parse_version,
    scrolled_pages,
    stored_chunks_from,
    stored_owners_from,
    version_name,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
SCHEMA_KEY = "hybrid_rag_schema"
PRIVATE_HOSTS = ("localhost", "127.0.0.1", "::1")  # and single-label names (compose services): http is fine


def payload_index_schema(kind: str) -> qm.PayloadSchemaType | qm.KeywordIndexParams:
    """A ``PAYLOAD_INDEXES`` type as qdrant-client's ``create_payload_index`` takes it: ``tenant`` is a keyword
    index with ``is_tenant`` (the server keeps each value's points together), the others Qdrant's types."""
    if kind == "tenant":
        return qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
    return qm.PayloadSchemaType(kind)


SERVER_WIDE = ("get_aliases", "get_collections")  # operations that concern no one collection
_write_locks: dict[tuple[str, str], threading.RLock] = {}  # (location, collection) -> this process' writers
_write_locks_guard = threading.Lock()
INDEX_TYPES_TTL_S = 30.0  # how long a store trusts the payload indexes it read (see ServerStore._filter_indexes)
STAGE_KEY = "hybrid_rag_stage"  # collection metadata: what stage() recorded about a version (see QdrantStore.seal)
WRITTEN_KEY = "hybrid_rag_written"  # collection metadata: when a write last changed the version (ISO 8601, UTC)


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` when retrying cannot fix it (an untrusted certificate, a handshake with a port
    that does not serve https); None otherwise. A connection dropped during the handshake (``SSLEOFError``,
    ``SSLZeroReturnError``, ``SSLSyscallError``) is no such error: it may be a server restarting."""
    cause = exc.source if isinstance(exc, ResponseHandlingException) else exc
    tls = next((e for e in _chain(cause) if isinstance(e, ssl.SSLError)), None)
    dropped = ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError
    return None if tls is None or isinstance(tls, dropped) else tls


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: no connection, timeouts, 5xx and 429 answers; not a TLS error (see
    :func:`tls_failure`)."""
    if tls_failure(exc) is not None:
        return False
    if isinstance(exc, ResponseHandlingException | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code is not None and (exc.status_code >= 500 or exc.status_code == 429)
    try:
        import httpx

        return isinstance(exc, httpx.TransportError)
    except ImportError:  # pragma: no cover - httpx ships with qdrant-client
        return False


QDRANT_REST_PORT = 6333


def _qdrant_error_body(content: bytes) -> bool:
    """Whether an error answer's body is Qdrant's: a JSON object with its ``status`` (``{"status": {"error": ...},
    "time": ...}``)."""
    try:
        body = json.loads(content)
    except ValueError:  # an HTML page, plain text, nothing
        return False
    return isinstance(body, dict) and "status" in body


def _unreadable(exc: BaseException) -> bool:
    """Whether ``exc`` is qdrant-client failing to read a successful answer: not JSON (raised as it is), or JSON of
    another shape (its validation error, wrapped)."""
    if isinstance(exc, ResponseHandlingException):
        return isinstance(exc.source, ValidationError)
    return isinstance(exc, json.JSONDecodeError)


def _unanswered_hint(exc: BaseException) -> str:
    """What a request that got no answer ends its message with: the setting to check (the URL for a connection
    that failed, the timeout for one that timed out); empty for other failures (a 5xx answered)."""
    cause = exc.source if isinstance(exc, ResponseHandlingException) else exc
    tls = next((e for e in _chain(cause) if isinstance(e, ssl.SSLError)), None)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return (
            " (the server's TLS certificate is not trusted here: for a private CA or a self-signed certificate, "
            "set SSL_CERT_FILE to its CA certificate, a PEM file)"
        )
    if tls is not None:
        return " (the TLS handshake failed: is HYBRID_RAG_QDRANT_URL's port serving https? http:// for plain http)"
    if isinstance(cause, httpx.TimeoutException | TimeoutError):
        return " (no answer within HYBRID_RAG_QDRANT_TIMEOUT_S: check HYBRID_RAG_QDRANT_URL, or raise the timeout)"
    if isinstance(cause, httpx.NetworkError | ConnectionError):
        return " (nothing answered: check HYBRID_RAG_QDRANT_URL's host and port, and that the server is running)"
    return ""


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _answered(exc: UnexpectedResponse) -> str:
    """``HTTP 404 File not found, text/html``: an answer's status and content type, for a message."""
    kind = (exc.headers.get("content-type") or "no content type").partition(";")[0].strip()
    return f"HTTP {exc.status_code} {exc.reason_phrase}, {kind}".replace("  ", " ")


def connect(
    url: str, api_key: str | None = None, timeout_s: float = 30.0, *, check_compatibility: bool = True
) -> QdrantClient:
    """A client for ``url``: ``http(s)://host:port`` for a server, ``:memory:`` or ``file:///dir`` for local mode.

    A user name and password in the URL (``https://user:pass@host``, e.g. a proxy's basic auth) are sent as HTTP
    basic auth; qdrant-client is given the URL without them (it would drop them, and may quote its URL in errors).
    No request is made here (qdrant-client's version check runs in the background unless switched off).
    """
    if url == ":memory:":
        return QdrantClient(location=":memory:")
    if url.startswith("file://"):
        path = str(Path(url.removeprefix("file://")).expanduser())  # the folder local_location() names
        try:
            return QdrantClient(path=path)
        except PermissionError as exc:
            raise StoreError(
                f"Qdrant local-mode folder {path}: {exc.strerror or 'permission denied'} ({exc.filename}): the user "
                "running this needs read and write access to the folder and its files, even to search "
                "(qdrant-client locks it)"
            ) from None
        except RuntimeError as exc:
            if "already accessed by another instance" not in str(exc):
                raise
            raise StoreError(
                f"Qdrant local-mode folder {path} is in use by another process (a Dagster run, `dagster dev` or "
                f"another hybrid-rag command has it open; qdrant-client's local mode allows one at a time). Stop "
                f"that process, or use a Qdrant server (HYBRID_RAG_QDRANT_URL=http(s)://...) for several at once"
            ) from None
    timeout = max(1, math.ceil(timeout_s))
    parts = urlsplit(url)
    host = parts.hostname or ""
    if api_key and url.startswith("http://") and "." in host and host not in PRIVATE_HOSTS:
        log.warning("the Qdrant API key goes to %s over plain http: use https outside a private network", host)
    extra: dict[str, Any] = {}
    if "@" in parts.netloc:  # credentials in the URL: sent as basic auth, never shown (settings.redact_url)
        extra["auth"] = httpx.BasicAuth(unquote(parts.username or ""), unquote(parts.password or ""))
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    with warnings.catch_warnings():  # this client's construction only: the application's own clients still warn
        # qdrant-client warns at every connection when an API key goes over http; on a private network (a compose
        # service name, localhost) that is expected, so its warning is noise: one line of ours for other hosts only.
        warnings.filterwarnings("ignore", message="Api key is used with an insecure connection", category=UserWarning)
        client = QdrantClient(url=url, api_key=api_key, timeout=timeout, check_compatibility=False, **extra)
    if check_compatibility:  # qdrant-client's own check would warn from its thread, where no filter can be scoped
        headers = {"api-key": api_key} if api_key else {}
        check = (client._client.rest_uri, headers, extra.get("auth"), timeout)
        threading.Thread(target=_check_version, args=check, daemon=True).start()
    return client


def _check_version(rest_uri: str, headers: dict[str, str], auth: httpx.Auth | None, timeout: int) -> None:
    """Log a warning when the server's version is incompatible with qdrant-client's (qdrant-client's own check,
    logged). A server that cannot be reached is not worth one: the request that follows fails with our error
    naming the URL and the operation."""
    try:
        server = get_server_version(rest_uri, headers, auth, timeout)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - unreachable now: the next request says so
        return
    mine = importlib.metadata.version("qdrant-client")
    if server and not is_compatible(mine, server):
        log.warning(
            "qdrant-client %s may not work with the Qdrant server's version %s (major versions should match, "
            "minor versions differ by at most 1)",
            mine,
            server,
        )


_local_clients: dict[str, tuple[QdrantClient, list[int]]] = {}  # local-mode location -> (client, [handles])
_inherited: list[QdrantClient] = []  # in a forked child: the parent's local-mode clients (refused, never closed)
_local_guard = threading.Lock()


def local_location(url: str) -> str | None:
    """The location a qdrant-client local-mode URL names (``:memory:``, ``file://`` and the folder's absolute
    path), or None for a server's URL."""
    if url == ":memory:":
        return url
    if url.startswith("file://"):
        return f"file://{Path(url.removeprefix('file://')).expanduser().resolve()}"
    return None


def shared_local_client(url: str) -> tuple[QdrantClient, Callable[[], None]]:
    """This process's one client of a local-mode ``url`` and the callable that lets go of it (once; the last
    handle to let go closes it). qdrant-client's local mode lets one client at a time open a folder, and each
    ``:memory:`` client is a database of its own, so every store of one location in a process shares a client."""
    key = local_location(url)
    if key is None:
        raise ValueError(f"not a local-mode URL: {url}")
    with _local_guard:
        if key not in _local_clients:
            _local_clients[key] = (connect(url), [0])
        client, handles = _local_clients[key]
        handles[0] += 1
    released = threading.Event()

    def release() -> None:
        with _local_guard:
            if released.is_set():
                return
            released.set()
            handles[0] -= 1
            if handles[0] == 0 and _local_clients.get(key, (None,))[0] is client:
                del _local_clients[key]
                client.close()

    return client, release


def _forget_local_clients() -> None:
    """In a forked child (``os.fork``, gunicorn ``--preload``, a ``fork`` multiprocessing pool): the local-mode
    clients the parent opened are its own. Their in-memory data would diverge from the parent's, so the child's
    stores refuse them (:meth:`ServerStore._call`); the child's new stores open clients of their own. The child's
    copy of a folder's lock file is closed without unlocking (the lock belongs to the open file, which the parent
    still holds), so no close in the child (the exit handler, qdrant-client's ``__del__``) releases the parent's
    lock; the clients stay referenced and are never closed here."""
    global _local_guard
    for client, _ in _local_clients.values():
        local = getattr(client, "_client", None)  # qdrant-client's QdrantLocal
        lock_file = getattr(local, "_flock_file", None)
        if lock_file is not None:
            lock_file.close()
            local._flock_file = None  # type: ignore[union-attr]
        _inherited.append(client)
    _local_clients.clear()
    _local_guard = threading.Lock()  # another thread of the parent may have held it at the fork


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_forget_local_clients)


@atexit.register
def _close_local_clients() -> None:
    """Close the local-mode clients still held at exit (a stack never closed): qdrant-client's own ``__del__``
    would close them during interpreter shutdown, and fail there with a traceback."""
    with _local_guard:
        clients = [client for client, _ in _local_clients.values()]
        _local_clients.clear()
    for client in clients:
        client.close()


class ServerStore(QdrantStore):
    """One collection on a Qdrant server; transient failures are retried with exponential backoff."""

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        *,
        version: int | None = None,
        location: str = "qdrant",
        retries: int = 4,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        owns_client: bool = True,
        release: Callable[[], None] | None = None,
        lock_timeout_s: float = WRITE_LOCK_TIMEOUT_S,
    ):
        self.client = client
        self.collection = collection
        self.version = version
        self.name = collection if version is None else version_name(collection, version)  # what requests address
        self.location = location
        self.retries = retries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._owns_client = owns_client
        self._closed = False
        self._release = release  # a shared local-mode client's (shared_local_client): closes it with its last handle
        self.lock_timeout_s = lock_timeout_s
        self._index_types: tuple[float, dict[str, str]] | None = None  # (when read, payload indexes): _filter_indexes

    def _call(self, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        where = "" if operation in SERVER_WIDE else f" on collection {self.name!r}"
        if self._closed:
            raise ClosedError(
                f"Qdrant at {self.location}: {operation}{where} refused: its store is closed (RetrievalStack.close()); "
                "closing is final: build a new RetrievalStack to search or write again"
            )
        if any(self.client is client for client in _inherited):
            raise StoreError(
                f"Qdrant at {self.location}: {operation}{where} refused: this process was forked from the process "
                "that opened this local-mode store, and qdrant-client's local mode is one process's at a time (a "
                "copy of its data here would diverge from the parent's). Build the RetrievalStack after the fork "
                "(a folder stays refused while the parent holds it; :memory: starts empty), or use a Qdrant server "
                "(HYBRID_RAG_QDRANT_URL=http(s)://...) for several processes"
            )
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                other = self._not_qdrant(operation, exc)
                if other is not None:
                    raise NotQdrantServerError(
                        f"HYBRID_RAG_QDRANT_URL={self.location} answered but is not a Qdrant server ({other}): check "
                        f"the host and port (Qdrant's REST port is {QDRANT_REST_PORT})"
                    ) from None
                if isinstance(exc, UnexpectedResponse) and not is_transient(exc):
                    hint = " (check HYBRID_RAG_QDRANT_API_KEY)" if exc.status_code in (401, 403) else ""
                    raise StoreError(
                        f"Qdrant at {self.location}: {operation}{where} was refused{hint}: "
                        f"HTTP {exc.status_code} {exc.reason_phrase}: {exc.content[:500]!r}"
                    ) from exc
                if tls_failure(exc) is not None:  # a certificate or protocol mismatch: no retry can fix it
                    raise StoreError(
                        f"Qdrant at {self.location}: {operation}{where} failed (a TLS error, not retried): "
                        f"{type(exc).__name__}: {exc}{_unanswered_hint(exc)}"
                    ) from exc
                if not is_transient(exc):
                    raise
                if attempt == self.retries:
                    raise StoreError(
                        f"Qdrant at {self.location}: {operation}{where} failed after "
                        f"{self.retries + 1} attempts: {type(exc).__name__}: {exc}{_unanswered_hint(exc)}"
                    ) from exc
                delay = self.backoff_s * 2**attempt
                log.warning("Qdrant %s at %s failed (%s); retrying in %.1fs", operation, self.location, exc, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _not_qdrant(self, operation: str, exc: Exception) -> str | None:
        """What the server answered ``operation`` and its root (``GET /``), when both show it is not Qdrant: an error
        whose body is not Qdrant's JSON (a web server's 404 page) or a success qdrant-client cannot read, and a root
        that does not give Qdrant's version (``{"title": "qdrant - vector search engine", "version": ...}``). None
        when it is Qdrant, or when that cannot be told (no answer, a refused API key, a 5xx): the caller's own
        handling says what happened. Only a failed request asks the root: a working server costs nothing."""
        if isinstance(exc, UnexpectedResponse):
            if exc.status_code in (401, 403) or is_transient(exc) or _qdrant_error_body(exc.content):
                return None
            said = _answered(exc)
        elif _unreadable(exc):
            said = "an answer that is not Qdrant's JSON"
        else:
            return None
        try:
            title = self.client.info().title
        except UnexpectedResponse as root:
            if root.status_code in (401, 403) or is_transient(root):
                return None
            return f"{operation}: {said}; GET /: {_answered(root)}"
        except Exception as root:  # noqa: BLE001 - else cannot tell: the caller's handling of the failure says it
            return f"{operation}: {said}; GET /: no Qdrant version in its answer" if _unreadable(root) else None
        if "qdrant" in (title or "").lower():
            return None
        return f"{operation}: {said}; GET /: title {title!r}"

    # -- versions -----------------------------------------------------------------------------------
    def _aliases(self) -> dict[str, str]:
        response = self._call("get_aliases", self.client.get_aliases)
        return {a.alias_name: a.collection_name for a in response.aliases}

    def _exists(self, name: str) -> bool:
        """Whether a physical collection (not an alias) called ``name`` exists."""
        response = self._call("get_collections", self.client.get_collections)
        return any(c.name == name for c in response.collections)

    def _physical(self) -> str | None:
        """The physical collection requests to ``self.name`` reach, or None."""
        if self.version is None:
            target = self._aliases().get(self.collection)
            if target is not None:
                return target
        return self.name if self._exists(self.name) else None

    def current_version(self) -> int | None:
        physical = self._physical()
        return None if physical is None else parse_version(self.collection, physical)

    def _ours(self, name: str) -> bool:
        """Whether the physical collection ``name`` carries hybrid-rag's schema metadata (hybrid-rag made it)."""
        info = self._call("get_collection", self.client.get_collection, name)
        return SCHEMA_KEY in (info.config.metadata or {})

    def _taken_versions(self) -> list[int]:
        response = self._call("get_collections", self.client.get_collections)
        found = (parse_version(self.collection, c.name) for c in response.collections)
        return sorted(v for v in found if v is not None)

    def _versions(self) -> list[int]:
        """The versions hybrid-rag made: a collection named like one (``<name>__v7``) without hybrid-rag's schema
        metadata is another application's, never dropped nor resumed (its number is not reused either)."""
        return [v for v in self._taken_versions() if self._ours(version_name(self.collection, v))]

    def _refuse_foreign_name(self) -> str | None:
        """The collection the alias ``collection`` points at (None: no alias); :class:`StoreError` when the name
        reaches a collection hybrid-rag did not make as a version of this one (another application's)."""
        aliased = self._aliases().get(self.collection)
        if aliased is not None:
            foreign = None if parse_version(self.collection, aliased) is not None and self._ours(aliased) else aliased
        else:
            foreign = self.collection if self._exists(self.collection) and not self._ours(self.collection) else None
        if foreign is not None:
            raise StoreError(
                f"{self.collection!r} at {self.location} reaches {foreign!r}, a collection hybrid-rag did not create "
                "as a version of it (no schema metadata); nothing was changed. Use another collection name"
            )
        return aliased

    def exists(self) -> bool:
        self._refuse_foreign_name()
        return super().exists()

    def _other_aliases(self, version: int) -> list[str]:
        """The aliases other than the collection's own that point at ``version`` (e.g. a team's ``prod``)."""
        target = version_name(self.collection, version)
        return sorted(a for a, t in self._aliases().items() if t == target and a != self.collection)

    def _pinned(self, version: int) -> ServerStore:
        return ServerStore(
            self.client,
            self.collection,
            version=version,
            location=self.location,
            retries=self.retries,
            backoff_s=self.backoff_s,
            sleep=self._sleep,
            owns_client=False,
            lock_timeout_s=self.lock_timeout_s,
        )

    def _switch(self, staged: QdrantStore) -> None:
        ops: list[qm.AliasOperations] = []
        target = version_name(self.collection, staged.version or 0)
        aliased = self._aliases().get(self.collection)
        if aliased is not None and (parse_version(self.collection, aliased) is None or not self._ours(aliased)):
            raise StoreError(
                f"not publishing {target!r} at {self.location}: the alias {self.collection!r} points at "
                f"{aliased!r}, which hybrid-rag did not make as a version of {self.collection!r}; nothing was changed. "
                "Use another collection name"
            )
        if aliased is not None:
            ops.append(qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=self.collection)))
        elif self._exists(self.collection):  # an alias cannot shadow a collection: the unversioned one goes first
            if not self._ours(self.collection):
                raise StoreError(
                    f"not publishing {target!r} at {self.location}: collection {self.collection!r} was not "
                    "created by hybrid-rag (no schema metadata); nothing was changed. Use another collection name"
                )
            log.warning(
                "replacing the unversioned collection %r at %s by an alias (it is missing for a moment)",
                self.collection,
                self.location,
            )
            self._call("delete_collection", self.client.delete_collection, self.collection)
        ops.append(
            qm.CreateAliasOperation(create_alias=qm.CreateAlias(collection_name=target, alias_name=self.collection))
        )
        self._call("update_collection_aliases", self.client.update_collection_aliases, change_aliases_operations=ops)
        self._index_types = None  # the published version's indexes

    @contextmanager
    def write_lock(self, timeout_s: float | None = None) -> Iterator[None]:
        """Serialises the writers of this collection in this process (threads wait up to ``timeout_s``, default
        ``lock_timeout_s``, then fail clearly); nothing serialises other processes (module doc)."""
        timeout_s = self.lock_timeout_s if timeout_s is None else timeout_s
        with _write_locks_guard:
            lock = _write_locks.setdefault((self.location, self.collection), threading.RLock())
        if not lock.acquire(blocking=False):
            log.warning(
                "collection %r at %s is being written by another thread: waiting", self.collection, self.location
            )
            if not lock.acquire(timeout=timeout_s):
                raise StoreError(
                    f"collection {self.collection!r} at {self.location} is being written by another thread of this "
                    f"process; gave up after waiting {timeout_s:g}s ({LOCK_WAIT_SETTING}). Let that write finish, "
                    "then run this again"
                )
        try:
            yield
        finally:
            lock.release()

    def _restore_hint(self, version: int) -> str:
        physical = version_name(self.collection, version)
        return f"create the alias {self.collection!r} on the collection {physical!r} (update_collection_aliases)"

    def _stage_info(self, version: int) -> dict[str, Any] | None:
        info = self._call("get_collection", self.client.get_collection, version_name(self.collection, version))
        return (info.config.metadata or {}).get(STAGE_KEY)

    def _set_stage_info(self, version: int, info: dict[str, Any]) -> None:
        name = version_name(self.collection, version)
        self._call("update_collection", self.client.update_collection, name, metadata={STAGE_KEY: info})

    def _copy_physical(self, source: int, target: int) -> None:
        """Scroll the source version and upsert its points (vectors and payload) into a new collection."""
        src = self._pinned(source)
        dst = self._pinned(target)
        schema = src.schema()
        if schema is None:
            raise StoreError(f"Qdrant at {self.location}: version {source} of {self.collection!r} does not exist")
        dst._create_physical(schema)
        dst.index_payload(src.payload_indexes() or {})  # before the points: indexed as they arrive
        offset = None
        while True:
            records, offset = self._call(
                "scroll", self.client.scroll, src.name, limit=512, offset=offset, with_payload=True, with_vectors=True
            )
            if records:
                points = [qm.PointStruct(id=r.id, vector=r.vector, payload=r.payload) for r in records]
                self._call("upsert", self.client.upsert, dst.name, points=points, wait=True)
            if offset is None:
                return

    def catalogue(self) -> tuple[dict[str, str], list[str]]:
        """The collections' aliases (``name`` -> ``name__v<N>``) and the physical collections hybrid-rag made (with
        its schema metadata), without the collections others made, which are named in one warning, and without
        the other aliases on hybrid-rag's versions (a team's ``prod`` -> ``kb__v1``), named in another."""
        aliases = {a.alias_name: a.collection_name for a in self._call("get_aliases", self.client.get_aliases).aliases}
        ours, foreign = [], []
        for c in self._call("get_collections", self.client.get_collections).collections:
            other = ServerStore(self.client, c.name, location=self.location, retries=self.retries, owns_client=False)
            info = other._call("get_collection", self.client.get_collection, c.name)
            (ours if SCHEMA_KEY in (info.config.metadata or {}) else foreign).append(c.name)
        if foreign:
            log.warning(
                "not listing collections at %s that hybrid-rag did not create (no schema metadata): %s",
                self.location,
                ", ".join(sorted(foreign)),
            )
        others = sorted(a for a, t in aliases.items() if t in ours and parse_version(a, t) is None)
        if others:
            log.warning(
                "not listing aliases at %s on versions of hybrid-rag collections (searchable, but no collections of "
                "their own; a rebuild keeps the version they point at): %s",
                self.location,
                ", ".join(f"{a!r} -> {aliases[a]!r}" for a in others),
            )
        return {a: t for a, t in aliases.items() if t in ours and parse_version(a, t) is not None}, ours

    # -- lifecycle ----------------------------------------------------------------------------------
    def _schema_record(self) -> dict[str, Any] | None:
        physical = self._physical()
        if physical is None:
            if self.version is None:
                self.check_pointer(None)  # a lost alias: say so, not "does not exist"
            return None
        info = self._call("get_collection", self.client.get_collection, physical)
        metadata = info.config.metadata or {}
        if SCHEMA_KEY not in metadata:
            raise StoreError(
                f"collection {physical!r} at {self.location} was not created by hybrid-rag (no schema metadata)"
            )
        return metadata[SCHEMA_KEY]

    def schema(self) -> CollectionSchema | None:
        record = self._schema_record()
        return None if record is None else CollectionSchema.from_dict(record)

    def _record_schema(self, schema: CollectionSchema) -> None:
        physical = self._physical() or self.name
        self._call(
            "update_collection", self.client.update_collection, physical, metadata={SCHEMA_KEY: schema.to_dict()}
        )

    def _create_physical(self, schema: CollectionSchema) -> None:
        self._call(
            "create_collection",
            self.client.create_collection,
            self.name,
            vectors_config={DENSE: qm.VectorParams(size=schema.dense_dim, distance=qm.Distance.COSINE)},
            sparse_vectors_config={
                SPARSE: qm.SparseVectorParams(modifier=qm.Modifier.IDF if schema.sparse_idf else None)
            },
            metadata={SCHEMA_KEY: schema.to_dict()},
        )
        with warnings.catch_warnings():  # local mode says its payload indexes do nothing: nothing to act on
            warnings.filterwarnings("ignore", message="Payload indexes have no effect in the local Qdrant")
            self._call(
                "create_payload_index",
                self.client.create_payload_index,
                self.name,
                field_name="doc_id",
                field_schema=qm.PayloadSchemaType.KEYWORD,
            )

    def payload_indexes(self) -> dict[str, str] | None:
        """None in qdrant-client's local mode: it keeps no payload indexes (every filter scans its points)."""
        if isinstance(getattr(self.client, "_client", None), QdrantLocal):
            return None
        info = self._call("get_collection", self.client.get_collection, self._physical() or self.name)
        return {
            path.removeprefix("metadata."): "tenant"
            if getattr(index.params, "is_tenant", None)
            else qm.PayloadSchemaType(index.data_type).value
            for path, index in (info.payload_schema or {}).items()
            if path.startswith("metadata.")
        }

    def _filter_indexes(self) -> dict[str, str]:
        """:meth:`payload_indexes` as filters check them (see :func:`filter_conditions`), read from the server at most
        every :data:`INDEX_TYPES_TTL_S` (not a request per search): an index another process adds (or a rebuild it
        publishes) is followed within that time, one this store creates or publishes at once."""
        now = time.monotonic()
        if self._index_types is None or now - self._index_types[0] > INDEX_TYPES_TTL_S:
            self._index_types = (now, self.payload_indexes() or {})
        return self._index_types[1]

    def _create_payload_index(self, key: str, kind: str) -> None:
        self._index_types = None
        self._call(
            "create_payload_index",
            self.client.create_payload_index,
            self._physical() or self.name,
            field_name=f"metadata.{key}",
            field_schema=payload_index_schema(kind),
        )

    def drop(self) -> list[str]:
        """Delete the collection for good (see :meth:`QdrantStore.drop`; returns the versions dropped); a version
        another alias points at (a team's ``prod``) is kept, with a warning naming it."""
        if self.version is not None:
            if others := self._other_aliases(self.version):  # deleting it would delete them (Qdrant drops its aliases)
                log.warning(
                    "keeping %r at %s: the alias %s points at it; delete %s to let hybrid-rag remove it",
                    self.name,
                    self.location,
                    ", ".join(map(repr, others)),
                    "that alias" if len(others) == 1 else "those aliases",
                )
                return []
            self._call("delete_collection", self.client.delete_collection, self.name)
            return [self.name]
        with self.write_lock():
            return self._drop_collection()

    def _drop_collection(self) -> list[str]:
        aliased = self._refuse_foreign_name()
        if aliased is not None:
            delete = qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=self.collection))
            self._call(
                "update_collection_aliases", self.client.update_collection_aliases, change_aliases_operations=[delete]
            )
        return [name for v in self._versions() for name in self._pinned(v).drop()]

    def close(self) -> None:
        """Final: later operations raise :class:`~retrieval.errors.ClosedError` (the client is closed if owned)."""
        if self._closed:
            return
        self._closed = True
        if self._release is not None:
            self._release()
        elif self._owns_client:
            self.client.close()

    # -- writes -------------------------------------------------------------------------------------
    def upsert_points(self, points: Sequence[StoredPoint]) -> None:
        """:meth:`QdrantStore.upsert_points` in one request (``wait=True``: applied when it returns), retried on
        transient errors; a :class:`StoreError` when it still fails."""
        records = [
            qm.PointStruct(
                id=p.id,
                vector={
                    DENSE: p.dense.tolist(),
                    SPARSE: qm.SparseVector(indices=p.sparse.indices, values=p.sparse.values),
                },
                payload=p.payload,
            )
            for p in points
        ]
        self._call("upsert", self.client.upsert, self.name, points=records, wait=True)

    def all_points(self) -> Iterator[list[StoredPoint]]:
        for records in scrolled_pages(self._scroll_page(True, vectors=True)):
            yield [StoredPoint(str(r.id), *_vectors(r.vector), r.payload or {}) for r in records]

    def delete_ids(self, ids: Sequence[str]) -> None:
        """:meth:`QdrantStore.delete_ids` in one request (``wait=True``), retried on transient errors."""
        not_one_string(ids, "delete_ids", "point ids")
        if ids:
            selector = qm.PointIdsList(points=list(ids))
            self._call("delete", self.client.delete, self.name, points_selector=selector, wait=True)

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        not_one_string(doc_ids, "delete_documents", "document ids")
        if doc_ids:
            selector = qm.FilterSelector(filter=_client_filter({"doc_id": list(doc_ids)}, {}))
            self._call("delete", self.client.delete, self.name, points_selector=selector, wait=True)

    # -- reads --------------------------------------------------------------------------------------
    def _scroll_page(
        self, payload: Sequence[str] | bool, doc_ids: Sequence[str] | None = None, vectors: bool = False
    ) -> Callable[[Any], tuple[Sequence[Any], Any]]:
        """``offset -> (records, next offset)`` over this collection (the points of documents ``doc_ids`` only, when
        given), each record's payload limited to ``payload`` (True: all of it), with its vectors when ``vectors``."""
        flt = (
            None
            if doc_ids is None
            else qm.Filter(must=[qm.FieldCondition(key="doc_id", match=qm.MatchAny(any=list(doc_ids)))])
        )
        return lambda offset: self._call(
            "scroll",
            self.client.scroll,
            self.name,
            scroll_filter=flt,
            limit=SCROLL_PAGE,
            offset=offset,
            with_payload=payload if isinstance(payload, bool) else list(payload),
            with_vectors=vectors,
        )

    def stored_chunks(self, doc_ids: Collection[str] | None = None) -> dict[str, StoredChunk]:
        out: dict[str, StoredChunk] = {}
        for batch in doc_id_batches(doc_ids):
            out.update(stored_chunks_from(self._scroll_page(HASH_FIELDS, batch), self._where()))
        return out

    def stored_owners(self) -> Iterator[tuple[str, str]]:
        return stored_owners_from(self._scroll_page(["doc_id"]), self._where())

    def documents(self) -> int:
        """A facet of the ``doc_id`` index of the version read (see :meth:`_documents_by_facet`); one without the
        index, or a server without facets, is scrolled. qdrant-client's local mode, which keeps no index, facets its
        points itself (exactly)."""
        physical = self._physical() or self.name
        if not isinstance(getattr(self.client, "_client", None), QdrantLocal):
            info = self._call("get_collection", self.client.get_collection, physical)
            if "doc_id" not in (info.payload_schema or {}):
                return super().documents()

        def facet(limit: int, exact: bool) -> list[qm.FacetValueHit]:
            return self._call("facet", self.client.facet, physical, key="doc_id", limit=limit, exact=exact).hits

        try:
            return self._documents_by_facet(facet, self._call("count", self.client.count, physical, exact=True).count)
        except StoreError as exc:  # a server from before facets (Qdrant 1.12)
            log.info("Qdrant at %s: no facet (%s): documents of %r counted by a scroll", self.location, exc, physical)
            return super().documents()

    def last_write(self) -> dt.datetime | None:
        """What :meth:`mark_written` recorded on the version read (None: written before this was recorded)."""
        physical = self._physical()
        if physical is None:
            return None
        info = self._call("get_collection", self.client.get_collection, physical)
        written = (info.config.metadata or {}).get(WRITTEN_KEY)
        try:
            return dt.datetime.fromisoformat(written) if isinstance(written, str) else None
        except ValueError:
            return None

    def mark_written(self) -> None:
        """Qdrant records no time of its own: the version's metadata keeps it. The write is done: a failure to
        record its time is a warning (``collections`` shows the time recorded before), not the write's."""
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        name = self._physical() or self.name
        try:
            self._call("update_collection", self.client.update_collection, name, metadata={WRITTEN_KEY: now})
        except StoreError as exc:
            log.warning("collection %r at %s: the time of this write was not recorded: %s", name, self.location, exc)

    def _where(self) -> str:
        return f"collection {self.name!r} at {self.location}"

    def count(self, filter: dict[str, Any] | None = None) -> int:
        """:meth:`QdrantStore.count`, exact (``exact=True``), retried on transient errors."""
        flt = _client_filter(filter, self._filter_indexes() if filter else {})
        return self._call("count", self.client.count, self.name, count_filter=flt, exact=True).count

    def _query_batch(self, plans: Sequence[QueryPlan]) -> list[list[StoredHit]]:
        indexes = self._filter_indexes() if any(p.filter for p in plans) else {}
        requests = [_client_request(p, indexes) for p in plans]
        responses = self._call("query_batch_points", self.client.query_batch_points, self.name, requests=requests)
        return [[_hit(p) for p in r.points] for r in responses]

    def points(self, ids: Sequence[str], with_dense_vectors: bool = False) -> dict[str, StoredHit]:
        not_one_string(ids, "points", "point ids")
        if not ids:
            return {}
        vectors = [DENSE] if with_dense_vectors else False
        records = self._call(
            "retrieve", self.client.retrieve, self.name, ids=list(ids), with_payload=True, with_vectors=vectors
        )
        return {h.id: h for h in map(_hit, records)}

    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """:meth:`QdrantStore.dense_vectors`, one retrieve request, retried on transient errors."""
        not_one_string(ids, "dense_vectors", "point ids")
        records = self._call(
            "retrieve", self.client.retrieve, self.name, ids=list(ids), with_payload=False, with_vectors=[DENSE]
        )
        return {str(r.id): np.asarray(r.vector[DENSE], dtype=np.float32) for r in records}

    def stored_vectors(self, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, SparseVec]]:
        not_one_string(ids, "stored_vectors", "point ids")
        if not ids:
            return {}
        records = self._call(
            "retrieve", self.client.retrieve, self.name, ids=list(ids), with_payload=False, with_vectors=[DENSE, SPARSE]
        )
        return {str(r.id): _vectors(r.vector) for r in records}


def _client_filter(spec: dict[str, Any] | None, indexes: dict[str, str]) -> qm.Filter | None:
    """qdrant-client's filter of ``spec`` on a collection with payload ``indexes`` (see :func:`filter_conditions`)."""
    groups = [[_client_condition(*test) for test in group] for group in filter_conditions(spec, indexes)]
    conditions = [group[0] if len(group) == 1 else qm.Filter(should=group) for group in groups]
    return qm.Filter(must=conditions) if conditions else None


def _client_condition(key: str, kind: str, value: Any) -> qm.Condition:
    if kind == "range":
        return qm.FieldCondition(key=key, range=qm.Range(**value))
    if kind == "datetime":
        return qm.FieldCondition(key=key, range=qm.DatetimeRange(**value))
    if kind == "any":
        return qm.FieldCondition(key=key, match=qm.MatchAny(any=value))
    if kind == "empty":
        return qm.IsEmptyCondition(is_empty=qm.PayloadField(key=key))
    return qm.FieldCondition(key=key, match=qm.MatchValue(value=value))


def _client_request(plan: QueryPlan, indexes: dict[str, str]) -> qm.QueryRequest:
    flt = _client_filter(plan.filter, indexes)
    with_vector = plan.vector_selector()
    channels = [
        (v.tolist() if name == DENSE else qm.SparseVector(indices=v.indices, values=v.values), name)
        for name, v in plan.channels()
    ]
    if len(channels) == 1:
        query, using = channels[0]
        return qm.QueryRequest(
            query=query,
            using=using,
            limit=plan.limit,
            filter=flt,
            with_payload=plan.payload_selector(),
            with_vector=with_vector,
        )
    fusion = (
        qm.RrfQuery(rrf=qm.Rrf(k=plan.rrf_k, weights=list(plan.weights) if plan.weights else None))
        if plan.fusion is FusionMethod.RRF
        else qm.FusionQuery(fusion=qm.Fusion.DBSF)
    )
    return qm.QueryRequest(
        prefetch=[qm.Prefetch(query=q, using=u, limit=plan.prefetch_k, filter=flt) for q, u in channels],
        query=fusion,
        filter=flt,
        limit=plan.limit,
        with_payload=plan.payload_selector(),
        with_vector=with_vector,
    )


def _vectors(vector: Any) -> tuple[np.ndarray, SparseVec]:
    sparse = vector[SPARSE]
    return np.asarray(vector[DENSE], dtype=np.float32), SparseVec(list(sparse.indices), list(sparse.values))


def _hit(point: qm.ScoredPoint | qm.Record) -> StoredHit:
    vector = point.vector.get(DENSE) if isinstance(point.vector, dict) else None
    return StoredHit.from_point(point, str(point.id), vector)
