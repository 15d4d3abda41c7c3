"""Qdrant faults: transient server errors are retried, persistent ones fail clearly; embedded-engine faults too."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from retrieval import RetrievalSettings, RetrievalStack
from retrieval.store import EdgeStore, ServerStore, StoreError, connect, open_store
from retrieval.store.edge import _explain_open_error
from tests.conftest import LEXICAL_QUERY, TINY_DOCS

URL = "http://qdrant.test:6333"
REPO = Path(__file__).resolve().parents[1]


def http_error(status: int) -> UnexpectedResponse:
    return UnexpectedResponse(status, "error", b'{"status": {"error": "injected"}}', httpx.Headers())


def no_connection() -> ResponseHandlingException:
    return ResponseHandlingException(httpx.ConnectError("[Errno 111] Connection refused"))


def read_timeout() -> ResponseHandlingException:
    return ResponseHandlingException(httpx.ReadTimeout("timed out"))


class FlakyClient:
    """A real (local-mode) client whose methods named in ``faults`` raise the given errors first, then work."""

    def __init__(self, client: Any, **faults: list[Exception]):
        self._client = client
        self.faults = faults
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in self.faults:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if self.faults[name]:
                raise self.faults[name].pop(0)
            return attr(*args, **kwargs)

        return call


def flaky_store(retries: int, sleeps: list[float], **faults: list[Exception]) -> ServerStore:
    client = FlakyClient(connect(":memory:"), **faults)
    return ServerStore(client, "test", location=URL, retries=retries, backoff_s=0.1, sleep=sleeps.append)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> RetrievalSettings:
    return RetrievalSettings(
        qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="test", rerank=False
    )


def test_transient_faults_are_retried_with_backoff(settings, dense_encoder, sparse_encoder):
    sleeps: list[float] = []
    store = flaky_store(
        3,
        sleeps,
        upsert=[no_connection(), read_timeout()],
        query_batch_points=[http_error(503), http_error(429)],
        count=[http_error(500)],
    )
    report = (
        RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder)
        .indexer()
        .index(TINY_DOCS, progress=False)
    )
    assert report.points == len(TINY_DOCS)
    hits = (
        RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder)
        .retriever()
        .search(LEXICAL_QUERY[0])
    )
    assert hits[0].doc_id == LEXICAL_QUERY[1]
    assert sleeps == [0.1, 0.2, 0.1, 0.1, 0.2]  # upsert twice, count once, query twice: exponential per operation
    assert store.client.calls == {"upsert": 3, "count": 2, "query_batch_points": 3}


def test_persistent_fault_fails_naming_url_and_operation(settings, dense_encoder, sparse_encoder, caplog):
    sleeps: list[float] = []
    store = flaky_store(2, sleeps, query_batch_points=[http_error(500) for _ in range(10)])
    RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS, progress=False
    )
    retriever = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).retriever()
    with caplog.at_level(logging.WARNING), pytest.raises(StoreError) as info:
        retriever.search(LEXICAL_QUERY[0])
    message = str(info.value)
    assert URL in message and "query_batch_points" in message and "after 3 attempts" in message
    assert store.client.calls["query_batch_points"] == 3 and sleeps == [0.1, 0.2]
    assert caplog.text.count("retrying") == 2


def test_client_errors_are_not_retried(settings, dense_encoder, sparse_encoder):
    sleeps: list[float] = []
    store = flaky_store(4, sleeps, upsert=[http_error(400)], count=[http_error(401)])
    indexer = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    # a first build writes a staged version (test__v1), published when complete
    with pytest.raises(StoreError, match=r"qdrant\.test:6333: upsert on collection 'test__v1' was refused: HTTP 400"):
        indexer.index(TINY_DOCS, progress=False)
    with pytest.raises(StoreError, match="HYBRID_RAG_QDRANT_API_KEY"):
        store.count()
    assert store.client.calls == {"upsert": 1, "count": 1} and sleeps == []


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_unreachable_server_fails_naming_the_url():
    url = "http://127.0.0.1:1"  # nothing listens on port 1
    store = open_store(RetrievalSettings(qdrant_url=url, qdrant_timeout_s=1, qdrant_retries=1, collection="x"))
    with pytest.raises(StoreError, match=r"Qdrant at http://127\.0\.0\.1:1: count on collection 'x' failed after 2"):
        store.count()
    store.close()


HOLD = """
import sys
from retrieval.store import EdgeStore
store = EdgeStore(sys.argv[1], "test")
print(store.count(), flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_data_dir_locked_by_another_process(tmp_path, settings, dense_encoder, sparse_encoder, caplog):
    root = tmp_path / "index"
    store = EdgeStore(root, "test")
    indexer = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    indexer.index(TINY_DOCS, progress=False)
    store.close()  # this process lets go of the version (closing is final: what follows uses a new store)
    store = EdgeStore(root, "test")
    indexer = RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == str(len(TINY_DOCS))
        second = EdgeStore(root, "test")  # a second reading process gets a private view of the held version
        assert second.count() == len(TINY_DOCS) and len(list((root / "test__v1" / "views").iterdir())) == 1
        second.close()
        assert not list((root / "test__v1" / "views").iterdir())
        # a rebuild does not need the current version; it leaves it in place while the other process holds it
        with caplog.at_level(logging.INFO):
            indexer.rebuild(TINY_DOCS[:3], progress=False, allow_delete=True)  # 5 of 8 points go
        assert (root / "test__v1").is_dir() and "another process has it open" in caplog.text
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    store.cleanup()
    assert not (root / "test__v1").exists()
    assert store.count() == 3
    store.close()


def test_corrupted_data_dir_gives_a_clear_error(tmp_path, settings, dense_encoder, sparse_encoder):
    root = tmp_path / "index"
    store = EdgeStore(root, "test")
    RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS, progress=False
    )
    store.close()
    for path in (root / "test__v1" / "shard").rglob("*"):
        if path.is_file():
            with open(path, "r+b") as f:
                f.write(b"\xde\xad garbage \x00" * 64)
    retriever = RetrievalStack(
        settings, store=EdgeStore(root, "test"), dense=dense_encoder, sparse=sparse_encoder
    ).retriever()
    with pytest.raises(StoreError, match=r"test__v1/shard: it looks damaged or incomplete"):
        retriever.search(LEXICAL_QUERY[0])
    with pytest.raises(StoreError, match="damaged"):
        EdgeStore(root, "test").count()


@pytest.mark.parametrize(
    ("name", "expected"),
    [("test.current.json", "unreadable version pointer"), ("test__v1/schema.json", "unreadable collection schema")],
)
def test_garbage_in_small_files_gives_a_clear_error(tmp_path, settings, dense_encoder, sparse_encoder, name, expected):
    root = tmp_path / "index"
    store = EdgeStore(root, "test")
    RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS, progress=False
    )
    store.close()
    (root / name).write_text("{garbage")
    with pytest.raises(StoreError, match=expected):
        EdgeStore(root, "test").schema()


def test_a_write_that_cannot_start_its_writer_thread_is_one_error_and_loses_nothing(
    tmp_path, dense_encoder, sparse_encoder
):
    """A memory or thread limit (``ulimit -v``: a thread's stack cannot be mapped) stops ``index`` with a
    ``ResourceLimitError`` saying so, not a raw ``RuntimeError``; the published version keeps its documents
    and the next run finishes the job. The failure is real: new threads get a stack larger than can be mapped."""
    import threading

    from retrieval import Document
    from retrieval.errors import HybridRagError

    settings = RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="t")
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
        new = [Document("new", "Tardigrades survive the vacuum of space.")]
        previous = threading.stack_size(1 << 46)  # 64 TiB: pthread_create fails as under ulimit -v
        try:
            with pytest.raises(HybridRagError, match="indexing 't' stopped: cannot start a thread") as err:
                stack.indexer().index(new, progress=False)
        finally:
            threading.stack_size(previous)
        assert type(err.value).__name__ == "ResourceLimitError"  # the CLI: one line, exit code 2
        ids = {h.doc_id for h in stack.retriever(rerank=False).search("tardigrades space", k=10)}
        assert ids == {d.id for d in TINY_DOCS}
        stack.indexer().index(new, progress=False)
        assert stack.retriever(rerank=False).search("tardigrades space", k=1)[0].doc_id == "new"


OPEN_AS_READER = """
import sys
from retrieval.store import EdgeStore, StoreError
try:
    print(EdgeStore(sys.argv[1], "test").count())
except StoreError as exc:
    print(exc)
try:
    with EdgeStore(sys.argv[1], "test").write_lock():
        pass
except StoreError as exc:
    print(exc)
"""


def open_as_another_user(root: Path, script: str = OPEN_AS_READER) -> str:
    """What a reader without write access to ``root`` gets from ``script`` (as root: the user nobody, via setpriv)."""
    command = [sys.executable, "-c", script, str(root)]
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: no other user to open the index as")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(root.parent)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True).stdout


@pytest.fixture
def shared_dir():
    """A folder every user can enter (pytest's tmp_path is private to its owner)."""
    path = Path(tempfile.mkdtemp(prefix="hybrid-rag-shared-"))
    path.chmod(0o755)
    yield path
    subprocess.run(["chmod", "-R", "u+rwX", str(path)], check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("layout", ["read-only", "umask 077"])
def test_an_index_the_reader_cannot_write_or_read_is_reported_as_such_not_as_damaged(
    shared_dir, layout, dense_encoder, sparse_encoder
):
    root = shared_dir / "index"
    settings = RetrievalSettings(qdrant_path=root, cache_dir=shared_dir / "cache", collection="test", rerank=False)
    store = EdgeStore(root, "test")
    RetrievalStack(settings, store=store, dense=dense_encoder, sparse=sparse_encoder).indexer().index(
        TINY_DOCS, progress=False
    )
    store.close()
    mode = "go=rX" if layout == "read-only" else "go="  # an admin's read-only share; a writer under umask 077
    subprocess.run(["chmod", "-R", mode, str(root)], check=True)
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "u-w", str(root)], check=True)
    message = open_as_another_user(root)
    assert "permission denied" in message.lower() and "needs read and write access" in message
    assert str(root / ("test.current.json" if layout == "umask 077" else "test__v1/shard")) in message
    assert f"{root / 'test.write.lock'}: cannot open the write lock (Permission denied)" in message  # a writer
    assert "damaged or" not in message and "Rebuild" not in message
    if os.geteuid() == 0:  # nothing is damaged: its owner reads it
        owner = EdgeStore(root, "test")
        assert owner.count() == len(TINY_DOCS)
        owner.close()


def test_running_out_of_memory_while_opening_is_not_reported_as_damage(tmp_path):
    # the engine's text under `ulimit -v` (too low a limit to open reliably in a test: threads cannot start)
    engine = Exception(
        "Service runtime error: failed to load segment /x/segments/ea63: Service runtime error: Failed to open mmap "
        "payload storage: Cannot allocate memory (os error 12)"
    )
    message = _explain_open_error(tmp_path / "test__v1" / "shard", engine)
    assert "out of memory" in message and "ulimit -v" in message
    assert "damaged or" not in message and "Rebuild" not in message


LIST_AND_OPEN = """
import sys
from pathlib import Path
from retrieval import RetrievalSettings
from retrieval.store import EdgeStore, StoreError, collection_names, connect
print(collection_names(RetrievalSettings(qdrant_path=sys.argv[1], _env_file=None)))
local = f"file://{Path(sys.argv[1]) / 'local'}"
for opening in (lambda: EdgeStore(sys.argv[1], "test").count(), lambda: connect(local)):
    try:
        opening()
    except StoreError as exc:
        print(exc)
"""


def test_folders_the_user_cannot_read_are_one_line_each_not_a_traceback(
    shared_dir, dense_encoder, sparse_encoder, caplog
):
    """A collection's version folder another user made private (umask 077) and a qdrant-client local-mode folder
    the user cannot write: ``search``/``collections`` raised a bare PermissionError on ``schema.json``, and
    ``connect("file://...")`` one on qdrant-client's ``.lock``."""
    root = shared_dir / "index"
    settings = RetrievalSettings(qdrant_path=root, cache_dir=shared_dir / "cache", collection="test", rerank=False)
    with RetrievalStack(settings, dense=dense_encoder, sparse=sparse_encoder) as stack:
        stack.indexer().index(TINY_DOCS, progress=False)
    connect(f"file://{root / 'local'}").close()
    if os.geteuid() != 0:
        pytest.skip("needs another user: run as root (setpriv to nobody)")
    subprocess.run(["chmod", "go=", str(root / "test__v1")], check=True)
    subprocess.run(["chmod", "-R", "go=rX", str(root / "local")], check=True)
    lines = open_as_another_user(root, LIST_AND_OPEN).splitlines()
    assert lines[0] == "['test']"  # listed by its pointer; its unreadable version folder is no traceback
    assert lines[1].startswith(f"{root / 'test__v1' / 'schema.json'}: cannot read it (Permission denied)")
    assert lines[2].startswith(f"Qdrant local-mode folder {root / 'local'}: Permission denied")
    assert "needs read and write access" in lines[1] and "needs read and write access" in lines[2]


@pytest.mark.slow
def test_a_write_into_an_index_on_a_read_only_filesystem_is_one_line_naming_the_lock(tmp_path):
    """The index folder's filesystem mounted read-only under a service: a writer (another process's
    ``hybrid-rag index``) failed with a bare OSError traceback on ``<name>.write.lock`` (EROFS is no
    PermissionError); now one StoreError line naming the file and what the user needs."""
    root = tmp_path / "index"
    root.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(root), str(root)], capture_output=True, check=False)
    if mounted.returncode:
        pytest.skip(f"cannot bind-mount here (needs root): {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
        with pytest.raises(StoreError) as caught, EdgeStore(root, "test").write_lock():
            pass
    finally:
        subprocess.run(["umount", str(root)], check=True)
    message = str(caught.value)
    assert message.startswith(f"{root / 'test.write.lock'}: cannot open the write lock (Read-only file system)")
    assert "needs read and write access" in message
