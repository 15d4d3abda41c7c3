"""Durable evaluation history in a SQLite file, independent of any orchestrator.

One row per metric value: UTC ISO timestamp, collection, split, variant, metric, value, the ``source`` that
wrote it (``"cli"``, ``"dagster"``, ``"benchmark"``, ...) and a free-form JSON ``context`` (model names,
collection version, run id, ...). Every call opens its own connection with a busy timeout and writes in one
transaction, so several processes can append concurrently. A file written before ``source`` existed gets
the column on first open: its rows with a Dagster run id in their context become ``"dagster"``, the others
``"cli"`` (the only two writers then).

The CLI and the Dagster resource both default to :func:`default_history_path`. Rows are only ever appended, except
by :meth:`EvalHistory.forget` (``hybrid-rag drop --corpus``); :meth:`EvalHistory.mark_published` updates the state of
their version in ``context``.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from retrieval.errors import HybridRagError, InputFormatError, InputNotFoundError
from retrieval.settings import absolute_path

HISTORY_ENV = "HYBRID_RAG_HISTORY_PATH"
DEFAULT_HISTORY = "data/history/evals.sqlite"
COLUMNS = ["id", "timestamp", "collection", "split", "variant", "metric", "value", "source", "context"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS evals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    collection TEXT NOT NULL,
    split TEXT NOT NULL,
    variant TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    context TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL DEFAULT 'unknown'
);
CREATE INDEX IF NOT EXISTS evals_by_collection ON evals (collection, variant, timestamp);
"""
_ADD_SOURCE = """
ALTER TABLE evals ADD COLUMN source TEXT NOT NULL DEFAULT 'unknown';
UPDATE evals SET source = CASE WHEN context LIKE '%"dagster_run_id"%' THEN 'dagster' ELSE 'cli' END;
"""


def _stamp(when: datetime) -> str:
    """A row's ``timestamp`` column: UTC, ISO 8601 to the microsecond."""
    return when.astimezone(UTC).isoformat(timespec="microseconds")


class HistoryUnwritableError(HybridRagError):
    """The evaluation history cannot be written (permissions, a read-only folder); the message names the file's
    absolute path and the settings that move it."""


def default_history_path() -> Path:
    """``$HYBRID_RAG_HISTORY_PATH`` when set, else ``data/history/evals.sqlite`` (relative to the working dir)."""
    return Path(os.environ.get(HISTORY_ENV) or DEFAULT_HISTORY)


class EvalHistory:
    """Append-only store of evaluation results at ``path`` (created on first use; ``create=False``: it must exist,
    as for a report, which creates no file)."""

    def __init__(self, path: str | Path, timeout_s: float = 30.0, *, create: bool = True):
        self.path = absolute_path(path)  # once (a later os.chdir moves nothing); ~ also in .env, Dagster config
        self.timeout_s = timeout_s
        if not create and not self.path.is_file():
            raise InputNotFoundError(f"{self.path}: no evaluation history (no such file)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.executescript(_SCHEMA)
                if create:  # a writer: fails now, before an evaluation's work, not when its results are appended
                    conn.execute("BEGIN IMMEDIATE")
                    conn.rollback()
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):  # e.g. "file is not a database"
                raise InputFormatError(f"{self.path}: not an evaluation history ({exc})") from None
            raise HistoryUnwritableError(self._unwritable(exc)) from None
        except OSError as exc:  # a read-only working directory (the default path is relative), a missing folder
            raise HistoryUnwritableError(self._unwritable(exc)) from None
        self._add_source_column()

    def __repr__(self) -> str:
        return f"EvalHistory({str(self.path)!r})"

    def _unwritable(self, exc: Exception) -> str:
        return (
            f"evaluation history {self.path}: cannot write it ({exc}): give --history, or set "
            f"{HISTORY_ENV}, to a file in a folder this user can write"
        )

    def append(
        self,
        collection: str,
        split: str,
        variant: str,
        metrics: Mapping[str, float],
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
        *,
        source: str,
    ) -> int:
        """Store one evaluation (one row per metric, all with the same timestamp) written by ``source``;
        returns the row count."""
        if not source or not isinstance(source, str):
            raise ValueError(f"source must name the writer (e.g. 'cli', 'dagster'), got {source!r}")
        when = _stamp(timestamp or datetime.now(UTC))
        ctx = json.dumps(dict(context or {}), sort_keys=True, default=str)
        rows = []
        for metric, value in metrics.items():
            number = float(value)
            stored = None if math.isnan(number) else number
            rows.append((when, collection, split, variant, str(metric), stored, source, ctx))
        with self._connect() as conn:
            conn.executemany(
                "INSERT INTO evals (timestamp, collection, split, variant, metric, value, source, context) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def holds(self, collection: str, split: str, variant: str, timestamp: datetime, source: str) -> bool:
        """Whether rows of ``variant`` on ``collection``/``split`` written by ``source`` at ``timestamp`` are here
        (a report, which keeps its timestamp, recorded before)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT 1 FROM evals WHERE collection = ? AND split = ? AND variant = ? AND timestamp = ? "
                "AND source = ? LIMIT 1",
                (collection, split, variant, _stamp(timestamp), source),
            ).fetchone()
        return row is not None

    def mark_published(
        self,
        collection: str,
        qdrant_collection: str,
        version: int,
        *,
        accepted_at: datetime | None = None,
        tolerance: float | None = None,
        since: datetime | None = None,
        index: str | None = None,
    ) -> int:
        """Readers now get ``version`` of ``qdrant_collection``: the rows of ``collection`` that evaluated it while
        it was staged (context ``published`` false, gate passed) get ``published`` true; with ``since`` (when that
        version was staged), every row of it recorded since then, and with ``index`` (its points'
        ``index_fingerprint``), every row of it that searched those points, whoever recorded them (a run stopped
        before publishing the version a later run reused), whatever its gate's verdict, which it keeps
        (another evaluation refused it before it was accepted: the version is served all the same). ``accepted_at``:
        the timestamp of the evaluation whose gate verdict let it through, judged again with ``tolerance`` (the
        gate's ``ndcg_drop_tolerance``): its rows also get gate ``passed`` and ``gate_tolerance``, whatever verdict
        they were recorded with (a version refused, then accepted with a larger tolerance). Returns the rows
        marked."""
        where = (
            "collection = ? AND json_extract(context, '$.qdrant_collection') = ? "
            "AND json_extract(context, '$.version') = ?"
        )
        which, also = "json_extract(context, '$.gate') = 'passed'", []
        if since is not None:
            which, also = f"{which} OR timestamp >= ?", [*also, _stamp(since)]
        if index is not None:
            which, also = f"{which} OR json_extract(context, '$.index_fingerprint') = ?", [*also, index]
        marked = 0
        with self._connect() as conn:
            if accepted_at is not None:
                marked += conn.execute(
                    "UPDATE evals SET context = json_set(context, '$.published', json('true'), '$.gate', 'passed', "
                    f"'$.gate_tolerance', ?) WHERE {where} AND timestamp = ? "
                    "AND json_extract(context, '$.gate') IS NOT 'passed'",
                    (tolerance, collection, qdrant_collection, version, _stamp(accepted_at)),
                ).rowcount
            marked += conn.execute(
                f"UPDATE evals SET context = json_set(context, '$.published', json('true')) WHERE {where} "
                f"AND json_extract(context, '$.published') = 0 AND ({which})",
                (collection, qdrant_collection, version, *also),
            ).rowcount
        return marked

    def forget(self, ids: Iterable[int]) -> int:
        """Delete the rows ``ids`` (what ``hybrid-rag drop --corpus`` found of a corpus removed for good), then compact
        the file so that they do not stay readable in its free pages; returns the rows deleted."""
        with self._connect() as conn:
            deleted = conn.executemany("DELETE FROM evals WHERE id = ?", [(int(i),) for i in ids]).rowcount
        if deleted:
            with self._connect() as conn:
                conn.execute("VACUUM")
        return deleted

    def records(
        self, collection: str | None = None, variant: str | None = None, source: str | None = None
    ) -> pd.DataFrame:
        """All rows (optionally of one collection / variant / source), oldest first, as a DataFrame.

        ``timestamp`` is a UTC ``datetime64`` column and ``context`` holds the decoded dicts.
        """
        where, params = [], []
        for column, value in (("collection", collection), ("variant", variant), ("source", source)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM evals"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._connect() as conn:
            rows = conn.execute(sql + " ORDER BY timestamp, id", params).fetchall()
        df = pd.DataFrame(rows, columns=COLUMNS)
        df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601")
        df["value"] = df["value"].astype(float)
        df["context"] = [json.loads(c) for c in df["context"]]
        return df

    def _add_source_column(self) -> None:
        """Give a file written before ``source`` existed its column (once, whoever opens it first)."""
        with self._connect() as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(evals)")}
            if "source" in columns:
                return
            try:
                conn.executescript("BEGIN IMMEDIATE;" + _ADD_SOURCE + "COMMIT;")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits (or rolls back) on exit and is always closed."""
        conn = sqlite3.connect(self.path, timeout=self.timeout_s)
        try:
            with conn:
                yield conn
        finally:
            conn.close()
