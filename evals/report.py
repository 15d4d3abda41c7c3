"""Reports over evaluation results: history plot (PNG), markdown table, rich console table, HTML table.

Plots are drawn on a bare :class:`~matplotlib.figure.Figure` with the Agg canvas, so nothing here touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path

import pandas as pd
from matplotlib import colormaps, font_manager, rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from rich.table import Table
from rich.text import Text

from evals.metrics import HEADLINE_METRICS, LATENCY_KEY, LATENCY_P50, LATENCY_P95

LABELS = {"ndcg@10": "nDCG@10", "recall@100": "Recall@100", "mrr@10": "MRR@10", "map@100": "MAP@100"}


PALETTE = colormaps["tab20"].colors  # 20 colours
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
EXPERIMENT_MARKER = "*"  # evaluations with other search settings: a filled star (no line's marker)


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


PUBLISHED, PASSED, STAGED, REFUSED = "published", "gate passed", "staged", "refused"  # see served_state()
SERVED = (PUBLISHED,)  # the state of the versions readers get: the line of the plot, the "latest" figures


def served_state(context: object) -> str:
    """What became of the evaluated version, from its history row's ``context``: ``published`` (readers were
    served it when it was evaluated, or it was published afterwards: ``published_index`` marks its rows; also
    every row recorded before the history kept ``published``), ``gate passed`` (a staged version the gate
    ``ndcg_not_dropped`` let through but that was not published: its publishing failed or is still to come),
    ``refused`` (a staged version the gate refused: never served) or ``staged`` (a staged version the gate did not
    judge: not published)."""
    if not isinstance(context, dict) or context.get("published", True):
        return PUBLISHED
    return {"passed": PASSED, "refused": REFUSED}.get(context.get("gate"), STAGED)


def with_state(df: pd.DataFrame) -> pd.DataFrame:
    """History rows with ``version`` (the evaluated index version, ``-`` when unknown) and ``state`` (see
    :func:`served_state`) taken from their ``context``."""
    contexts = list(df["context"]) if "context" in df else [None] * len(df)
    versions = [c.get("version") if isinstance(c, dict) else None for c in contexts]
    states = [served_state(c) for c in contexts]
    return df.assign(version=["-" if v is None else str(v) for v in versions], state=states)


SHIPPED = "shipped"  # the search settings of a row that are the shipped defaults (see search_settings())


def search_settings(context: object) -> str:
    """A history row's search settings: ``shipped`` when those it records are the shipped defaults (rows recorded
    without them too), else the ones that differ (``rrf_k=1, fusion=dbsf``; ``query_model=PATH`` when queries were
    embedded by a trained or adapted query encoder, not the dense model): an experiment, not the published figure."""
    from evals.runner import REPORTED_SETTINGS, shipped_search_settings

    if not isinstance(context, dict):
        return SHIPPED
    shipped = shipped_search_settings()
    differ = [f"{k}={context[k]}" for k in REPORTED_SETTINGS if k in context and context[k] != shipped[k]]
    query_model = context.get("query_model")  # a trained or corpus-adapted query encoder, else the dense model
    if query_model and query_model != context.get("dense_model", query_model):
        differ.append(f"query_model={query_model}")
    return ", ".join(differ) or SHIPPED


def with_settings(df: pd.DataFrame) -> pd.DataFrame:
    """History rows with ``settings`` (see :func:`search_settings`) taken from their ``context``."""
    contexts = list(df["context"]) if "context" in df else [None] * len(df)
    return df.assign(settings=[search_settings(c) for c in contexts])


# What else must stay the same for figures to join one line of the plot (the queries and qrels aside): the index
# searched may change along a line (that is the history the plot shows), the query encoder and the release not.
SERIES_IDENTITY_KEYS = ("query_fingerprint", "hybrid_rag_version")
UNKNOWN = "?"  # what a row recorded before the history kept it shows (its query count, its index fingerprint, ...)


def searched_by(context: object) -> str:
    """What searched a history row's figures, from its ``context``: the index fingerprint, the query encoder's
    fingerprint and the hybrid-rag release (:data:`~evals.runner.IDENTITY_KEYS`), ``?`` for each not recorded."""
    from evals.runner import IDENTITY_KEYS

    ctx = context if isinstance(context, dict) else {}
    return " / ".join(str(ctx.get(key) or UNKNOWN) for key in IDENTITY_KEYS)


def scored_set(context: object) -> tuple[str, tuple[str, ...]]:
    """What a history row was scored on, from its ``context``: the query count as shown (``?`` when not
    recorded; ``, judged found 62.3%`` added when only part of the judged documents were in the collection: the
    scores are capped) and its series: the ``qrels_fingerprint`` of the queries and qrels (else the query count,
    else ``?``), the query encoder's fingerprint and the release (:data:`SERIES_IDENTITY_KEYS`). Figures of
    different series are not comparable. The index's content is not part of it: following the figures as the index
    changes (documents added, edited, removed, rebuilt) is what the plot is for; the table shows it."""
    ctx = context if isinstance(context, dict) else {}
    n, fingerprint, coverage = ctx.get("n_queries"), ctx.get("qrels_fingerprint"), ctx.get("judged_coverage")
    shown = UNKNOWN if n is None else str(n)
    if isinstance(coverage, int | float) and coverage < 1:
        shown += f", judged found {coverage:.1%}"
    scored = str(fingerprint or (f"n={n}" if n is not None else UNKNOWN))
    return shown, (scored, *(str(ctx.get(key) or UNKNOWN) for key in SERIES_IDENTITY_KEYS))


def with_scored(df: pd.DataFrame) -> pd.DataFrame:
    """History rows with ``queries``, ``series`` (see :func:`scored_set`) and ``searched`` (see :func:`searched_by`)
    taken from their ``context``."""
    contexts = list(df["context"]) if "context" in df else [None] * len(df)
    scored = [scored_set(c) for c in contexts]
    searched = [searched_by(c) for c in contexts]
    return df.assign(queries=[q for q, _ in scored], series=[s for _, s in scored], searched=searched)


def series_segments(rows: pd.DataFrame) -> list[pd.DataFrame]:
    """``rows`` (one line of the plot, in time order) cut where their ``series`` changes: each part was scored on
    the same queries and qrels, with the same query encoder and release, and is drawn as a line of its own. An
    encoder or release a row does not record (``?``: rows of earlier releases) breaks nothing."""
    if rows.empty:
        return []
    parts: list[int] = []
    current: list[str] = []
    for scored, *identity in rows["series"]:
        if (
            not current
            or scored != current[0]
            or any(UNKNOWN not in (was, now) and was != now for was, now in zip(current[1:], identity, strict=True))
        ):
            current = [scored, *identity]
            parts.append(parts[-1] + 1 if parts else 0)
        else:  # a row of an earlier release records no encoder or release: it joins, and what it lacks is learnt
            current[1:] = [was if now == UNKNOWN else now for was, now in zip(current[1:], identity, strict=True)]
            parts.append(parts[-1])
    return [group for _, group in rows.groupby(parts, sort=True)]


def plot_history(df: pd.DataFrame, out_png: str | Path, metric: str = "ndcg@10") -> Path:
    """Plot ``metric`` over time from :meth:`EvalHistory.records` rows, one line per variant.

    The line joins the evaluations of the versions readers get (``published``) with the shipped search settings;
    those of staged versions that were never published (refused, unjudged, or passed but not published) are
    hollow markers (the line's) off the line; those made with other search settings (experiments) are filled
    stars. The line breaks where the queries or qrels scored, the query encoder or the release change
    (:func:`series_segments`): a dotted vertical line marks the change and the new part is labelled with its query
    count. A cross marks a figure scored while part of the judged
    documents was missing from the collection (capped). When the rows span several collections or splits, each
    line is labelled ``variant (collection/split)``.
    """
    return _plot(df, [metric], out_png, figsize=(8, 4.5))


TITLE_WIDTH = 80  # characters of a plot title's line: about the width of the 8-inch figure at matplotlib's 12 pt
LEGEND_ROW_PT = 14  # the height of a legend entry at the "small" font (10 pt): a line and its spacing
LATENCY_LABELS = {LATENCY_P50: "p50 search latency (ms)", LATENCY_P95: "p95 search latency (ms)"}


def plot_latency(df: pd.DataFrame, out_png: str | Path) -> Path:
    """Plot the p50 and p95 search latency (ms per query, its encoding included) of every evaluation over time from
    :meth:`EvalHistory.records` rows: one panel each, drawn as :func:`plot_history` draws a metric. Evaluations
    recorded before the history kept their latency have no such rows: they are left out (a ``ValueError`` when no
    row has it)."""
    return _plot(df, list(LATENCY_LABELS), out_png, figsize=(8, 8))


def _plot(df: pd.DataFrame, metrics: list[str], out_png: str | Path, figsize: tuple[float, float]) -> Path:
    """One panel per metric of ``metrics`` (one below the other, the first with the legend), saved as a PNG."""
    panels = [with_scored(with_settings(with_state(with_searched_collection(df[df["metric"] == m])))) for m in metrics]
    for metric, rows in zip(metrics, panels, strict=True):
        if rows.empty:
            raise ValueError(f"no history rows for metric {metric!r}")
    keys = ["collection", "split", "variant"]
    every = pd.concat(panels)
    several = every[["collection", "split"]].drop_duplicates().shape[0] > 1
    families, drawable = plot_fonts([str(x) for key in keys for x in every[key].unique()])
    with rc_context({"font.family": families}):
        fig = Figure(figsize=figsize, dpi=100)
        FigureCanvasAgg(fig)
        axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
        for i, (ax, metric, rows) in enumerate(zip(axes, metrics, panels, strict=True)):
            _draw(ax, rows.sort_values("timestamp"), keys, several, drawable, metric, legend=i == 0)
        for ax in axes[:-1]:
            ax.set_xlabel("")  # the panels share the time axis, labelled at the bottom
        legend = axes[0].get_legend()
        if legend is not None:  # on the right of the panels: the figure grows by its width, the panels keep theirs
            width = legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
            fig.set_size_inches(figsize[0] + width + 0.1, figsize[1])
        fig.tight_layout()
        out = Path(out_png)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    return out


def _draw(
    ax: Axes,
    rows: pd.DataFrame,
    keys: list[str],
    several: bool,
    drawable: Callable[[str], str],
    metric: str,
    *,
    legend: bool,
) -> None:
    changes: set[pd.Timestamp] = set()  # where a line's queries, qrels, query encoder or release change
    capped_shown = False
    for i, ((collection, split, variant), group) in enumerate(rows.groupby(keys, sort=True)):
        label = drawable(f"{variant} ({collection}/{split})" if several else str(variant))
        style = line_style(i)
        shipped = group["settings"] == SHIPPED
        served = group[group["state"].isin(SERVED) & shipped]
        off_line = (  # hollow: the variant's marker; experiments: a filled star, no variant's marker
            (group[~group["state"].isin(SERVED) & shipped], "staged, never served", style["marker"], "none"),
            (group[~shipped], "other search settings", EXPERIMENT_MARKER, style["color"]),
        )
        for j, part in enumerate(series_segments(served)):
            when = part["timestamp"].dt.tz_convert(None)
            ax.plot(when, part["value"], label=label if j == 0 else None, **style)
            if j > 0:
                changes.add(when.iloc[0])
                ax.annotate(
                    f"n={part['queries'].iloc[0].split(',')[0]}",
                    (when.iloc[0], part["value"].iloc[0]),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize="x-small",
                    color=style["color"],
                )
        capped = group[group["queries"].str.contains("judged found", regex=False)]
        if not capped.empty:
            ax.plot(
                capped["timestamp"].dt.tz_convert(None),
                capped["value"],
                linestyle="none",
                marker="x",
                markersize=10,
                color="black",
                label=None if capped_shown else "judged documents missing: capped",
            )
            capped_shown = True
        for other, why, marker, face in off_line:
            if not other.empty:
                ax.plot(
                    other["timestamp"].dt.tz_convert(None),
                    other["value"],
                    label=f"{label}: {why}",
                    linestyle="none",
                    marker=marker,
                    color=style["color"],
                    markerfacecolor=face,
                )
    for j, when in enumerate(sorted(changes)):
        first = "other queries, qrels, query encoder or release"
        ax.axvline(when, color="grey", linestyle=":", linewidth=1, label=None if j else first)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    collections = drawable(", ".join(sorted(rows["collection"].unique())))
    splits = drawable(", ".join(sorted(rows["split"].unique())))
    label = LABELS.get(metric) or LATENCY_LABELS.get(metric, metric)
    # wrapped: a title of several collections is wider than the figure, whose edges would cut it off
    ax.set_title(textwrap.fill(f"{label} over time: {collections} ({splits})", TITLE_WIDTH))
    ax.set_xlabel("time (UTC)")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    if legend:
        # beside the panel, never over a point (``loc="best"`` covered some with many lines), in columns enough to
        # stay within the panel's height (not beside the next panel's title); _plot widens the figure for it
        rows = max(1, int(ax.get_position().height * ax.figure.get_figheight() * 72 / LEGEND_ROW_PT))
        ncols = max(1, math.ceil(len(ax.get_legend_handles_labels()[1]) / rows))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0, fontsize="small", ncols=ncols)


def plot_fonts(texts: Iterable[str]) -> tuple[list[str], Callable[[str], str]]:
    """The font families to draw ``texts`` with (matplotlib's default, then installed fonts that have the
    characters it lacks: CJK collection names), and a function that writes each character no family has as its
    escape (``\\u718a``), so labels stay distinct and matplotlib warns of no missing glyph."""
    default = font_manager.FontProperties(fname=font_manager.findfont(font_manager.FontProperties())).get_name()
    families, missing = [default], {c for text in texts for c in text if not c.isascii()}
    if not missing:
        return families, str
    missing -= _glyphs().get(default, frozenset())
    for name, glyphs in _glyphs().items():
        if missing & glyphs:
            families.append(name)
            missing -= glyphs
    return families, lambda text: "".join(ascii(c)[1:-1] if c in missing else c for c in text)


@cache
def _glyphs() -> dict[str, frozenset[str]]:
    """The characters of each installed font family (not the Last Resort font: it draws every character as a
    box)."""
    found: dict[str, set[str]] = {}
    for font in font_manager.fontManager.ttflist:
        if font.name.startswith("Last Resort"):
            continue
        try:
            found.setdefault(font.name, set()).update(map(chr, FT2Font(font.fname).get_charmap()))
        except (OSError, RuntimeError):  # an unreadable font file draws nothing
            continue
    return {name: frozenset(chars) for name, chars in found.items()}


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The most recent value of every (collection, split, variant, metric) of a version readers get (state
    published or gate passed), plus, when newer, the most recent one of a refused or unjudged staged version
    (rows with a ``state``, see :func:`with_state`; without, simply the most recent); per search ``settings``
    where rows have them (see :func:`with_settings`)."""
    keys = ["collection", "split", "variant", "metric", *(["settings"] if "settings" in df else [])]
    ordered = df.sort_values(["timestamp", "id"] if "id" in df else ["timestamp"])
    newest = ordered.groupby(keys).tail(1)
    if "state" not in df:
        return newest
    served = ordered[ordered["state"].isin(SERVED)].groupby(keys).tail(1)
    return pd.concat([served, newest[~newest["state"].isin(SERVED)]])


def markdown_table(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """Latest value per variant (rows) and metric (columns) as a markdown table.

    History rows (with ``context``) get the evaluated ``version`` and its ``state`` (see :func:`latest`), the
    ``queries`` the shown figures were scored on (see :func:`scored_set`: ``?`` for rows recorded before the
    history kept it, the share of judged documents found when some were missing), and their search ``settings``
    in the last column (see :func:`search_settings`: rows with other settings than the shipped ones are separate
    rows), and before it what searched the shown figures (:func:`searched_by`). ``metrics`` defaults to the headline
    metrics present, then any others, in name order.
    """
    rows = with_searched_collection(df.dropna(subset=["value"]))
    keys = ["collection", "split", "variant"]
    if "context" in rows:
        rows = with_scored(with_settings(with_state(rows)))
        keys += ["version", "state", "settings"]
    last = latest(rows)
    queries = last.groupby(keys)["queries"].last() if "queries" in last else None
    searched = last.groupby(keys)["searched"].last() if "searched" in last else None
    present = set(last["metric"])
    if metrics is None:
        metrics = [m for m in HEADLINE_METRICS if m in present]
        metrics += sorted(present - set(metrics))
    wide = last.pivot_table(index=keys, columns="metric", values="value", aggfunc="last")
    when = last.groupby(keys)["timestamp"].max()
    shown = [k for k in keys if k != "settings"]  # the settings go last: they can be long
    n = ["queries"] if queries is not None else []
    by = ["index / query encoder / release"] if searched is not None else []
    header = [
        *shown,
        *n,
        *(LABELS.get(m, m) for m in metrics),
        "last run (UTC)",
        *by,
        *(["search settings"] * (shown != keys)),
    ]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * (len(shown) + len(n)) + "---:|" * len(metrics) + "---|" * (1 + len(by) + (shown != keys)),
    ]
    if last.empty:
        return "\n".join(lines)
    for key, row in wide.iterrows():
        cells = [_fmt_ms(row.get(m)) if m in LATENCY_METRICS else _fmt(row.get(m)) for m in metrics]
        stamp = when[key].strftime("%Y-%m-%d %H:%M")
        named = dict(zip(keys, map(str, key), strict=True))
        settings = [named["settings"]] if "settings" in named else []
        scored = [queries[key]] if queries is not None else []
        by_row = [searched[key]] if searched is not None else []
        lines.append("| " + " | ".join([*(named[k] for k in shown), *scored, *cells, stamp, *by_row, *settings]) + " |")
    return "\n".join(lines)


def metrics_table(results: Mapping[str, Mapping[str, float]], title: str | None = None) -> Table:
    """A console table: one row per variant, headline metrics, plus ``latency_ms`` when any has it.

    The best value of each metric column is shown in bold (lowest for latency).
    """
    columns, best = _table_columns(results)
    table = Table(title=title)
    table.add_column("variant", style="cyan", no_wrap=True)
    for column in columns:
        table.add_column(LABELS.get(column, "latency ms"), justify="right")
    for variant, values in results.items():
        cells = []
        for column in columns:
            value, text = values.get(column), _cell(column, values.get(column))
            cells.append(Text(text, style="bold") if value is not None and value == best.get(column) else text)
        table.add_row(variant, *cells)
    return table


def metrics_html(results: Mapping[str, Mapping[str, float]], caption: str | None = None) -> str:
    """:func:`metrics_table` as an HTML table, what a notebook shows of an :class:`~evals.runner.EvalReport`."""
    columns, best = _table_columns(results)
    head = "".join(f"<th>{LABELS.get(column, 'latency ms')}</th>" for column in columns)
    rows = []
    for variant, values in results.items():
        cells = []
        for column in columns:
            value, text = values.get(column), html.escape(_cell(column, values.get(column)))
            text = f"<b>{text}</b>" if value is not None and value == best.get(column) else text
            cells.append(f'<td style="text-align: right">{text}</td>')
        rows.append(f'<tr><td style="text-align: left">{html.escape(variant)}</td>{"".join(cells)}</tr>')
    title = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr><th>variant</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _table_columns(results: Mapping[str, Mapping[str, float]]) -> tuple[list[str], dict[str, float]]:
    """The headline metrics, plus ``latency_ms`` when any variant has it, and each column's best value."""
    columns = list(HEADLINE_METRICS)
    if any(LATENCY_KEY in values for values in results.values()):
        columns.append(LATENCY_KEY)
    best: dict[str, float] = {}
    for column in columns:
        values = [v[column] for v in results.values() if v.get(column) is not None]
        if values:
            best[column] = min(values) if column == LATENCY_KEY else max(values)
    return columns, best


def _cell(column: str, value: float | None) -> str:
    return _fmt_ms(value) if column == LATENCY_KEY else _fmt(value)


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or pd.isna(value):
        return "-"
    return f"{value:.{digits}f}"


LATENCY_METRICS = {LATENCY_KEY, LATENCY_P50, LATENCY_P95}


def _fmt_ms(value: float | None) -> str:
    """Milliseconds as a person reads them: ``3.2``, ``48.0``, ``153`` (no decimal from 100 ms)."""
    return _fmt(value, 0 if value is not None and value >= 100 else 1)
