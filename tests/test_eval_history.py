"""Evaluation history in SQLite, and the reports drawn from it."""

import sqlite3
import threading
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from evals.history import EvalHistory
from evals.metrics import LATENCY_P50, LATENCY_P95
from evals.report import markdown_table, metrics_table, plot_history, plot_latency, series_segments, with_scored

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def _fill(path):
    history = EvalHistory(path)
    for day, (bm25, hybrid) in enumerate([(0.61, 0.70), (0.62, 0.7312), (0.6234, 0.7456)]):
        when = T0 + timedelta(days=day)
        history.append("sample", "test", "bm25", {"ndcg@10": bm25, "recall@100": 0.9}, timestamp=when, source="cli")
        history.append(
            "sample",
            "test",
            "hybrid",
            {"ndcg@10": hybrid, "recall@100": 0.95},
            context={"dense_model": "all-MiniLM-L6-v2", "run_id": f"r{day}"},
            timestamp=when,
            source="dagster",
        )
    return history


def test_append_and_read_across_connections(tmp_path):
    path = tmp_path / "history" / "evals.sqlite"
    writer = EvalHistory(path)
    metrics = {"ndcg@10": 0.8, "mrr@10": 0.75}
    assert writer.append("sample", "test", "hybrid", metrics, {"run_id": "abc"}, source="benchmark") == 2
    df = EvalHistory(path).records()  # a second object, its own connection
    columns = ["id", "timestamp", "collection", "split", "variant", "metric", "value", "source", "context"]
    assert list(df.columns) == columns
    assert set(df["source"]) == {"benchmark"}
    assert sorted(zip(df["metric"], df["value"], strict=True)) == [("mrr@10", 0.75), ("ndcg@10", 0.8)]
    assert df["context"].tolist() == [{"run_id": "abc"}] * 2
    assert str(df["timestamp"].dt.tz) == "UTC"
    assert df["timestamp"].nunique() == 1  # one evaluation, one timestamp
    with sqlite3.connect(path) as conn:  # the file is plain SQLite for any other tool
        assert conn.execute("SELECT count(*) FROM evals WHERE variant = 'hybrid'").fetchone() == (2,)


def test_concurrent_appends_are_all_kept(tmp_path):
    path = tmp_path / "evals.sqlite"
    EvalHistory(path)

    def worker(n):
        history = EvalHistory(path)
        for i in range(25):
            history.append("sample", "test", f"v{n}", {"ndcg@10": i / 25, "recall@100": 1.0}, source="cli")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    df = EvalHistory(path).records()
    assert len(df) == 4 * 25 * 2
    assert df.groupby("variant").size().to_dict() == {f"v{n}": 50 for n in range(4)}


def test_records_filter_and_order(tmp_path):
    history = _fill(tmp_path / "h.sqlite")
    history.append("scifact", "test", "hybrid", {"ndcg@10": 0.7}, source="cli")
    hybrid = history.records(collection="sample", variant="hybrid")
    assert set(hybrid["variant"]) == {"hybrid"} and set(hybrid["collection"]) == {"sample"}
    assert hybrid["timestamp"].is_monotonic_increasing
    assert hybrid[hybrid["metric"] == "ndcg@10"]["value"].tolist() == [0.70, 0.7312, 0.7456]
    assert len(history.records(collection="scifact")) == 1
    assert history.records(variant="nope").empty
    assert set(history.records(source="dagster")["variant"]) == {"hybrid"}
    assert len(history.records(source="cli")) == 3 * 2 + 1


def test_source_is_required(tmp_path):
    history = EvalHistory(tmp_path / "h.sqlite")
    with pytest.raises(TypeError, match="source"):
        history.append("sample", "test", "x", {"ndcg@10": 0.5})
    with pytest.raises(ValueError, match="source"):
        history.append("sample", "test", "x", {"ndcg@10": 0.5}, source="")
    assert history.records().empty


def test_file_without_source_column_is_upgraded_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the schema before ``source`` existed, with rows of both writers
        conn.execute(
            "CREATE TABLE evals (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, collection TEXT NOT "
            "NULL, split TEXT NOT NULL, variant TEXT NOT NULL, metric TEXT NOT NULL, value REAL, context TEXT NOT "
            "NULL DEFAULT '{}')"
        )
        conn.executemany(
            "INSERT INTO evals (timestamp, collection, split, variant, metric, value, context) VALUES (?,?,?,?,?,?,?)",
            [
                (T0.isoformat(), "sample", "test", "hybrid", "ndcg@10", 0.7, '{"dagster_run_id": "r1"}'),
                (T0.isoformat(), "sample", "test", "hybrid", "ndcg@10", 0.71, '{"dense_model": "m"}'),
            ],
        )
    conn.close()
    history = EvalHistory(path)
    history.append("sample", "test", "hybrid", {"ndcg@10": 0.72}, source="cli")
    df = EvalHistory(path).records()  # opening again does not alter it twice
    assert df["value"].tolist() == [0.7, 0.71, 0.72]  # nothing lost
    assert df["source"].tolist() == ["dagster", "cli", "cli"]


def test_nan_is_stored_as_missing(tmp_path):
    history = EvalHistory(tmp_path / "h.sqlite")
    history.append("sample", "test", "x", {"latency_ms": float("nan")}, source="cli")
    assert history.records()["value"].isna().all()


def test_plot_history_writes_png(tmp_path):
    df = _fill(tmp_path / "h.sqlite").records()
    out = plot_history(df, tmp_path / "reports" / "ndcg.png", metric="ndcg@10")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000
    with pytest.raises(ValueError, match="map@100"):
        plot_history(df, tmp_path / "none.png", metric="map@100")


PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    """A PNG file's width and height (its IHDR chunk), after checking its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _timed(history: EvalHistory, collection: str, days: range) -> None:
    """Evaluations that recorded their search latency (as EvalReport.record does), one per day of ``days``."""
    for day in days:
        for variant, ms in (("bm25", 2.0), ("hybrid", 9.0)):
            history.append(
                collection,
                "test",
                variant,
                {"ndcg@10": 0.6, LATENCY_P50: ms + day, LATENCY_P95: 2 * ms + day},
                timestamp=T0 + timedelta(days=day),
                source="cli",
            )


def test_the_latency_plot_draws_p50_and_p95_per_corpus_and_skips_evaluations_without_latency(tmp_path):
    """Evaluations recorded before the history kept latency (``_fill``: no latency rows) still load and are left out
    of the latency plot: it is the very plot the timed evaluations alone give."""
    history = _fill(tmp_path / "h.sqlite")  # days 0-2: no latency
    with pytest.raises(ValueError, match=LATENCY_P50):
        plot_latency(history.records(), tmp_path / "none.png")
    for collection in ("sample", "nfcorpus"):
        _timed(history, collection, range(3, 6))
    df = history.records()
    out = plot_latency(df, tmp_path / "reports" / "latency.png")
    assert _png_size(out)[1] == 800  # two panels, p50 above p95 (wider than 800: the legend beside them)
    timed = plot_latency(df[df["metric"].isin([LATENCY_P50, LATENCY_P95])], tmp_path / "timed.png")
    assert out.read_bytes() == timed.read_bytes()  # the old rows drew nothing (no point, no axis range)
    with_old = plot_latency(df.assign(value=df["value"].where(df["metric"] != LATENCY_P95, 1.0)), tmp_path / "p.png")
    assert with_old.read_bytes() != out.read_bytes()  # the plot does show the figures it is given
    assert plot_history(df, tmp_path / "ndcg.png").is_file()  # the quality plot keeps the old rows


def test_eval_report_writes_the_latency_plot_when_the_history_has_latency(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from orchestration.cli import app

    monkeypatch.chdir(tmp_path)
    history = _fill(tmp_path / "h.sqlite")

    def report() -> tuple[str, str]:
        result = CliRunner().invoke(app, ["eval-report", "--history", "h.sqlite", "--out", "rep"])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
        return result.stdout, " ".join(result.stderr.split())

    table, said = report()  # an earlier release's evaluations only: no latency plot, and no error
    assert "latency plot: none, no evaluation in h.sqlite recorded its search latency" in said
    assert not (tmp_path / "rep" / "latency_ms.png").exists() and "latency" not in table
    width, height = _png_size(tmp_path / "rep" / "ndcg_at_10.png")
    assert width > 800 and height == 450  # the 8-inch panel and its legend beside it
    _timed(history, "sample", range(3, 5))
    slow = {LATENCY_P50: 12.3456, LATENCY_P95: 153.4567}  # ms: 1 decimal, none from 100 ms (was 12.3456, 153.4567)
    history.append("sample", "test", "rerank", slow, timestamp=T0 + timedelta(days=4), source="cli")
    table, said = report()
    assert "| 12.3 | 153 |" in table and "| 6.0 | 8.0 |" in table and "12.3456" not in table, table
    assert f"latency plot: {tmp_path / 'rep' / 'latency_ms.png'}" in said
    assert _png_size(tmp_path / "rep" / "latency_ms.png")[1] == 800
    assert f"| {LATENCY_P50} | {LATENCY_P95} |" in table.splitlines()[0]


def test_markdown_table_shows_latest_values(tmp_path):
    table = markdown_table(_fill(tmp_path / "h.sqlite").records())
    lines = table.splitlines()
    assert lines[0] == (
        "| collection | split | variant | version | state | queries | nDCG@10 | Recall@100 | last run (UTC) "
        "| index / query encoder / release | search settings |"
    )
    # no version, no query count, no index or encoder fingerprint, no release: recorded before the history kept them
    old = "| ? / ? / ? | shipped |"
    assert f"| sample | test | hybrid | - | published | ? | 0.7456 | 0.9500 | 2025-03-03 12:00 {old}" in lines
    assert f"| sample | test | bm25 | - | published | ? | 0.6234 | 0.9000 | 2025-03-03 12:00 {old}" in lines
    assert "0.7312" not in table and "0.7000" not in table  # older values are not shown


def test_metrics_table_renders_with_optional_latency():
    results = {
        "bm25": {"ndcg@10": 0.61, "recall@100": 0.9, "mrr@10": 0.58, "map@100": 0.55, "latency_ms": 3.2},
        "hybrid": {"ndcg@10": 0.72, "recall@100": 0.95, "mrr@10": 0.69, "map@100": 0.66},
    }
    table = metrics_table(results, title="sample / test")
    assert [c.header for c in table.columns] == [
        "variant",
        "nDCG@10",
        "Recall@100",
        "MRR@10",
        "MAP@100",
        "latency ms",
    ]
    console = Console(record=True, width=120)
    console.print(table)
    text = console.export_text()
    assert "0.7200" in text and "3.2" in text and "-" in text
    no_latency = metrics_table({"hybrid": results["hybrid"]})
    assert [c.header for c in no_latency.columns][-1] == "MAP@100"


def test_an_eval_report_shows_in_a_notebook_as_the_metrics_table_and_its_warnings():
    from evals.runner import EvalReport, VariantResult

    variants = {
        name: VariantResult(name, {"ndcg@10": ndcg, "recall@100": 0.9}, latency_ms={"p50": ms, "p95": ms})
        for name, ndcg, ms in [("dense", 0.61, 24.0), ("hybrid", 0.72, 153.2)]
    }
    report = EvalReport("<b>kb", "test", "<b>kb", 3, 21, variants, judged_coverage=0.5, warnings=["PREFETCH_K < 100"])
    shown = report._repr_html_()
    assert shown.startswith("<table><caption>&lt;b&gt;kb (test): 21 queries, version 3</caption><thead><tr>")
    assert "<th>nDCG@10</th>" in shown and "<th>latency ms</th>" in shown
    assert '<td style="text-align: right"><b>0.7200</b></td>' in shown and ">153<" in shown and "<b>24.0</b>" in shown
    assert "<p>warning: PREFETCH_K &lt; 100</p><p>warning: only 50.0% of the documents judged relevant" in shown


def test_plot_labels_collections_in_any_script_without_glyph_warnings(tmp_path):
    import warnings

    history = EvalHistory(tmp_path / "h.sqlite")
    for name in ("評価データ", "評価テスト", "café-é"):
        history.append(name, "test", "hybrid", {"ndcg@10": 0.5}, timestamp=T0, source="cli")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font(s)" would fail here
        assert plot_history(history.records(), tmp_path / "p.png").is_file()
    from evals.report import plot_fonts

    families, drawable = plot_fonts(["評価データ", "評価テスト", "café"])
    assert drawable("café") == "café"  # the default font has it
    labels = {drawable(n) for n in ("評価データ", "評価テスト")}
    assert len(labels) == 2  # told apart: drawn by an installed font that has the glyphs, else escaped
    if len(families) == 1:
        assert labels == {"\\u8a55\\u4fa1\\u30c7\\u30fc\\u30bf", "\\u8a55\\u4fa1\\u30c6\\u30b9\\u30c8"}


def _scored_history(path):
    """Version 1 evaluated on 100 queries, then on a 40-query subset (other qrels), the second time with part of
    the judged documents missing; an older row before them recorded neither."""
    history = EvalHistory(path)
    history.append("sf", "test", "hybrid", {"ndcg@10": 0.80}, {"version": 1}, timestamp=T0, source="cli")
    for day, (n, fingerprint, value, coverage) in enumerate(
        [(100, "aaaa", 0.8168, None), (100, "aaaa", 0.8170, None), (40, "bbbb", 0.8410, 0.623)], start=1
    ):
        context = {"version": 1, "n_queries": n, "qrels_fingerprint": fingerprint}
        context |= {"judged_coverage": coverage} if coverage else {}
        when = T0 + timedelta(days=day)
        history.append("sf", "test", "hybrid", {"ndcg@10": value}, context, timestamp=when, source="cli")
    return history


def test_the_table_says_how_many_queries_the_latest_figures_were_scored_on(tmp_path):
    lines = markdown_table(_scored_history(tmp_path / "h.sqlite").records()).splitlines()
    assert (
        "| sf | test | hybrid | 1 | published | 40, judged found 62.3% | 0.8410 | 2025-03-04 12:00 | ? / ? / ? "
        "| shipped |" in lines
    )


def test_the_plot_line_breaks_where_the_queries_or_qrels_change(tmp_path):
    df = _scored_history(tmp_path / "h.sqlite").records()
    rows = with_scored(df).sort_values("timestamp")
    parts = series_segments(rows)
    assert [p["value"].tolist() for p in parts] == [[0.80], [0.8168, 0.8170], [0.8410]]  # unknown, 100, 40 queries
    assert [p["queries"].iloc[0] for p in parts] == ["?", "100", "40, judged found 62.3%"]
    assert plot_history(df, tmp_path / "p.png").is_file()


def test_rows_of_an_earlier_release_join_the_line_of_the_first_rows_that_record_an_encoder(tmp_path):
    """Rows written before the history recorded the query encoder and the release (``?``) are not another series:
    upgrading breaks no line; a later change of the encoder still does."""
    history = EvalHistory(tmp_path / "h.sqlite")
    qrels = {"n_queries": 100, "qrels_fingerprint": "q1"}
    contexts = [
        qrels,
        qrels,
        {**qrels, "query_fingerprint": "enc1", "hybrid_rag_version": "0.1.0"},
        {**qrels, "query_fingerprint": "enc1", "hybrid_rag_version": "0.1.0"},
        {**qrels, "query_fingerprint": "enc2", "hybrid_rag_version": "0.1.0"},
    ]
    for day, context in enumerate(contexts):
        when = T0 + timedelta(days=day)
        history.append("sf", "test", "hybrid", {"ndcg@10": 0.8 + day / 100}, context, timestamp=when, source="cli")
    rows = with_scored(history.records()).sort_values("timestamp")
    assert [len(part) for part in series_segments(rows)] == [4, 1]


def test_a_refused_evaluation_accepted_later_is_marked_published_with_its_tolerance(tmp_path):
    """Without ``since``, only the rows of the evaluation whose verdict let the version through change; another
    refused evaluation of the same version stays refused, and marking again changes nothing."""
    history = EvalHistory(tmp_path / "h.sqlite")
    first, second = datetime(2026, 11, 30, 4, tzinfo=UTC), datetime(2026, 11, 30, 5, tzinfo=UTC)
    refused = {"qdrant_collection": "c", "version": 2, "published": False, "gate": "refused", "gate_tolerance": 0.02}
    for when in (first, second):
        history.append("c", "test", "hybrid", {"ndcg@10": 0.5, "mrr@10": 0.4}, refused, when, source="dagster")
    assert history.mark_published("c", "c", 2, accepted_at=second, tolerance=0.5) == 2
    assert history.mark_published("c", "c", 2, accepted_at=second, tolerance=0.5) == 0
    states = {
        (row.timestamp, row.metric): (row.context["published"], row.context["gate"], row.context["gate_tolerance"])
        for row in history.records().itertuples()
    }
    assert set(states.values()) == {(False, "refused", 0.02), (True, "passed", 0.5)}
    assert all(state == (True, "passed", 0.5) for (when, _), state in states.items() if when == second)


def test_publishing_marks_every_evaluation_of_the_version_since_it_was_staged(tmp_path):
    """``since`` (the staging run's start): a refused or unjudged evaluation of the version recorded since then is
    marked published (readers get the version), keeping its own verdict; one recorded before (a version number of an
    earlier index folder) and other versions stay as they were."""
    history = EvalHistory(tmp_path / "h.sqlite")
    staged = datetime(2026, 11, 30, 4, tzinfo=UTC)
    refused = {"qdrant_collection": "c", "version": 2, "published": False, "gate": "refused", "gate_tolerance": 0.02}
    unjudged = {"qdrant_collection": "c", "version": 2, "published": False}
    for when, context in (
        (staged - timedelta(days=3), refused),  # an earlier version 2, before the index folder was reset
        (staged + timedelta(minutes=1), refused),
        (staged + timedelta(minutes=2), unjudged),
        (staged + timedelta(minutes=3), {**refused, "version": 3}),
    ):
        history.append("c", "test", "hybrid", {"ndcg@10": 0.5}, context, when, source="dagster")
    assert history.mark_published("c", "c", 2, since=staged) == 2
    assert history.mark_published("c", "c", 2, since=staged) == 0
    rows = history.records()
    states = [(c["version"], c["published"], c.get("gate")) for c in rows["context"]]
    assert states == [(2, False, "refused"), (2, True, "refused"), (2, True, None), (3, False, "refused")]
    shown = [row.split(" | ")[3:5] for row in markdown_table(rows).splitlines() if " | hybrid | " in row]
    assert shown == [["2", "published"], ["3", "refused"]], shown


def test_publishing_marks_the_evaluations_of_the_same_points_by_other_runs(tmp_path):
    """``index`` (the published points' fingerprint): a run stopped before publishing evaluated the version that a
    later run reused (it staged nothing new, so ``since`` is the later run's start); that earlier refused evaluation
    of the same points is marked published too, keeping its verdict. Another build numbered 2 is left alone."""
    history = EvalHistory(tmp_path / "h.sqlite")
    restaged = datetime(2026, 11, 30, 4, tzinfo=UTC)
    refused = {"qdrant_collection": "c", "version": 2, "published": False, "gate": "refused"}
    refused["index_fingerprint"] = "9:a"
    for when, context in (
        (restaged - timedelta(hours=1), refused),  # the stopped run's evaluation of the points published now
        (restaged - timedelta(days=3), {**refused, "index_fingerprint": "7:b"}),  # other points, same number
    ):
        history.append("c", "test", "hybrid", {"ndcg@10": 0.5}, context, when, source="dagster")
    assert history.mark_published("c", "c", 2, since=restaged, index="9:a") == 1
    states = {c["index_fingerprint"]: (c["published"], c["gate"]) for c in history.records()["context"]}
    assert states == {"9:a": (True, "refused"), "7:b": (False, "refused")}


def test_repr_names_the_file(tmp_path, monkeypatch):
    """A notebook showed ``<evals.history.EvalHistory object at 0x...>``: which file (absolute, as resolved) is it?"""
    monkeypatch.chdir(tmp_path)
    history = EvalHistory("data/evals.sqlite")
    assert repr(history) == f"EvalHistory('{tmp_path / 'data' / 'evals.sqlite'}')"
