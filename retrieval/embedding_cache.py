"""On-disk cache of dense vectors keyed by (encoder key, text hash), shared by every run on a machine.

The file is opened on first use (a search never touches it). It is only a cache: a damaged file (SQLite says
"malformed" or "not a database", on opening or on any later read or write) is set aside as
``embeddings.sqlite.damaged-<UTC time>`` with a warning and a fresh one takes its place; only when that fails too
does :class:`EmbeddingCacheError` name the file and the remedy.

Each row records when it was last used (written, or read when its mark was older than :data:`TOUCH_AFTER`), so
:meth:`EmbeddingCache.prune` (``hybrid-rag cache prune``) can bound the file. A file written before that column
existed gets it on first open, its rows counted as used then.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from retrieval.errors import HybridRagError, InvalidArgumentError
from retrieval.wording import counted

log = logging.getLogger(__name__)
T = TypeVar("T")
DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}  # the file's content is broken (not busy, not read-only)
KEY_DETAILS = ("backend", "prompt", "max_tokens", "fingerprint")  # recorded with a cache key (besides its label)
TOUCH_AFTER = 86_400  # seconds: a hit rewrites a row's last-used time only when it is older than this (a day)


class EmbeddingCacheError(HybridRagError):
    """The embedding cache file cannot be used; the message names it and the remedy."""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_damaged(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.DatabaseError) and getattr(exc, "sqlite_errorcode", None) in DAMAGED


@dataclass(frozen=True)
class ModelUsage:
    """The rows of one cache key (a dense model, its content, backend, prompt and token limit): ``label`` is the
    model name recorded with them, ``backend``, ``prompt``, ``max_tokens`` and ``fingerprint`` (the model's content)
    what else the key stands for (None: rows written before these were recorded); times are Unix seconds."""

    model: str
    label: str | None
    rows: int
    vector_bytes: int
    oldest_use: int
    newest_use: int
    backend: str | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class PruneReport:
    rows_deleted: int
    rows_left: int
    bytes_before: int
    bytes_after: int


class EmbeddingCache:
    """SQLite table of float32 vectors; safe to share between processes and threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._generation = 0  # bumped when a damaged file is set aside (or on close): every thread reconnects
        self._open: list[sqlite3.Connection] = []
        self._labelled: set[tuple[str, str]] = set()  # (key, model name) recorded by this process

    def _conn(self) -> sqlite3.Connection:
        held = getattr(self._local, "held", None)
        if held is not None and held[0] == self._generation:
            return held[1]
        if held is not None:
            held[1].close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # an unwritable or missing home (~/.cache), a read-only mount
            raise EmbeddingCacheError(self._problem(exc)) from exc
        conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)  # each used by one thread; closed by any
        self._local.held = (self._generation, conn)
        with self._lock:
            self._open.append(conn)
        conn.execute("PRAGMA journal_mode=WAL")
        self._ensure_schema(conn)
        return conn

    @staticmethod
    def _ensure_schema(conn: sqlite3.Connection) -> None:
        """Create the tables, or upgrade a file from before the ``used`` column in place (O(1): the column's
        default, the upgrade time, stands for its existing rows; nothing is rewritten)."""
        with conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS vectors (model TEXT, hash TEXT, vector BLOB, used INTEGER, "
                "PRIMARY KEY (model, hash))"
            )
            conn.execute("CREATE TABLE IF NOT EXISTS models (model TEXT PRIMARY KEY, label TEXT, details TEXT)")
        upgrades = [
            ("vectors", "used", f"INTEGER DEFAULT {int(time.time())}"),
            ("models", "details", "TEXT"),  # JSON: backend, prompt, max_tokens, fingerprint
        ]
        for table, column, kind in upgrades:
            if column in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                continue
            try:
                with conn:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as exc:  # another process upgraded it meanwhile
                if "duplicate column" not in str(exc):
                    raise

    def check_writable(self) -> None:
        """Raise :class:`EmbeddingCacheError` (naming the file and the settings) unless the cache can be written:
        its folder made, the file opened and a write lock taken (and given back; waits, like every write, for
        another process' write to end). Indexing calls it before loading models or staging anything."""

        def lock(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()

        self._use(lock)

    def close(self) -> None:
        """Close every thread's connection (the cache opens again on its next use)."""
        with self._lock:
            conns, self._open = self._open, []
            self._generation += 1
        for conn in conns:
            conn.close()

    def _use(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work(connection)``; a damaged file is set aside once and ``work`` runs again on a fresh one."""
        generation = self._generation
        try:
            return work(self._conn())
        except sqlite3.DatabaseError as exc:
            if not is_damaged(exc):
                raise EmbeddingCacheError(self._problem(exc)) from exc
            self._set_aside(generation, exc)
        try:
            return work(self._conn())
        except sqlite3.DatabaseError as exc:
            raise EmbeddingCacheError(self._problem(exc)) from exc

    def _set_aside(self, generation: int, exc: sqlite3.Error) -> None:
        with self._lock:
            if generation != self._generation:  # another thread already did
                return
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
            try:
                for suffix in ("", "-wal", "-shm"):  # the write-ahead log belongs to the damaged file
                    part = Path(f"{self.path}{suffix}")
                    if part.exists():
                        part.rename(f"{target}{suffix}")
            except OSError as err:
                raise EmbeddingCacheError(self._problem(exc, f"setting it aside failed: {err}")) from exc
            self._generation += 1
        log.warning("embedding cache %s is damaged (%s): set aside as %s, starting a fresh one", self.path, exc, target)

    def _problem(self, exc: Exception, more: str = "") -> str:
        """The message for a cache that cannot be used: a damaged file that could not be set aside can be deleted;
        anything else (permissions, a missing or read-only folder) needs another folder or no cache."""
        damaged = isinstance(exc, sqlite3.Error) and is_damaged(exc)
        remedy = (
            "it is only a cache: delete the file, or set HYBRID_RAG_EMBEDDING_CACHE=false"
            if damaged
            else "set HYBRID_RAG_CACHE_DIR to a folder this user can write, or HYBRID_RAG_EMBEDDING_CACHE=false to "
            "index without the cache"
        )
        return f"embedding cache {self.path.absolute()}: {exc}{'; ' + more if more else ''} ({remedy})"

    def get_many(self, model: str, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors of ``hashes``; rows whose last-used mark is older than :data:`TOUCH_AFTER` get it
        renewed (a write only then: most hits write nothing)."""
        now = int(time.time())

        def read(conn: sqlite3.Connection) -> dict[str, np.ndarray]:
            found: dict[str, np.ndarray] = {}
            stale: list[str] = []
            for start in range(0, len(hashes), 500):
                part = list(hashes[start : start + 500])
                marks = ",".join("?" * len(part))
                rows = conn.execute(
                    f"SELECT hash, vector, used FROM vectors WHERE model = ? AND hash IN ({marks})", [model, *part]
                )
                for h, blob, used in rows:
                    found[h] = np.frombuffer(blob, dtype=np.float32)
                    if used is None or used < now - TOUCH_AFTER:
                        stale.append(h)
            if stale:
                with conn:
                    conn.executemany(
                        "UPDATE vectors SET used = ? WHERE model = ? AND hash = ?", [(now, model, h) for h in stale]
                    )
            return found

        return self._use(read)

    def put_many(
        self, model: str, items: dict[str, np.ndarray], label: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        """Store ``items`` (hash: vector) under ``model``; ``label`` (the model's name) and ``details`` (backend,
        prompt, max_tokens, fingerprint) are recorded for the key."""
        now = int(time.time())
        rows = [(model, h, np.asarray(v, dtype=np.float32).tobytes(), now) for h, v in items.items()]

        def write(conn: sqlite3.Connection) -> None:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO vectors (model, hash, vector, used) VALUES (?, ?, ?, ?)", rows)
                if label is not None or details is not None:
                    _record_key(conn, model, label, details, replace=True)

        self._use(write)

    def usage(self) -> list[ModelUsage]:
        """Rows, vector bytes and last-used span per cache key, largest first."""

        def read(conn: sqlite3.Connection) -> list[ModelUsage]:
            rows = conn.execute(
                "SELECT v.model, m.label, COUNT(*), SUM(LENGTH(v.vector)), MIN(v.used), MAX(v.used), m.details "
                "FROM vectors v LEFT JOIN models m ON m.model = v.model GROUP BY v.model ORDER BY COUNT(*) DESC"
            ).fetchall()
            out = []
            for *row, details in rows:
                known = json.loads(details) if details else {}
                out.append(ModelUsage(*row, **{k: known.get(k) for k in KEY_DETAILS}))
            return out

        return self._use(read)

    def file_bytes(self) -> int:
        """The cache's size on disk: the database file and its write-ahead log."""
        return sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())

    def prune(
        self, older_than: float | None = None, model: str | None = None, backend: str | None = None
    ) -> PruneReport:
        """Delete the rows not used for ``older_than`` seconds (None: every row) of the cache keys matching
        ``model`` (a key or a recorded model name; None: every key) and ``backend`` (the dense backend recorded
        with the key; None: any), then shrink the file (``VACUUM``).

        Other processes may use the cache meanwhile: they wait for the deletion (SQLite's lock, up to a
        minute); a vector they miss is encoded again."""
        before = self.file_bytes()
        where, params = ["1"], []
        if older_than is not None:
            where.append("used < ?")
            params.append(int(time.time() - older_than))
        if model is not None:
            where.append("(model = ? OR model IN (SELECT model FROM models WHERE label = ?))")
            params += [model, model]
        if backend is not None:
            where.append("model IN (SELECT model FROM models WHERE json_extract(details, '$.backend') = ?)")
            params.append(backend)

        def delete(conn: sqlite3.Connection) -> tuple[int, int]:
            if model is not None:
                keys = {k for k, label in conn.execute("SELECT model, label FROM models") if model in (k, label)}
                keys |= {k for (k,) in conn.execute("SELECT DISTINCT model FROM vectors WHERE model = ?", (model,))}
                if not keys:
                    rows = conn.execute(
                        "SELECT DISTINCT v.model, m.label FROM vectors v LEFT JOIN models m USING (model)"
                    )
                    known = sorted(label or key for key, label in rows)
                    raise InvalidArgumentError(
                        f"no cache key or model name {model!r} in {self.path} "
                        f"(it holds: {', '.join(known) or 'nothing'})"
                    )
            if (
                backend is not None
                and not conn.execute(
                    "SELECT 1 FROM models WHERE json_extract(details, '$.backend') = ? LIMIT 1", (backend,)
                ).fetchone()
            ):
                unrecorded = conn.execute(
                    "SELECT count(DISTINCT v.model) FROM vectors v LEFT JOIN models m ON m.model = v.model "
                    "WHERE m.details IS NULL"
                ).fetchone()[0]
                keys = counted(unrecorded, "key")
                one = unrecorded == 1
                older = (
                    f" ({keys} written by an earlier release {'does' if one else 'do'} not record "
                    f"{'its' if one else 'their'} backend until next used: select {'it' if one else 'them'} with "
                    "--model KEY, see `hybrid-rag cache`)"
                    if unrecorded
                    else ""
                )
                raise InvalidArgumentError(f"no cache key of the dense backend {backend!r} in {self.path}{older}")
            with conn:
                deleted = conn.execute(f"DELETE FROM vectors WHERE {' AND '.join(where)}", params).rowcount
                conn.execute("DELETE FROM models WHERE model NOT IN (SELECT DISTINCT model FROM vectors)")
            if deleted:
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return deleted, conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

        deleted, left = self._use(delete)
        return PruneReport(deleted, left, before, self.file_bytes())

    def forget(self, hashes: Collection[str]) -> int:
        """Delete the rows of the text hashes ``hashes`` under every cache key (the texts of deleted documents:
        another collection holding one of them encodes it again); their bytes are overwritten in the file
        (``secure_delete``) and its write-ahead log is truncated. Returns the rows deleted."""
        if not hashes:
            return 0
        ordered = sorted(hashes)

        def delete(conn: sqlite3.Connection) -> int:
            conn.execute("PRAGMA secure_delete = ON")
            deleted = 0
            with conn:
                for start in range(0, len(ordered), 500):
                    part = ordered[start : start + 500]
                    marks = ",".join("?" * len(part))
                    deleted += conn.execute(f"DELETE FROM vectors WHERE hash IN ({marks})", part).rowcount
            if deleted:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return deleted

        return self._use(delete)

    def encode_through(
        self,
        model: str,
        texts: Sequence[str],
        encode: Callable[[list[str]], np.ndarray],
        label: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, int]:
        """Vectors for ``texts``: cached ones reused, the rest encoded and stored (with ``label``, the model's
        name, and ``details``, what else the key stands for, recorded for the key). Returns (vectors, reused)."""
        if not texts:
            return encode([]), 0
        hashes = [text_hash(t) for t in texts]
        cached = self.get_many(model, sorted(set(hashes)))
        if (label is not None or details is not None) and (model, label) not in self._labelled:
            # an earlier release's rows carry no name, nor details
            self._use(lambda conn: _record_key(conn, model, label, details))
            self._labelled.add((model, label))
        missing = sorted({h: t for h, t in zip(hashes, texts, strict=True) if h not in cached}.items())
        if missing:
            fresh = encode([t for _, t in missing])
            new = {h: v for (h, _), v in zip(missing, fresh, strict=True)}
            self.put_many(model, new, label, details)
            cached.update(new)
        missing_hashes = {h for h, _ in missing}
        reused = sum(1 for h in hashes if h not in missing_hashes)
        return np.stack([cached[h] for h in hashes]), reused


def embedded_text_hashes(title: str, text: str) -> set[str]:
    """The text hashes a stored chunk (``title``, ``text``) may have been embedded under (see
    :attr:`~retrieval.chunking.Chunk.embed_text`): its title, or a head of a long title, then its text."""
    if not title:
        return {text_hash(text)}
    return {text_hash(f"{title[:end]}\n{text}") for end in range(1, len(title) + 1)}


def _record_key(
    conn: sqlite3.Connection, model: str, label: str | None, details: dict[str, Any] | None, replace: bool = False
) -> None:
    """Record ``label`` (the model's name) and ``details`` for the cache key ``model``: where none is recorded,
    or (``replace``) over the recorded ones."""
    text = json.dumps(details, sort_keys=True) if details is not None else None
    keep = "COALESCE(excluded.{0}, {0})" if replace else "COALESCE({0}, excluded.{0})"
    with conn:
        conn.execute(
            "INSERT INTO models (model, label, details) VALUES (?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
            f"label = {keep.format('label')}, details = {keep.format('details')}",
            (model, label, text),
        )
