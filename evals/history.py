"""Durable evaluation history in a SQLite file, independent of any orchestrator.

One row per metric value: UTC ISO timestamp, collection, split, variant, metric, value and a free-form
JSON ``context`` (model names, collection version, run id, ...). Every call opens its own connection
with a busy timeout and writes in one transaction, so several processes can append concurrently.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["id", "timestamp", "collection", "split", "variant", "metric", "value", "context"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS evals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    collection TEXT NOT NULL,
    split TEXT NOT NULL,
    variant TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    context TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS evals_by_collection ON evals (collection, variant, timestamp);
"""


class EvalHistory:
    """Append-only store of evaluation results at ``path`` (created on first use)."""

    def __init__(self, path: str | Path, timeout_s: float = 30.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def append(
        self,
        collection: str,
        split: str,
        variant: str,
        metrics: Mapping[str, float],
        context: Mapping[str, Any] | None = None,
        timestamp: datetime | None = None,
    ) -> int:
        """Store one evaluation (one row per metric, all with the same timestamp); returns the row count."""
        when = (timestamp or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="microseconds")
        ctx = json.dumps(dict(context or {}), sort_keys=True, default=str)
        rows = []
        for metric, value in metrics.items():
            number = float(value)
            stored = None if math.isnan(number) else number
            rows.append((when, collection, split, variant, str(metric), stored, ctx))
        with self._connect() as conn:
            conn.executemany(
                "INSERT INTO evals (timestamp, collection, split, variant, metric, value, context) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def records(self, collection: str | None = None, variant: str | None = None) -> pd.DataFrame:
        """All rows (optionally of one collection / variant), oldest first, as a DataFrame.

        ``timestamp`` is a UTC ``datetime64`` column and ``context`` holds the decoded dicts.
        """
        where, params = [], []
        for column, value in (("collection", collection), ("variant", variant)):
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

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection that commits (or rolls back) on exit and is always closed."""
        conn = sqlite3.connect(self.path, timeout=self.timeout_s)
        try:
            with conn:
                yield conn
        finally:
            conn.close()
