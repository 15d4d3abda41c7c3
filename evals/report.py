"""Reports over evaluation results: history plot (PNG), markdown table, rich console table.

Plots are drawn on a bare :class:`~matplotlib.figure.Figure` with the Agg canvas, so nothing here touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from rich.table import Table

from evals.metrics import HEADLINE_METRICS, LATENCY_KEY

LABELS = {"ndcg@10": "nDCG@10", "recall@100": "Recall@100", "mrr@10": "MRR@10", "map@100": "MAP@100"}


PALETTE = colormaps["tab20"].colors  # 20 colours
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def line_style(i: int) -> dict[str, object]:
    """The ``i``-th plot line's colour, line style and marker: no two of the first 80 lines share colour and
    line style, so every legend entry can be told apart."""
    return {
        "color": PALETTE[i % len(PALETTE)],
        "linestyle": LINE_STYLES[(i // len(PALETTE)) % len(LINE_STYLES)],
        "marker": MARKERS[i % len(MARKERS)],
    }


def with_searched_collection(df: pd.DataFrame) -> pd.DataFrame:
    """History rows whose searched Qdrant collection (``context["qdrant_collection"]``) differs from the evaluated
    collection get ``collection`` = ``"NAME (searched: OTHER)"``, so they are neither merged with nor taken for
    the figures of the collection built from NAME."""
    from evals.runner import searched_label

    if "context" not in df or df.empty:
        return df
    searched = [c.get("qdrant_collection") if isinstance(c, dict) else None for c in df["context"]]
    return df.assign(collection=[searched_label(c, s) for c, s in zip(df["collection"], searched, strict=True)])


def plot_history(df: pd.DataFrame, out_png: str | Path, metric: str = "ndcg@10") -> Path:
    """Plot ``metric`` over time from :meth:`EvalHistory.records` rows, one line per variant.

    When the rows span several collections or splits, each line is labelled ``variant (collection/split)``.
    """
    rows = with_searched_collection(df[df["metric"] == metric]).sort_values("timestamp")
    if rows.empty:
        raise ValueError(f"no history rows for metric {metric!r}")
    keys = ["collection", "split", "variant"]
    several = rows[["collection", "split"]].drop_duplicates().shape[0] > 1
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, ((collection, split, variant), group) in enumerate(rows.groupby(keys, sort=True)):
        label = f"{variant} ({collection}/{split})" if several else str(variant)
        ax.plot(group["timestamp"].dt.tz_convert(None), group["value"], label=label, **line_style(i))
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    collections = ", ".join(sorted(rows["collection"].unique()))
    splits = ", ".join(sorted(rows["split"].unique()))
    ax.set_title(f"{LABELS.get(metric, metric)} over time: {collections} ({splits})")
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(LABELS.get(metric, metric))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The most recent value of every (collection, split, variant, metric)."""
    keys = ["collection", "split", "variant", "metric"]
    return df.sort_values(["timestamp", "id"] if "id" in df else ["timestamp"]).groupby(keys).tail(1)


def markdown_table(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """Latest value per variant (rows) and metric (columns) as a markdown table.

    ``metrics`` defaults to the headline metrics present, then any others, in name order.
    """
    last = latest(with_searched_collection(df.dropna(subset=["value"])))
    present = set(last["metric"])
    if metrics is None:
        metrics = [m for m in HEADLINE_METRICS if m in present]
        metrics += sorted(present - set(metrics))
    wide = last.pivot_table(index=["collection", "split", "variant"], columns="metric", values="value", aggfunc="last")
    when = last.groupby(["collection", "split", "variant"])["timestamp"].max()
    header = ["collection", "split", "variant", *(LABELS.get(m, m) for m in metrics), "last run (UTC)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(metrics) + "---|"]
    if last.empty:
        return "\n".join(lines)
    for key, row in wide.iterrows():
        cells = [_fmt(row.get(m)) for m in metrics]
        stamp = when[key].strftime("%Y-%m-%d %H:%M")
        lines.append("| " + " | ".join([*map(str, key), *cells, stamp]) + " |")
    return "\n".join(lines)


def metrics_table(results: Mapping[str, Mapping[str, float]], title: str | None = None) -> Table:
    """A console table: one row per variant, headline metrics, plus ``latency_ms`` when any has it.

    The best value of each metric column is shown in bold (lowest for latency).
    """
    columns = list(HEADLINE_METRICS)
    if any(LATENCY_KEY in values for values in results.values()):
        columns.append(LATENCY_KEY)
    table = Table(title=title)
    table.add_column("variant", style="cyan", no_wrap=True)
    for column in columns:
        table.add_column(LABELS.get(column, "latency ms"), justify="right")
    best: dict[str, float] = {}
    for column in columns:
        values = [v[column] for v in results.values() if v.get(column) is not None]
        if values:
            best[column] = min(values) if column == LATENCY_KEY else max(values)
    for variant, values in results.items():
        cells = []
        for column in columns:
            value = values.get(column)
            text = _fmt(value, 1 if column == LATENCY_KEY else 4)
            cells.append(f"[bold]{text}[/bold]" if value is not None and value == best.get(column) else text)
        table.add_row(variant, *cells)
    return table


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.{digits}f}"
