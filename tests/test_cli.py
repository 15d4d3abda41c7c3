"""The hybrid-rag command line, end to end on the shipped sample collection."""

import gzip
import json
import re
import shutil

from typer.testing import CliRunner

from evals.collections import sample_collection
from evals.history import EvalHistory
from evals.runner import EvalReport
from evals.runs import read_run
from orchestration.cli import app
from tests.conftest import SHIPPED_ENCODING


def invoke(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def invoke_stdout(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def test_index_search_eval_round_trip(cli_env, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_HISTORY_PATH", str(cli_env / "configured" / "evals.sqlite"))
    sample = sample_collection()
    first = json.loads(invoke_stdout("index", str(sample.root), "--collection", "cli", "--json"))
    assert (first["collection"], first["documents"], first["skipped"]) == ("cli", 60, [])
    assert first["points"] == first["chunks"] == first["embedded"] >= 60
    again = json.loads(invoke_stdout("index", str(sample.root), "--collection", "cli", "--json"))
    assert (again["embedded"], again["deleted"]) == (0, 0)  # nothing re-embedded or rewritten
    assert again["unchanged"] == again["points"] == first["points"]
    assert "indexed into 'cli'" in invoke("index", str(sample.root), "--collection", "cli")  # the table

    hits = json.loads(invoke_stdout("search", "RFC 9110", "--collection", "cli", "--k", "3", "--json"))
    assert len(hits) == 3 and {"doc_id", "score", "dense_rank", "sparse_rank", "text"} <= set(hits[0])

    out = invoke(
        "eval",
        "sample",
        "--collection",
        "cli",
        "--variant",
        "hybrid",
        "--variant",
        "dense",
        "--run-file",
        "runs/dense.trec",
        "--json",
        "metrics.json",
    )
    assert "nDCG@10" in out
    report = EvalReport.from_summary(json.loads((cli_env / "metrics.json").read_text()))
    assert set(report.variants) == {"hybrid", "dense"} and 0.5 < report.variants["hybrid"].metrics["ndcg@10"] <= 1.0
    assert (report.collection, report.split, report.qdrant_collection) == ("sample", "test", "cli")
    assert report.version is not None and report.n_queries == len(sample.qrels("test"))
    assert report.settings["dense_model"] and report.variants["dense"].latency_ms["p50"] > 0
    # recorded in the configured history, as written by the CLI
    rows = EvalHistory(cli_env / "configured" / "evals.sqlite").records(collection="sample")
    ndcg = rows[rows["metric"] == "ndcg@10"].set_index("variant")["value"]
    assert ndcg.to_dict() == {v: r.metrics["ndcg@10"] for v, r in report.variants.items()}
    assert set(rows["source"]) == {"cli"} and not (cli_env / "data" / "history").exists()
    run, tag = read_run(cli_env / "runs" / "dense.trec")
    assert tag == "hybrid-rag-dense" and set(run) == set(sample.split_queries("test"))

    assert "hybrid_not_below_channels" not in out  # sparse was not evaluated: nothing to say
    every = invoke("eval", "sample", "--collection", "cli")  # all variants: fusion and reranking are checked
    assert re.search(r"hybrid_not_below_channels: (ok|warning) hybrid ndcg@10 0\.\d{4} vs (dense|sparse) ", every)
    assert re.search(r"reranking_does_not_hurt: (ok|warning) hybrid\+rerank ndcg@10 0\.\d{4} vs hybrid ", every)

    invoke("eval", "sample", "--collection", "cli", "--variant", "hybrid", "--run-file", "runs/hybrid.trec")
    compared = invoke("compare", "runs/dense.trec", "runs/hybrid.trec", "sample")
    assert "| dense.trec | hybrid.trec |" in compared and "W/L/T" in compared and "ndcg@10" in compared

    report = invoke("eval-report", "--out", "reports")
    assert "hybrid" in report
    assert (cli_env / "reports" / "ndcg_at_10.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_indexes_a_missing_collection_first(cli_env):
    """From a corpus.jsonl that is a gzip-compressed JSON array lacking a judged document: `eval` indexed it, then
    stopped at its ids ("corpus.jsonl:1: malformed JSON") to tell whether the corpus lacks the document."""
    nothing = CliRunner().invoke(app, ["collections", "--json"])  # no index folder yet: exit code 1, an empty list
    assert nothing.exit_code == 1 and json.loads(nothing.stdout) == []
    shutil.copytree(sample_collection().root, cli_env / "sample")
    corpus = cli_env / "sample" / "corpus.jsonl"
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    corpus.write_bytes(gzip.compress(json.dumps([r for r in records if r["_id"] != "astro-02"], indent=2).encode()))
    out = invoke("eval", str(cli_env / "sample"), "--collection", "fresh", "--variant", "sparse")
    assert "are not in the corpus file itself" in out
    assert "does not exist: indexing" in out
    [fresh] = json.loads(invoke_stdout("collections", "--json"))
    assert fresh["collection"] == "fresh" and fresh["points"] >= len(records) - 1
    # how its chunks were cut and encoded, as recorded (and refused to a write with other values)
    assert fresh["encoding"] == SHIPPED_ENCODING


def test_bad_input_exits_with_file_and_line(cli_env):
    bad = cli_env / "bad.jsonl"
    bad.write_text('{"_id": "a", "text": "ok"}\n{"_id": "b"\n')
    result = CliRunner().invoke(app, ["index", str(bad), "--collection", "bad"])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output and "malformed JSON" in result.output
