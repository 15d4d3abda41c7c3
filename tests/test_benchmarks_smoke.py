"""Every benchmark's main function runs end to end on a tiny size and returns sane figures."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import SCIFACT
from tests.test_dense_backends import onnx_cache_dir

pytestmark = pytest.mark.slow
needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"SciFact not found at {SCIFACT}")


@needs_scifact
def test_indexing_overhead(capsys):
    from benchmarks import indexing_overhead

    result = indexing_overhead.run(max_docs=5, rounds=1, data=str(SCIFACT))
    indexing_overhead.report(result)
    assert result["chunks"] >= 5 and result["rounds"][0]["points"] == result["chunks"]
    assert result["index_cps"] > 0 and result["encode_cps"] > 0 and 0 < result["ratio"] < 5
    assert result["profile"]["dense: one encode call"] > 0 and result["machine"]["device"] == "cpu"
    assert "Indexing overhead" in capsys.readouterr().out


@needs_scifact
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="optional dependency missing: onnxruntime")
def test_cpu_backends(capsys):
    from benchmarks import cpu_backends

    result = cpu_backends.run(
        backends=("torch", "onnx-int8"), texts=8, rounds=1, max_docs=16, data=str(SCIFACT), cache_dir=onnx_cache_dir()
    )
    cpu_backends.report(result)
    rows = result["rows"]
    assert set(rows) == {"torch", "onnx-int8"}
    assert all(r["docs_s"] > 0 for r in rows.values())
    assert rows["torch"]["speedup"] == pytest.approx(1.0)
    assert rows["onnx-int8"]["cos_min"] > 0.97
    assert 0 < rows["torch"]["ndcg@10"] <= 1 and abs(rows["onnx-int8"]["ndcg_delta"]) < 0.2
    assert "CPU dense backends" in capsys.readouterr().out


@needs_scifact
def test_search_latency(tmp_path, capsys):
    from benchmarks import search_latency

    result = search_latency.run(
        max_docs=16, queries=5, synthetic_points=2000, data=str(SCIFACT), cache_dir=str(tmp_path / "cache")
    )
    search_latency.report(result)
    for part in ("e2e", "hybrid", "synthetic"):
        assert result[part]["p50"] > 0 and result[part]["p95"] >= result[part]["p50"]
    assert result["synthetic_points"] == 2000 and result["points"] >= 16
    assert "Search latency" in capsys.readouterr().out


def test_scale(capsys):
    from benchmarks import scale

    result = scale.run(max_points=2000, queries=10)
    scale.report(result)
    (row,) = result["rows"]
    assert row["points"] == row["count"] == 2000
    assert row["upsert_pts_s"] > 0 and row["p50_ms"] > 0 and row["disk_mb"] > 0 and row["peak_rss_mb"] > 0
    assert scale.sizes_up_to(1_000_000) == [10_000, 100_000, 1_000_000]
    assert scale.sizes_up_to(150_000) == [10_000, 100_000, 150_000]
    assert "Embedded engine growth" in capsys.readouterr().out


@needs_scifact
@pytest.mark.skipif(importlib.util.find_spec("langchain_qdrant") is None, reason="optional: langchain-qdrant")
def test_vs_langchain(tmp_path, capsys):
    from benchmarks import vs_langchain

    result = vs_langchain.run(max_docs=16, queries=5, data=str(SCIFACT), cache_dir=str(tmp_path / "cache"))
    vs_langchain.report(result)
    assert result["ours_points"] == result["theirs_points"] == result["chunks"]
    assert result["ours_index_s"] > 0 and result["theirs_index_s"] > 0
    assert result["ours_ms"]["p50"] > 0 and result["theirs_ms"]["p50"] > 0
    assert 0 < result["ours_ndcg"] <= 1 and 0 < result["theirs_ndcg"] <= 1
    assert "vs LangChain" in capsys.readouterr().out


@needs_scifact
def test_vs_embedded_peers(tmp_path, capsys):
    from benchmarks import vs_embedded_peers

    peers = [p for p, module in (("lancedb", "lancedb"), ("milvus", "milvus_lite")) if importlib.util.find_spec(module)]
    result = vs_embedded_peers.run(
        ["scifact"], peers, max_docs=16, limit=4, cache_dir=str(tmp_path / "cache"), study_backends=()
    )
    vs_embedded_peers.report(result)
    (ds,) = result["datasets"]
    assert [r.name for r in ds["results"]][1:] == [vs_embedded_peers.PEERS[p].name for p in peers]
    for r in ds["results"]:
        assert r.build_s > 0 and len(r.e2e_ms) == len(r.engine_ms) == ds["queries"] == 4
        assert 0 < r.ndcg <= 1 and 0 < r.recall <= 1
    assert ds["breakdown_ms"] and ds["bare_ms"]["p50"] > 0
    assert len(result["study"]) == 2 and result["study"][0][1] > 0  # our encoder and the bare forward pass
    assert "where our time goes" in capsys.readouterr().out


@needs_scifact
def test_versions(tmp_path, capsys):
    """A no-op re-index keeps the version (nothing copied or published): the benchmark measures that path."""
    from benchmarks import versions

    versions.main(["--data", str(SCIFACT), "--max-docs", "5", "--rounds", "1", "--dir", str(tmp_path / "work")])
    out = " ".join(capsys.readouterr().out.split())
    assert "Embedded versions on 5 documents" in out and "no-op incremental index (diff only)" in out
    assert "second process: open through a view + count" in out


def test_long_query_windows(dense_encoder):
    """A query over one window is cut into windows of that many word pieces covering it, the last one ending at
    its end, and pooled to one unit vector; a query within one window keeps its own vector."""
    import numpy as np

    from benchmarks.long_query_windows import mean_pooled, query_windows, window_vectors

    tokenizer = dense_encoder.tokenizer
    long_query = " ".join(f"finding{i} of the trial on vitamin D and bone density" for i in range(30))
    n = len(tokenizer(long_query, add_special_tokens=False)["input_ids"])
    windows = query_windows(tokenizer, long_query, 128, 128)
    assert n > 256 and len(windows) == -(-n // 128)
    assert long_query.startswith(windows[0]) and long_query.endswith(windows[-1])
    assert all(len(tokenizer(w, add_special_tokens=False)["input_ids"]) == 128 for w in windows)
    short = "vitamin D and bone density"
    assert query_windows(tokenizer, short, 128, 128) == [short]
    vectors = window_vectors(dense_encoder, [long_query, short], 128, 128, "mean")
    assert [len(v) for v in vectors] == [len(windows), 1]
    pooled = mean_pooled(vectors)
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(pooled[1], dense_encoder.encode_query(short), atol=1e-5)
    assert float(pooled[0] @ dense_encoder.encode_query(windows[0])) < 0.9999  # not just the first window


def test_adapt_memory(tmp_path, capsys):
    from benchmarks import adapt_memory
    from evals.pseudo_queries import AdaptConfig

    config = AdaptConfig(max_queries=50, max_holdout=10, max_negatives=100)
    result = adapt_memory.run([600], config, str(tmp_path))
    adapt_memory.report(result)
    row = result["rows"][0]
    assert row["shipped"]["pool"] == row["every_id"]["pool"] == 2 * 60 + 100  # the targets' chunks and 100 others
    assert row["shipped"]["peak_mb"] > 0 and row["every_id"]["peak_mb"] > 0
    assert "sampling step" in capsys.readouterr().out


@needs_scifact
def test_incremental(tmp_path, capsys, monkeypatch):
    from benchmarks import incremental

    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    result = incremental.run([30], str(SCIFACT), str(tmp_path))
    incremental.report(result)
    rows = {r["operation"]: r for r in result["rows"]}
    assert rows["first build"]["chunked"] == 30 and rows["add one document"]["chunked"] == 1
    assert rows["add one document"]["read"] == 0 and rows["delete one document"]["read"] == 1
    assert rows["sync, nothing changed"]["chunked"] == 0
    assert (
        rows["sync, nothing changed"]["read"]
        == rows["sync, one document changed"]["read"]
        == rows["first build"]["points"]
    )
    assert "Incremental writes" in capsys.readouterr().out


@needs_scifact
def test_pipeline_memory(tmp_path, capsys):
    """Each command of a size runs in a process of its own and its peak is that process' own."""
    from benchmarks import pipeline_memory

    rows = pipeline_memory.main(["--sizes", "20", "--cache", str(tmp_path / "none.sqlite"), "--dir", str(tmp_path)])
    assert [r[1] for r in rows] == [
        "hybrid-rag index (first build)",
        "hybrid-rag run (first build)",
        "hybrid-rag run (nothing changed)",
    ]
    assert all(100 < r[2] < 8000 for r in rows)  # MiB: a Python process with torch loaded, not this process' peak
    assert [r[5] for r in rows] == [None, 20, 0]  # documents the chunks asset cut: none when nothing changed
    assert "Peak RSS of a build" in capsys.readouterr().out


@needs_scifact
def test_reader_reload(tmp_path, capsys):
    """The reader's first search after the write is measured on the new version (the write happened)."""
    from benchmarks import reader_reload

    rows = reader_reload.main(
        ["--sizes", "20", "--rounds", "1", "--cache", str(tmp_path / "no.sqlite"), "--dir", str(tmp_path)]
    )
    assert len(rows) == 1 and all(v > 0 for v in rows[0][2:])
    assert "first search after it" in capsys.readouterr().out


def test_eval_cost(tmp_path, capsys):
    """Each part of an evaluation is timed: one encoding pass, each judged query encoded once per channel, one
    top-up; the parts fit in the whole."""
    from benchmarks import eval_cost

    result = eval_cost.main(["--collections", "sample", "--index-dir", str(tmp_path)])
    r = result["collections"]["sample"]
    calls = {part: n for part, (_, _, n) in r["parts"].items()}
    assert calls["query encoding pass"] == calls[eval_cost.TOP_UP] == 1
    assert calls["dense query encoding"] == calls["BM25 query encoding"] == r["queries"]
    assert calls["per-query searches"] == 4 and calls["metrics (pytrec_eval)"] == 4
    outer = ("query encoding pass", "per-query searches", eval_cost.TOP_UP)
    assert 0 < sum(r["parts"][p][0] for p in outer) <= r["total"][0]
    assert "Where an evaluation's time goes: sample test" in capsys.readouterr().out


def test_erasure(capsys):
    from benchmarks import erasure

    result = erasure.run(sizes=(500,))
    erasure.report(result)
    (row,) = result["rows"]
    assert row["count"] == 499 and row["rewrite_s"] > 0 and row["copy_s"] > 0
    assert "An erasing delete" in capsys.readouterr().out


@needs_scifact
def test_score_signal(capsys):
    from benchmarks import score_signal

    result = score_signal.run(max_docs=60, max_queries=8)
    score_signal.report(result)
    assert result["queries"] >= 3 and result["distinct_scores"][1] <= result["queries"]
    kept = [r["relevant"] for r in result["rows"]]
    assert kept == sorted(kept, reverse=True) and kept[0] > 0  # a higher threshold keeps fewer relevant hits
    assert "Share of top-10 hits" in capsys.readouterr().out


def test_filtered_search(tmp_path, capsys):
    from benchmarks import filtered_search

    result = filtered_search.run(points=1200, queries=4, dir=str(tmp_path))
    filtered_search.report(result)
    assert all(row["same"] for row in result["rows"])  # an index changes the speed, never the hits
    rare = result["rows"][0]
    assert rare["hits"] == filtered_search.RARE and rare["indexed"]["n"] == 4
    assert result["index_s"] > 0 and "Filtered hybrid query alone" in capsys.readouterr().out


@needs_scifact
def test_diversity(capsys):
    from benchmarks import diversity

    result = diversity.run(max_docs=60, max_queries=8)
    diversity.report(result)
    off, *diverse = result["rows"]
    assert off["diversity"] is None and result["queries"] >= 3 and 0 < off["ndcg"] <= 1
    assert all(r["mean_cosine"] <= off["mean_cosine"] + 1e-9 for r in diverse)  # MMR never makes the top 10 alike
    assert "Diversity on SciFact train" in capsys.readouterr().out


def test_quality_table(tmp_path, capsys):
    """The side-by-side table and its paired differences, on the sample (which has no long queries: no such set)."""
    from benchmarks import quality_table

    results = quality_table.main(["--collections", "sample", "--index-dir", str(tmp_path)])
    (sets,) = results.values()
    assert list(sets) == ["test"] and sets["test"]["queries"] == 21
    per_query = sets["test"]["per_query"]
    assert {*quality_table.SYSTEMS, "ref bm25", "ref dense (exact)", "ref rrf"} <= set(per_query)
    assert all(len(values) == 21 for values in per_query.values())
    out = capsys.readouterr().out
    assert "nDCG@10 (shipped settings" in out and "hybrid+rerank (default)" in out
    assert "Paired nDCG@10 differences" in out and "hybrid+rerank vs hybrid" in out


def test_known_item(tmp_path, capsys):
    """Titles and sentences of the sample's documents find their source document; the table names each set."""
    from benchmarks import known_item

    results = known_item.main(
        ["--collections", "sample", "--index-dir", str(tmp_path), "--sentences", "4", "--titles", "4"]
    )
    kinds = results["sample"]["kinds"]
    assert sorted(kinds.values()) == ["sentence"] * 4 + ["title"] * 4
    for ranks in results["sample"]["ranks"].values():
        assert set(ranks) == set(known_item.SYSTEMS) and ranks["sparse"] == 1  # copied text: BM25 finds it first
    out = " ".join(capsys.readouterr().out.split())
    assert "sample title (4 q)" in out and "sample sentence (4 q)" in out and "hybrid 1st -> default not" in out


def test_fusion_study(tmp_path, capsys):
    """Every fusion is scored on each split of the same channel lists; the shipped one is named."""
    from benchmarks import fusion_study

    rows = fusion_study.main(["--collections", "sample", "--index-dir", str(tmp_path), "--held-out"])
    shipped = "z-scores if sparse top z > 2.5, else RRF k=10 (shipped)"
    assert {"dense", "sparse", "RRF k=10", "DBSF", shipped} <= set(rows)
    assert all(len(values) == 2 and 0 < values[0] <= 1 for label, values in rows.items() if "shorter" not in label)
    assert "sample train (11 q)" in capsys.readouterr().out


def test_long_query_windows_main(tmp_path, capsys):
    """The study runs end to end: each variant's systems on each set, compared with the shipped encoding."""
    from benchmarks import long_query_windows

    variants = ["shipped", "mean, 128/128"]
    results = long_query_windows.main(
        ["--collections", "sample", "--index-dir", str(tmp_path), "--variants", *variants]
    )
    assert list(results) == ["sample train"] and list(results["sample train"]) == variants
    for per_system in results["sample train"].values():
        assert {*long_query_windows.SYSTEMS, "windowed"} == set(per_system)
    assert "hybrid - shipped hybrid" in " ".join(capsys.readouterr().out.split())


def test_gpu_indexing(tmp_path, capsys):
    """On the CPU too: throughput and quality, then another run's saved vectors compared with this machine's."""
    from benchmarks import gpu_indexing
    from evals.collections import sample_collection

    sample, vectors = str(sample_collection().root), tmp_path / "vectors.npz"
    gpu_indexing.main(["--device", "cpu", "--data", sample, "--max-docs", "20", "--save-vectors", str(vectors)])
    out = capsys.readouterr().out
    assert "Indexing sample on cpu (20 docs" in out and "hybrid nDCG@10 (test)" in out
    gpu_indexing.main(["--device", "cpu", "--data", sample, "--compare", str(vectors)])
    assert "1.00000" in capsys.readouterr().out  # the same model on the same device: the same vectors (fp16)


def test_scifact_quality(tmp_path, capsys):
    """The trained path (tune-reranker on train) is scored on test beside the shipped variants."""
    from benchmarks import scifact_quality
    from evals.collections import sample_collection

    rows = scifact_quality.run(epochs=1, out=tmp_path / "out", index_dir=tmp_path, data=sample_collection().root)
    assert {"dense", "hybrid+rerank", "trained dense", "trained hybrid+rerank"} <= set(rows)
    assert all(0 < r["ndcg@10"] <= 1 for r in rows.values())
    assert "sample test (21 queries)" in capsys.readouterr().out
