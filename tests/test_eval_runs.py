"""TREC run files: trec_eval ordering kept in the file, clear errors."""

import pytest
import pytrec_eval

from evals.metrics import evaluate
from evals.runs import RunFormatError, best_chunk_per_document, rank_hits, read_run, write_run

RUN = {
    "q1": {"d1": 0.1 + 0.2, "d2": 1 / 3, "d3": -3.5, "d4": 1e-300, "d5": 12345678.901234567},
    "q2": {"b": 2.0, "a": 2.0, "c": 0.30000000000000004},
}


def test_round_trip_keeps_every_querys_order_as_rank_scores(tmp_path):
    path = write_run(tmp_path / "runs" / "hybrid.trec", RUN, tag="hybrid-v1")
    run, tag = read_run(path)
    assert tag == "hybrid-v1"
    assert run == {  # n - rank + 1 in rank_hits order, so trec_eval's float32 scores cannot tie
        "q1": {"d5": 5.0, "d2": 4.0, "d1": 3.0, "d4": 2.0, "d3": 1.0},
        "q2": {"b": 3.0, "a": 2.0, "c": 1.0},
    }


def test_pytrec_eval_scores_the_written_file_as_evaluate_scores_the_run(tmp_path):
    """Scores 1e-9 apart (the steps best_chunk_per_document and the top-ups make) are one float32 value for
    trec_eval, which would re-sort them by doc id: the file must keep the run's order for pytrec_eval too."""
    run = {"q1": {"a": 0.5, "b": 0.5 - 1e-9, "c": 0.5 - 2e-9, "d": 0.4}, "q2": {"x": 0.7, "y": 0.7 - 1e-9}}
    qrels = {"q1": {"a": 1, "d": 1}, "q2": {"x": 2}}
    from_file, _ = read_run(write_run(tmp_path / "r.trec", run, tag="t"))
    measured = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recip_rank"}).evaluate(from_file)
    ours = evaluate(qrels, run, k_values=[10])
    for qid in qrels:
        assert measured[qid]["ndcg_cut_10"] == pytest.approx(ours.per_query[qid]["ndcg@10"], abs=1e-12)
        assert measured[qid]["recip_rank"] == pytest.approx(ours.per_query[qid]["mrr@10"], abs=1e-12)
    assert ours.per_query["q1"]["mrr@10"] == 1.0  # a is first in the run


def test_lines_are_ranked_by_score_then_doc_id_desc(tmp_path):
    path = write_run(tmp_path / "r.trec", RUN, tag="t")
    lines = [line.split() for line in path.read_text().splitlines()]
    q2 = [(f[2], f[3]) for f in lines if f[0] == "q2"]
    assert q2 == [("b", "1"), ("a", "2"), ("c", "3")]  # b and a tie at 2.0: doc id descending
    assert [f[2] for f in lines if f[0] == "q1"] == ["d5", "d2", "d1", "d4", "d3"]
    assert all(f[1] == "Q0" and f[5] == "t" for f in lines)
    assert rank_hits(RUN["q2"]) == [("b", 2.0), ("a", 2.0), ("c", 0.30000000000000004)]


def test_metrics_survive_round_trip(tmp_path):
    qrels = {"q1": {"d2": 1, "d3": 1}, "q2": {"a": 1}}
    run, _ = read_run(write_run(tmp_path / "r.trec", RUN, tag="t"))
    assert evaluate(qrels, run) == evaluate(qrels, RUN)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("q1 Q0 d9 4 0.5", "expected 6 fields"),
        ("q1 Q0 d9 four 0.5 t", "rank 'four'"),
        ("q1 Q0 d9 4 high t", "score 'high'"),
        ("q1 Q0 d1 4 0.5 t", "listed twice"),
        ("q1 Q0 d9 4 0.5 other", "tag 'other'"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, line, reason):
    path = tmp_path / "bad.trec"
    path.write_text("q1 Q0 d1 1 0.9 t\nq1 Q0 d2 2 0.8 t\n" + line + "\n")
    with pytest.raises(RunFormatError, match=reason) as err:
        read_run(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert err.value.line == 3


def test_write_rejects_ids_that_break_the_format(tmp_path):
    with pytest.raises(ValueError, match="doc id"):
        write_run(tmp_path / "r.trec", {"q1": {"two words": 1.0}}, tag="t")
    with pytest.raises(ValueError, match="run tag"):
        write_run(tmp_path / "r.trec", {"q1": {"d": 1.0}}, tag="")
    with pytest.raises(ValueError, match="NaN"):
        write_run(tmp_path / "r.trec", {"q1": {"d": float("nan")}}, tag="t")


def test_empty_run(tmp_path):
    assert read_run(write_run(tmp_path / "r.trec", {}, tag="t")) == ({}, "")


def test_best_chunk_per_document_keeps_each_documents_first_chunk_in_order():
    chunks = [("d1", 0.9), ("d2", 0.8), ("d1", 0.7), ("d3", 0.8), ("d2", 0.1), ("d4", 0.05)]
    ranking = best_chunk_per_document(chunks)
    assert list(ranking) == ["d1", "d2", "d3", "d4"]
    assert ranking["d1"] == pytest.approx(0.9) and ranking["d3"] == pytest.approx(0.8)
    assert ranking["d2"] > ranking["d3"]  # tied scores keep the given order, whatever the doc ids
    assert [doc for doc, _ in rank_hits(ranking)] == ["d1", "d2", "d3", "d4"]
    assert list(best_chunk_per_document(chunks, depth=2)) == ["d1", "d2"]


def test_scores_that_do_not_fall_with_rank_are_warned_of(tmp_path, caplog):
    """A distance (lower is better) or one score for all: trec_eval and `compare` order hits by score, not rank."""
    path = tmp_path / "dist.trec"
    path.write_text(
        "q1 Q0 d1 1 0.1 t\nq1 Q0 d2 2 0.7 t\n"  # a distance: rises with rank
        "q2 Q0 d3 1 1 t\nq2 Q0 d4 2 1 t\n"  # one score for every hit
        "q3 Q0 d5 2 0.5 t\nq3 Q0 d6 1 0.9 t\nq3 Q0 d7 3 0.5 t\n"  # falls (a tie is trec_eval's business)
        "q4 Q0 d8 1 3 t\n"
    )
    with caplog.at_level("WARNING", logger="evals.runs"):
        read_run(path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: in 2 of 4 queries the scores do not fall as the rank rises (e.g. query 'q1'): hits are scored in "
        "the order of their scores, highest first, as trec_eval orders them, not by rank; negate a distance (lower "
        "is better) or write scores that fall with rank"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="evals.runs"):
        read_run(write_run(tmp_path / "r.trec", RUN, tag="t"))  # a run eval wrote
    assert not caplog.records
