"""Small helpers for materialization metadata: markdown tables, previews, rates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg
import pyarrow as pa

MAX_LISTED = 20


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; cells are shortened and pipes escaped."""

    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 80 else text[:77] + "..."

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


PREVIEWS_OFF = dg.MetadataValue.md("off for this corpus (previews: false in the corpora file)")


def preview(table: pa.Table, columns: Sequence[str], n: int = 5, *, shown: bool = True) -> dg.MetadataValue:
    """The first ``n`` rows of ``columns`` as a markdown table (``shown`` False: :data:`PREVIEWS_OFF`)."""
    if not shown:
        return PREVIEWS_OFF
    head = table.select(list(columns)).slice(0, n).to_pylist()
    return dg.MetadataValue.md(md_table(columns, ([r[c] for c in columns] for r in head)))


def listing(items: Sequence[Any], empty: str = "none") -> dg.MetadataValue:
    """A bullet list of at most :data:`MAX_LISTED` items (and how many more there are)."""
    if not items:
        return dg.MetadataValue.md(empty)
    lines = [f"- {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"- ... and {len(items) - MAX_LISTED} more")
    return dg.MetadataValue.md("\n".join(lines))


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 2) if seconds > 0 else 0.0
