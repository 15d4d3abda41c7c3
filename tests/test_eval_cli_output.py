"""Evaluating the right collection, and the evaluation commands' output read by a program: `eval` against a
collection of another (or part of the) corpus, `compare` labels and judged queries, `eval-report` filters,
markdown that is never wrapped, distinguishable plot lines, the benchmarks' help."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import warnings
from importlib.metadata import version as package_version
from pathlib import Path

import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from typer.testing import CliRunner

from evals import report as report_module
from evals.collections import sample_collection
from evals.history import EvalHistory
from evals.metrics import LATENCY_P50, LATENCY_P95
from evals.report import series_segments, with_scored
from evals.runner import EvalReport, relevant_documents
from evals.runs import read_run, read_run_context
from orchestration.cli import app
from retrieval.errors import InvalidArgumentError
from retrieval.settings import RetrievalSettings
from tests.conftest import TINY_DOCS

README = Path(__file__).resolve().parents[1] / "README.md"


def cli(*args: str, code: int = 0):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result


def table_rows(text: str) -> list[str]:
    """The lines of ``text`` from the first markdown table row on that start with '|' (a wrapped row leaves
    a line not ending in '|', and its rest outside)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| "))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Collections `tiny` (another corpus), `half` (the first 30 of the sample's 60 documents) and `sample`,
    evaluated into history.sqlite: `half` (dense, hybrid: runs d.trec, h.trec, summary half.json; the result of
    one) and `sample` (every variant; its output kept)."""
    root = tmp_path_factory.mktemp("evalcli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYBRID_RAG_QDRANT_PATH", str(root / "index"))
        mp.setenv("HYBRID_RAG_CACHE_DIR", str(root / "cache"))
        mp.setenv("HYBRID_RAG_HISTORY_PATH", str(root / "history.sqlite"))
        mp.delenv("COLUMNS", raising=False)
        mp.chdir(root)
        (root / "tiny.jsonl").write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS))
        corpus = sample_collection().corpus_path.read_text().splitlines(keepends=True)
        (root / "half.jsonl").write_text("".join(corpus[:30]))
        cli("index", "tiny.jsonl", "-c", "tiny")
        cli("index", "half.jsonl", "-c", "half")
        cli("eval", "sample", "-c", "half", "--variant", "dense", "--run-file", "d.trec")
        half = cli("eval", "sample", "-c", "half", "--variant", "hybrid", "--variant", "dense", "--json", "half.json")
        cli("eval", "sample", "-c", "half", "--variant", "hybrid", "--run-file", "h.trec")
        full = cli("eval", "sample", "-c", "sample")
        yield root, half, full.output


def test_eval_refuses_a_collection_of_another_corpus(workspace) -> None:
    root, _, _ = workspace
    before = len(EvalHistory(root / "history.sqlite").records())
    result = cli("eval", "sample", "-c", "tiny", "--variant", "dense", code=2)
    assert "none of the" in result.output and "sample/test" in result.output and "'tiny'" in result.output
    assert len(EvalHistory(root / "history.sqlite").records()) == before  # nothing recorded


def test_a_partial_collection_is_scored_with_a_warning_that_is_recorded(workspace) -> None:
    root, half, _ = workspace
    qrels = sample_collection().qrels("test")
    indexed = {json.loads(line)["_id"] for line in (root / "half.jsonl").read_text().splitlines()}
    judged = relevant_documents(qrels)
    coverage = len(judged & indexed) / len(judged)
    assert 0 < coverage < 1
    said = " ".join(half.stderr.split())  # a warning: where a cron job or CI looks for one; the exit code is 0
    head = f"only {coverage:.1%} of the documents judged relevant (grade >= 1) in sample/test are in collection 'half'"
    assert head in said and f"only {coverage:.1%}" not in half.stdout
    assert (
        f"0.0% are not in the corpus file itself (the qrels judge documents it lacks), {1 - coverage:.1%} are" in said
    )
    report = EvalReport.from_summary(json.loads((root / "half.json").read_text()))
    assert report.judged_coverage == pytest.approx(coverage) and report.coverage_warning()
    rows = EvalHistory(root / "history.sqlite").records(collection="sample")
    searched = {c["qdrant_collection"]: c.get("judged_coverage") for c in rows["context"]}
    assert searched == {"half": round(coverage, 4), "sample": None}  # the full collection needs no warning


def test_eval_says_on_stderr_where_it_wrote_its_files(workspace) -> None:
    """stdout holds the table alone, as eval-report's does: the run file's path went there, as given (relative), and
    where the --json summary went was not said."""
    root, _, _ = workspace
    files = ("--run-file", "runs/d2.trec", "--json", "d2.json", "--history", str(root / "own.sqlite"))
    result = cli("eval", "sample", "-c", "half", "--variant", "dense", *files)
    assert result.stdout.rstrip("\n").splitlines()[-1].startswith("└"), result.stdout  # the table's last line
    said = " ".join(result.stderr.split())
    assert f"run file (dense): {root / 'runs' / 'd2.trec'}" in said and f"summary: {root / 'd2.json'}" in said


def test_eval_writes_every_variant_run_in_one_evaluation_with_a_variant_placeholder(workspace) -> None:
    """`--run-file 'runs/{variant}.trec'`: a run (and its context) per variant evaluated, from one evaluation (one
    set of history rows); a name without the placeholder keeps the last variant's alone."""
    root, _, _ = workspace
    own = root / "placeholder.sqlite"
    args = ("--variant", "dense", "--variant", "sparse", "--history", str(own))
    result = cli("eval", "sample", "-c", "half", *args, "--run-file", "each/{variant}.trec")
    said = " ".join(result.stderr.split())
    for name in ("dense", "sparse"):
        path = root / "each" / f"{name}.trec"
        assert f"run file ({name}): {path}" in said
        run, tag = read_run(path)
        assert tag == f"hybrid-rag-{name}" and run and read_run_context(path)["variant"] == name
    assert sorted(p.name for p in (root / "each").iterdir() if p.suffix == ".trec") == ["dense.trec", "sparse.trec"]
    assert EvalHistory(own).records()["timestamp"].nunique() == 1  # one evaluation
    compared = cli("compare", "each/dense.trec", "each/sparse.trec", "sample").stdout
    assert "| dense.trec | sparse.trec |" in compared


def test_eval_report_keeps_apart_what_each_collection_scored(workspace) -> None:
    root, _, _ = workspace
    result = cli("eval-report", "--out", "rep")
    out = result.stdout
    assert out.rstrip("\n").splitlines()[-1].startswith("|"), out  # the markdown alone; where it went: stderr
    said = " ".join(result.stderr.split())
    assert f"table: {root / 'rep' / 'latest.md'}" in said and f"plot: {root / 'rep' / 'ndcg_at_10.png'}" in said
    rows = table_rows(out)
    assert all(row.endswith("|") for row in rows), out  # one line per row
    hybrid = {row.split(" | ")[0].lstrip("| ") for row in rows if " | hybrid | " in row}
    assert hybrid == {"sample", "sample (searched: half)"}
    assert (root / "rep" / "latest.md").read_text() == "\n".join(rows)


def test_eval_report_collection_option(workspace) -> None:
    assert "every" in cli("eval-report", "--help").output
    result = cli("eval-report", "-c", "nosuch", "--out", "rep2", code=1)
    assert "no evaluations of collection 'nosuch'" in result.output and "recorded: sample" in result.output
    rows = table_rows(cli("eval-report", "-c", "sample", "--out", "rep2").stdout)
    assert len(rows) == 2 + 4 + 2  # header, rule; every variant on sample, dense and hybrid on half
    rows = table_rows(cli("eval-report", "-c", "half", "--out", "rep3").stdout)  # the collection searched
    assert len(rows) == 2 + 2 and all("sample (searched: half)" in row for row in rows[2:])


def test_eval_quality_check_lines_are_not_wrapped(workspace) -> None:
    _, _, full = workspace
    for name in ("hybrid_not_below_channels", "reranking_does_not_hurt"):
        (line,) = [line for line in full.splitlines() if line.startswith(name)]
        assert re.search(r"\(diff [-+]\d\.\d{4}, 95% CI \[.*\], p = [0-9.e-]+, \d+ queries[^)]*\): ", line), full


def test_compare_labels_runs_by_file_name_and_rows_are_lines(workspace) -> None:
    root, _, _ = workspace
    rows = table_rows(cli("compare", "d.trec", "h.trec", "sample").stdout)
    assert len(rows) == 4 and all(row.endswith("|") for row in rows)
    assert all(row.split(" | ")[1:3] == ["d.trec", "h.trec"] for row in rows[2:])

    lines = (root / "h.trec").read_text().splitlines(keepends=True)
    queries = sorted({line.split()[0] for line in lines})
    kept = set(queries[: len(queries) // 2])
    (root / "half.trec").write_text("".join(line for line in lines if line.split()[0] in kept))  # the same tag
    result = cli("compare", "h.trec", "half.trec", "sample")
    assert all(row.split(" | ")[1:3] == ["h.trec", "half.trec"] for row in table_rows(result.stdout)[2:])
    assert f"half.trec has results for {len(kept)} of the {len(queries)} queries judged in sample/test" in (
        result.output
    )


def test_compare_refuses_runs_without_a_judged_query(workspace) -> None:
    result = cli("compare", "d.trec", "h.trec", "sample", "--split", "train", code=2)
    assert "neither d.trec nor h.trec has results for a query judged in sample/train" in result.output
    root, _, _ = workspace
    (root / "none.trec").write_text("")
    result = cli("compare", "h.trec", "none.trec", "sample", code=2)  # one empty run is refused as well
    assert "none.trec has no results for a query judged" in result.output and "neither" not in result.output


def test_quality_checks_of_a_summary_say_what_is_missing(workspace) -> None:
    root, _, _ = workspace
    report = EvalReport.from_summary(json.loads((root / "half.json").read_text()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy "Mean of empty slice" on the way
        with pytest.raises(InvalidArgumentError, match="per-query values"):
            report.quality_checks()


def test_every_plot_line_is_distinguishable(tmp_path, monkeypatch) -> None:
    styles = [report_module.line_style(i) for i in range(80)]
    assert len({(s["color"], s["linestyle"]) for s in styles}) == 80
    drawn = []
    monkeypatch.setattr(report_module, "line_style", lambda i: drawn.append(i) or styles[i])
    stamp = pd.Timestamp("2026-11-30T04:00:00Z")
    df = pd.DataFrame(
        [
            {"timestamp": stamp, "collection": f"c{i}", "split": "test", "variant": "hybrid"}
            | {"metric": "ndcg@10", "value": 0.5}
            for i in range(12)
        ]
    )
    assert report_module.plot_history(df, tmp_path / "p.png").is_file()
    assert drawn == list(range(12))  # one style per line, more than matplotlib's 10-colour cycle


def test_settings_document_prefetch_k_and_rerank_depth() -> None:
    settings = README.read_text().split("### Settings", 1)[1].split("\n## ", 1)[0]
    assert "`RERANK_DEPTH`" in settings and "`max(PREFETCH_K, RERANK_DEPTH)`" in settings
    fields = RetrievalSettings.model_fields
    assert "rerank_depth" in fields["prefetch_k"].description and "prefetch_k" in fields["rerank_depth"].description


def test_vs_langchain_help_gives_the_settings_rrf_k(capsys) -> None:
    from benchmarks import vs_langchain

    with pytest.raises(SystemExit):
        vs_langchain.main(["--help"])
    default = RetrievalSettings.model_fields["rrf_k"].default
    assert f"(default: settings, {default})" in " ".join(capsys.readouterr().out.split())


def test_eval_lists_the_records_it_skipped_when_it_indexes(workspace, monkeypatch) -> None:
    root, _, _ = workspace
    source = sample_collection().corpus_path.parent
    bad = root / "badsample"
    (bad / "qrels").mkdir(parents=True)
    for name in ("queries.jsonl", "qrels/test.tsv"):
        (bad / name).write_text((source / name).read_text())
    lines = (source / "corpus.jsonl").read_text().splitlines(keepends=True)
    (bad / "corpus.jsonl").write_text("".join([*lines[:5], "{not json\n", *lines[5:]]))
    monkeypatch.setenv("HYBRID_RAG_BAD_INPUT_POLICY", "skip")
    result = cli("eval", str(bad), "-c", "badsample", "--variant", "dense")
    assert f"skipped {bad / 'corpus.jsonl'}:6: malformed JSON" in result.stderr, result.output
    assert "skipped" not in result.stdout


def test_main_job_output_is_not_wrapped_when_redirected() -> None:
    import io

    from rich.console import Console

    from orchestration.main_job import print_results

    detail = "hybrid ndcg@10: version 5 0.4611 vs published version 3 0.8125 (drop +0.3514, tolerance 0.02): refused"
    summary = {
        "corpus": "a-corpus-with-a-long-name",
        "collection": "a-collection-with-a-rather-long-name-too",
        "index": {"documents": 123456, "chunks": 234567, "written": 0, "unchanged": 234567, "points": 234567},
        "note": "no evaluation: " + "x" * 100,
        "checks": {"ndcg_not_dropped": {"passed": False, "severity": "ERROR", "description": detail}},
        "published": 3,
        "previous": 3,
        "run_id": "0123456789abcdef" * 4,
        "dagster_home": "/a/long/path/" * 8,
    }
    out = io.StringIO()
    print_results(summary, Console(file=out, width=80, force_terminal=False))
    text = out.getvalue()
    assert f"check ndcg_not_dropped: FAILED (ERROR): {detail}\n" in text, text
    assert "x" * 100 in text and f"(DAGSTER_HOME={'/a/long/path/' * 8})" in text
    assert "documents 123,456, chunks 234,567, " in text and "deleted -, points 234,567\n" in text  # not None


def test_eval_help_says_the_collection_is_the_folders_name() -> None:
    """eval and tune-reranker search the collection named after the BEIR folder, not the settings' collection."""
    for command in ("eval", "tune-reranker"):
        out = " ".join(CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output.split())
        assert "Collection name (default: the BEIR folder's name)" in out, out


def test_adapt_help_shows_the_max_negatives_default() -> None:
    out = CliRunner().invoke(app, ["adapt", "--help"], terminal_width=200).output
    assert "[default: 200000]" in out, out


def test_eval_report_and_plot_keep_refused_versions_apart_from_the_served_figures(tmp_path, monkeypatch) -> None:
    history = EvalHistory(tmp_path / "h.sqlite")
    stamp = pd.Timestamp("2026-11-30T04:00:00Z")
    rows = [  # (hours, version, context keys, ndcg@10): v2 recorded before the history kept published/gate
        (0, 2, {}, 0.80),
        (1, 3, {"published": False, "gate": "passed"}, 0.8125),  # published afterwards (published_index marks it)
        (2, 4, {"published": False, "gate": "refused"}, 0.50),
        (3, 5, {"published": False, "gate": "passed"}, 0.83),  # passed, never published (e.g. made stale)
        (4, 6, {"published": False, "gate": "refused"}, 0.4611),
    ]
    for hours, version, extra, value in rows:
        context = {"qdrant_collection": "bad", "version": version, **extra}
        when = (stamp + pd.Timedelta(hours=hours)).to_pydatetime()
        history.append("bad", "test", "hybrid", {"ndcg@10": value}, context, when, source="dagster")
    assert history.mark_published("bad", "bad", 3) == 1 and history.mark_published("bad", "bad", 4) == 0
    table = report_module.markdown_table(history.records())
    assert [row.split(" | ")[3:7] for row in table_rows(table)[2:]] == [
        ["3", "published", "?", "0.8125"],  # what readers are served (query count not recorded: ?)
        ["6", "refused", "?", "0.4611"],  # the newer evaluation, of a version never served
    ], table
    assert table.splitlines()[0].startswith("| collection | split | variant | version | state | queries | nDCG@10 |")

    figures = []
    monkeypatch.setattr(report_module, "Figure", lambda *a, **k: figures.append(Figure(*a, **k)) or figures[-1])
    report_module.plot_history(history.records(), tmp_path / "p.png")
    line, hollow = figures[0].axes[0].get_lines()
    assert list(line.get_ydata()) == [0.80, 0.8125] and line.get_linestyle() == "-"
    assert list(hollow.get_ydata()) == [0.50, 0.83, 0.4611] and hollow.get_linestyle() == "None"
    assert hollow.get_markerfacecolor() == "none" and "never served" in hollow.get_label()


def test_a_plot_of_several_collections_keeps_its_title_inside_the_figure(tmp_path, monkeypatch) -> None:
    """The title names every collection drawn: qrels folders evaluated against one collection (`eval DIR -c NAME`)
    made it wider than the figure, which cut it off on both sides."""
    history = EvalHistory(tmp_path / "h.sqlite")
    when = pd.Timestamp("2026-11-30T04:00:00Z").to_pydatetime()
    for name in ("graded_judgements", "judgements_with_missing_docs", "judgements_without_a_header", "fewer_queries"):
        history.append(name, "test", "hybrid", {"ndcg@10": 0.9}, {"qdrant_collection": "beir"}, when, source="cli")
    figures = []
    monkeypatch.setattr(report_module, "Figure", lambda *a, **k: figures.append(Figure(*a, **k)) or figures[-1])
    report_module.plot_history(history.records(), tmp_path / "p.png")
    title = figures[0].axes[0].title
    assert "judgements_without_a_header" in title.get_text()
    drawn = title.get_window_extent(figures[0].canvas.get_renderer())
    assert drawn.x0 >= 0 and drawn.x1 <= figures[0].bbox.x1, (drawn, figures[0].bbox)


@pytest.mark.parametrize("plot", ["plot_history", "plot_latency"])
def test_the_legend_of_many_lines_is_beside_the_panels_covering_no_point(tmp_path, monkeypatch, plot) -> None:
    """24 lines: the legend (``loc="best"`` inside the panel hid points) lies right of every panel, clear of their
    titles, inside the figure, and the panels keep their width."""
    history = EvalHistory(tmp_path / "h.sqlite")
    start = pd.Timestamp("2026-11-30T04:00:00Z")
    for c, variant, day in itertools.product(range(6), ("bm25", "dense", "hybrid", "hybrid+rerank"), range(3)):
        metrics = {"ndcg@10": 0.5 + 0.02 * c + 0.01 * day, LATENCY_P50: 3.0 + c, LATENCY_P95: 5.0 + c}
        when = (start + pd.Timedelta(days=day)).to_pydatetime()
        history.append(f"coll{c}", "test", variant, metrics, timestamp=when, source="cli")
    figures = []
    monkeypatch.setattr(report_module, "Figure", lambda *a, **k: figures.append(Figure(*a, **k)) or figures[-1])
    getattr(report_module, plot)(history.records(), tmp_path / "p.png")
    fig = figures[0]
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend()
    assert len(legend.get_texts()) == 24
    drawn = legend.get_window_extent(renderer)
    assert fig.bbox.x0 <= drawn.x0 and drawn.x1 <= fig.bbox.x1 and fig.bbox.y0 <= drawn.y0, (drawn, fig.bbox)
    for ax in fig.axes:
        assert not ax.bbox.overlaps(drawn) and drawn.x0 > ax.bbox.x1, (ax.bbox, drawn)
        assert not ax.title.get_window_extent(renderer).overlaps(drawn)
        assert ax.bbox.width > 600  # the 8-inch figure's panel, not squeezed by the legend


def test_eval_report_keeps_other_search_settings_apart_from_the_published_figures(tmp_path, monkeypatch) -> None:
    history = EvalHistory(tmp_path / "h.sqlite")
    stamp = pd.Timestamp("2026-11-30T04:00:00Z")
    shipped = {"fusion": "rrf", "rrf_k": 10, "zscore_fusion_above": 2.5}
    experiment = {"fusion": "dbsf", "rrf_k": 1, "zscore_fusion_above": None}  # the same published version
    for hours, settings, value in ((0, {}, 0.90), (1, shipped, 0.9215), (2, experiment, 0.9453)):
        context = {"qdrant_collection": "samp", "version": 1, **settings}  # the first: recorded without settings
        when = (stamp + pd.Timedelta(hours=hours)).to_pydatetime()
        history.append("samp", "test", "hybrid", {"ndcg@10": value}, context, when, source="cli")
    table = report_module.markdown_table(history.records())
    assert table.splitlines()[0].endswith(
        "| nDCG@10 | last run (UTC) | index / query encoder / release | search settings |"
    ), table
    assert [(row.split(" | ")[6], row.split(" | ")[-1]) for row in table_rows(table)[2:]] == [
        ("0.9453", "fusion=dbsf, rrf_k=1, zscore_fusion_above=None |"),  # an experiment, in a row of its own
        ("0.9215", "shipped |"),  # the published figure
    ], table

    figures = []
    monkeypatch.setattr(report_module, "Figure", lambda *a, **k: figures.append(Figure(*a, **k)) or figures[-1])
    report_module.plot_history(history.records(), tmp_path / "p.png")
    line, hollow = figures[0].axes[0].get_lines()
    assert list(line.get_ydata()) == [0.90, 0.9215] and list(hollow.get_ydata()) == [0.9453]
    assert "other search settings" in hollow.get_label()
    assert hollow.get_marker() == "*" and hollow.get_markerfacecolor() != "none"  # not a refused version's mark


def test_the_plot_tells_a_refused_version_from_an_experiment(tmp_path, monkeypatch) -> None:
    """A version the gate refused and an evaluation with other search settings: two legend entries that look
    different (marker and fill), so the plot says which point was a build never served."""
    history = EvalHistory(tmp_path / "h.sqlite")
    stamp = pd.Timestamp("2026-11-30T04:00:00Z")
    experiment = {"fusion": "dbsf", "rrf_k": 1, "zscore_fusion_above": None}
    rows = ((0, 1, {}, 0.90), (1, 2, {"published": False, "gate": "refused"}, 0.50), (2, 1, experiment, 0.95))
    for hours, version, extra, value in rows:
        context = {"qdrant_collection": "m", "version": version, **extra}
        when = (stamp + pd.Timedelta(hours=hours)).to_pydatetime()
        history.append("m", "test", "dense", {"ndcg@10": value}, context, when, source="dagster")
    figures = []
    monkeypatch.setattr(report_module, "Figure", lambda *a, **k: figures.append(Figure(*a, **k)) or figures[-1])
    report_module.plot_history(history.records(), tmp_path / "p.png")
    ax = figures[0].axes[0]
    by_label = {line.get_label(): line for line in ax.get_lines()}
    refused, other = by_label["dense: staged, never served"], by_label["dense: other search settings"]
    assert list(refused.get_ydata()) == [0.50] and list(other.get_ydata()) == [0.95]
    looks = [(line.get_marker(), str(line.get_markerfacecolor())) for line in (refused, other)]
    assert looks[0] != looks[1] and looks[0][1] == "none"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "dense: staged, never served" in legend and "dense: other search settings" in legend


def test_eval_report_keeps_another_query_encoder_off_the_published_line(tmp_path) -> None:
    """A trained (QUERY_MODEL) or corpus-adapted query encoder is an experiment, not the shipped search."""
    history = EvalHistory(tmp_path / "h.sqlite")
    stamp = pd.Timestamp("2026-11-30T04:00:00Z")
    models = {"dense_model": "all-MiniLM-L6-v2", "query_model": "all-MiniLM-L6-v2"}  # no query encoder of its own
    trained = {**models, "query_model": "models/edge/query-encoder"}
    for hours, context, value in ((0, models, 0.70), (1, trained, 0.79)):
        when = (stamp + pd.Timedelta(hours=hours)).to_pydatetime()
        history.append("edge", "test", "hybrid", {"ndcg@10": value}, context, when, source="cli")
    table = report_module.markdown_table(history.records())
    assert [(row.split(" | ")[6], row.split(" | ")[-1]) for row in table_rows(table)[2:]] == [
        ("0.7900", "query_model=models/edge/query-encoder |"),
        ("0.7000", "shipped |"),
    ], table


def test_eval_run_file_refuses_an_id_with_whitespace_before_recording(cli_env) -> None:
    """A TREC run cannot hold `doc seven` (the index can): one line naming it, exit 2, no file, no history row."""
    root = cli_env / "spaced"
    (root / "qrels").mkdir(parents=True)
    docs = [(d.id if d.id != "pasta" else "doc seven", d.text) for d in TINY_DOCS]
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in docs))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "boiling noodles in water"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("q1\tdoc seven\t1\n")
    out = ("--run-file", "r.trec", "--json", "r.json", "--history", "h.sqlite")
    result = cli("eval", str(root), "--variant", "sparse", *out, code=2)
    assert "'doc seven'" in result.output and "Traceback" not in result.output, result.output
    assert not any((cli_env / name).exists() for name in ("r.trec", "r.json"))
    history = cli_env / "h.sqlite"
    assert not history.exists() or EvalHistory(history).records().empty


def test_compare_flags_a_run_of_another_collection(workspace) -> None:
    """A run that covers the judged queries but retrieves another corpus' documents would score 0 in silence."""
    root, _, _ = workspace
    lines = [line.split() for line in (root / "h.trec").read_text().splitlines()]
    foreign = ["\t".join([q, z, f"other-{d}", r, s, t]) for q, z, d, r, s, t in lines]
    (root / "other.trec").write_text("\n".join(foreign) + "\n")
    result = cli("compare", "h.trec", "other.trec", "sample", code=2)
    assert "other.trec retrieves none of the 60 documents of sample's corpus" in " ".join(result.output.split())
    mostly = ["\t".join([q, z, d if r == "1" else f"other-{d}", r, s, t]) for q, z, d, r, s, t in lines]
    (root / "mostly.trec").write_text("\n".join(mostly) + "\n")
    said = " ".join(cli("compare", "h.trec", "mostly.trec", "sample").output.split())
    assert "of the documents mostly.trec retrieves are not in sample's corpus" in said
    assert "h.trec retrieves" not in said and "documents h.trec" not in said


def _judgements_folder(folder: Path, corpus: str | None = None) -> Path:
    """The sample's queries and qrels in ``folder`` (a folder corpora.yaml's `qrels:` takes), ``corpus`` as
    corpus.jsonl when given."""
    source = sample_collection().root
    (folder / "qrels").mkdir(parents=True)
    for name in ("queries.jsonl", "qrels/test.tsv"):
        (folder / name).write_text((source / name).read_text())
    if corpus is not None:
        (folder / "corpus.jsonl").write_text(corpus)
    return folder


def test_eval_of_a_corpus_file_without_documents_creates_no_collection(workspace) -> None:
    root, _, _ = workspace
    folder = _judgements_folder(root / "emptycorpus", corpus="")
    said = " ".join(cli("eval", str(folder), "--variant", "sparse", code=2).output.split())
    assert (  # as hybrid-rag index says it
        f"error: {folder / 'corpus.jsonl'}: no documents to index: it holds no JSON record; nothing was written: "
        "collection 'emptycorpus' was not created"
    ) in said
    assert "another corpus" not in said
    assert "emptycorpus" not in {c["collection"] for c in json.loads(cli("collections", "--json").stdout)}


def test_eval_of_a_corpus_file_of_bad_records_only_names_them_and_creates_no_collection(workspace, monkeypatch) -> None:
    root, _, _ = workspace
    folder = _judgements_folder(root / "badcorpus", corpus='{not json\n{"_id": "a"}\n')
    monkeypatch.setenv("HYBRID_RAG_BAD_INPUT_POLICY", "skip")
    said = " ".join(cli("eval", str(folder), "--variant", "sparse", code=2).output.split())
    assert (  # the indexer's refusal, not "holds no documents"
        f"error: {folder / 'corpus.jsonl'}: no documents to index: all 2 records skipped as bad input (malformed JSON"
    ) in said
    assert "'text': line 2); nothing was written: collection 'badcorpus' was not created" in said
    assert "badcorpus" not in {c["collection"] for c in json.loads(cli("collections", "--json").stdout)}


def test_eval_and_compare_take_a_folder_of_queries_and_qrels_without_a_corpus(workspace) -> None:
    """Judgements of a collection indexed from elsewhere (Markdown files, a JSONL file): no corpus.jsonl needed
    when the collection exists; an empty one is no corpus either."""
    root, _, _ = workspace
    folder = _judgements_folder(root / "judged")
    out = cli("eval", str(folder), "-c", "sample", "--variant", "sparse").output
    assert "│ sparse" in out and "warning" not in out, out
    said = " ".join(cli("eval", str(folder), "--variant", "sparse", code=2).output.split())
    assert f"collection 'judged' does not exist and {folder} has no corpus.jsonl to index it from" in said
    for corpus in (None, ""):
        if corpus is not None:
            (folder / "corpus.jsonl").write_text(corpus)
        result = cli("compare", "d.trec", "h.trec", str(folder))
        assert len(table_rows(result.stdout)) == 4 and "warning" not in result.output, result.output


def test_compare_warns_of_relevant_identical_ids_and_queries_without_relevant_documents(tmp_path) -> None:
    """A team numbering queries and documents from 1: BEIR's rule drops document 2 for query 2 (said, and scored
    on --keep-identical-ids); query 3 has no relevant document (said, scored 0 as pytrec_eval does)."""
    folder = tmp_path / "numbered"
    (folder / "qrels").mkdir(parents=True)
    queries = {"1": "first", "2": "second", "3": "third"}
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\t7\t1\n2\t2\t1\n3\t9\t0\n")
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"_id": str(d), "text": "x"}) + "\n" for d in range(1, 10)))
    run = {"1": ["7", "8"], "2": ["2", "5"], "3": ["9", "5"]}
    for name, docs_of in (("base.trec", run), ("cand.trec", {q: d[::-1] for q, d in run.items()})):
        lines = [f"{q} Q0 {d} {rank} {10 - rank} t" for q, docs in docs_of.items() for rank, d in enumerate(docs, 1)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    args = (str(tmp_path / "base.trec"), str(tmp_path / "cand.trec"), str(folder), "--metric", "recall@100")
    result = cli("compare", *args)
    said = " ".join(result.output.split())
    assert "1 relevant judgement pairs a query with the document of the same id (queries ['2'])" in said
    assert "1 of the 3 judged queries has no document judged relevant (grade >= 1), e.g. ['3']" in said
    assert "| 0.3333 | 0.3333 |" in result.stdout  # query 2's hit dropped on both sides
    kept = cli("compare", *args, "--keep-identical-ids")
    assert "same id" not in kept.output and "| 0.6667 | 0.6667 |" in kept.stdout


def test_compare_warns_when_the_qrels_judge_documents_the_corpus_file_lacks(tmp_path) -> None:
    """As `eval` does: documents judged relevant that no run can retrieve cap both runs' scores (compare said
    nothing of it before)."""
    folder = tmp_path / "mine"
    (folder / "qrels").mkdir(parents=True)
    (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": "b"}\n')
    (folder / "qrels" / "test.tsv").write_text("q1\td1\t1\nq1\tgone\t2\nq2\td2\t1\nq2\tgone-too\t0\n")
    (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n{"_id": "d2", "text": "y"}\n')
    (tmp_path / "r.trec").write_text("q1 Q0 d1 1 2 t\nq2 Q0 d2 1 2 t\n")
    result = cli("compare", str(tmp_path / "r.trec"), str(tmp_path / "r.trec"), str(folder))
    said = " ".join(result.output.split())
    assert (
        "warning: 33.3% of the documents judged relevant (grade >= 1) are not in mine's corpus file, e.g. ['gone']: "
        "no run can retrieve them, so both runs' scores are capped" in said
    )


def _contexts(history: Path) -> list[dict]:
    """The context of each ``eval``'s nDCG@10 row of hybrid in ``history``, oldest first."""
    rows = EvalHistory(history).records(variant="hybrid")
    return list(rows[rows["metric"] == "ndcg@10"]["context"])


def test_evaluations_of_other_contents_under_one_collection_name_and_version_are_told_apart(cli_env) -> None:
    """A collection dropped and built again from other documents starts again at version 1: the history rows record
    what the index held (its fingerprint): ``eval-report``'s table and ``compare`` tell them apart, while the plot
    keeps one line (an index changing over time is what it follows)."""
    history = cli_env / "h.sqlite"
    distractors = "".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS)
    (cli_env / "plus.jsonl").write_text(sample_collection().corpus_path.read_text() + distractors)
    cli("eval", "sample", "-c", "h", "--history", str(history), "--variant", "hybrid", "--run-file", "one.trec")
    cli("drop", "h", "--yes")
    cli("index", "plus.jsonl", "-c", "h")
    cli("eval", "sample", "-c", "h", "--history", str(history), "--variant", "hybrid", "--run-file", "two.trec")

    first, second = _contexts(history)
    assert (first["version"], first["qrels_fingerprint"]) == (second["version"], second["qrels_fingerprint"])
    assert first["index_fingerprint"].startswith("60:") and second["index_fingerprint"].startswith("68:")
    assert first["query_fingerprint"] == second["query_fingerprint"] == first["dense_fingerprint"]
    assert first["hybrid_rag_version"] == package_version("hybrid-rag")
    rows = with_scored(EvalHistory(history).records(variant="hybrid")).query("metric == 'ndcg@10'")
    assert len(series_segments(rows)) == 1  # the same queries, encoder and release: one line through the change
    table = table_rows(cli("eval-report", "--history", str(history), "--out", "r").output)
    assert second["index_fingerprint"] in table[2] and first["index_fingerprint"] not in "\n".join(table)
    compared = " ".join(cli("compare", "one.trec", "two.trec", "sample").output.split())
    assert "the runs come from other contexts (one.trec vs two.trec): index_fingerprint (" in compared
    assert f"({first['index_fingerprint']} vs {second['index_fingerprint']})" in compared
    assert "other contexts" not in cli("compare", "two.trec", "two.trec", "sample").output


def test_evaluations_with_a_query_encoder_retrained_into_the_same_folder_are_told_apart(cli_env, monkeypatch) -> None:
    """``query_model`` is a folder's name: the rows also record its content, which saving a retrained encoder in
    place changes."""
    from sentence_transformers import SentenceTransformer

    from retrieval.encoders.fingerprint import bundled_model_path

    history, encoder = cli_env / "h.sqlite", cli_env / "enc"
    shutil.copytree(bundled_model_path(), encoder)
    monkeypatch.setenv("HYBRID_RAG_QUERY_MODEL", str(encoder))
    cli("eval", "sample", "-c", "q", "--history", str(history), "--variant", "hybrid")
    model = SentenceTransformer(str(encoder), device="cpu")
    with torch.no_grad():
        next(model.parameters()).mul_(1.01)  # another training's weights, saved over the first
    model.save(str(encoder))
    cli("eval", "sample", "-c", "q", "--history", str(history), "--variant", "hybrid")

    first, second = _contexts(history)
    assert first["query_model"] == second["query_model"] == str(encoder)
    assert first["index_fingerprint"] == second["index_fingerprint"]  # the same index searched
    assert first["query_fingerprint"] != second["query_fingerprint"]
    rows = with_scored(EvalHistory(history).records(variant="hybrid")).query("metric == 'ndcg@10'")
    assert len(series_segments(rows)) == 2
