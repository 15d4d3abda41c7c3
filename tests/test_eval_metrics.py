"""Metric values against hand-computed tiny cases (trec_eval conventions: linear gain, log2 discount)."""

import math
import unicodedata

import pytest

from evals.collections import EvalCollection, read_qrels, sample_collection
from evals.metrics import HEADLINE_METRICS, evaluate, judgement_warnings
from tests.conftest import NFCORPUS, SCIFACT


def test_ndcg_mrr_map_recall_hand_computed():
    qrels = {"q1": {"d1": 1, "d3": 1}}
    run = {"q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
    r = evaluate(qrels, run).per_query["q1"]
    # relevant at ranks 1 and 3, two relevant: DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG = 1 + 1/log2(3)
    assert r["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))  # 0.91972
    assert r["mrr@10"] == pytest.approx(1.0)
    # AP = (precision at rank 1 + precision at rank 3) / 2 = (1/1 + 2/3) / 2
    assert r["map@100"] == pytest.approx((1 + 2 / 3) / 2)
    assert r["recall@100"] == pytest.approx(1.0)


def test_first_relevant_at_rank_three():
    qrels = {"q1": {"a": 1}}
    run = {"q1": {"x": 0.9, "y": 0.8, "a": 0.7}}
    r = evaluate(qrels, run).per_query["q1"]
    assert r["mrr@10"] == pytest.approx(1 / 3)  # 1 / rank of the first relevant
    assert r["ndcg@10"] == pytest.approx(1 / math.log2(4))  # DCG = 1/log2(3+1), IDCG = 1
    assert r["map@100"] == pytest.approx(1 / 3)  # one relevant, precision 1/3 at its rank


def test_partial_recall_and_graded_ndcg():
    qrels = {"q1": {"r1": 1, "r2": 1, "r3": 1, "r4": 1}, "q2": {"a": 2, "b": 1}}
    run = {"q1": {"r1": 5.0, "n1": 4.0, "r2": 3.0}, "q2": {"b": 2.0, "a": 1.0}}
    r = evaluate(qrels, run).per_query
    assert r["q1"]["recall@100"] == pytest.approx(2 / 4)  # 2 of the 4 relevant retrieved
    assert r["q1"]["recall@10"] == pytest.approx(2 / 4)
    # graded gains are linear in trec_eval: DCG = 1/log2(2) + 2/log2(3); IDCG = 2/log2(2) + 1/log2(3)
    assert r["q2"]["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))  # 0.8597
    # recall, MAP and MRR count grade >= 1 as relevant: both relevant, at ranks 1 and 2
    assert r["q2"]["map@100"] == pytest.approx(1.0)


def test_mrr_cutoff_follows_trec_eval_tie_order():
    # first relevant at rank 11: outside MRR@10, 1/11 for MRR@100
    run = {"q1": {f"n{i:02d}": 100.0 - i for i in range(10)} | {"rel": 1.0}}
    r = evaluate({"q1": {"rel": 1}}, run).per_query["q1"]
    assert r["mrr@10"] == 0.0
    assert r["mrr@100"] == pytest.approx(1 / 11)
    # all scores tied: trec_eval orders ties by doc id descending, so "a" comes last of 12 (rank 12)
    tied = {"q1": {doc: 1.0 for doc in ["a", *[f"z{i:02d}" for i in range(11)]]}}
    r = evaluate({"q1": {"a": 1}}, tied).per_query["q1"]
    assert r["mrr@10"] == 0.0
    assert r["ndcg@10"] == 0.0
    assert r["mrr@100"] == pytest.approx(1 / 12)


def test_identical_id_is_ignored():
    qrels = {"q1": {"d1": 1}}
    run = {"q1": {"q1": 9.0, "d1": 5.0}}  # the query's own id ranks first
    r = evaluate(qrels, run).per_query["q1"]
    assert r["mrr@10"] == 1.0  # q1 removed, d1 is now rank 1
    assert r["ndcg@10"] == pytest.approx(1.0)
    kept = evaluate(qrels, run, ignore_identical_ids=False).per_query["q1"]
    assert kept["mrr@10"] == pytest.approx(1 / 2)


def test_identical_id_does_not_count_even_if_judged():
    qrels = {"q1": {"q1": 1, "d1": 1}}  # a (bad) judgement of the query's own id
    run = {"q1": {"q1": 9.0, "d1": 5.0}}
    r = evaluate(qrels, run).per_query["q1"]
    assert r["recall@100"] == pytest.approx(1 / 2)  # only d1 is found; q1 was dropped from the run


def test_query_without_hits_scores_zero_and_counts_in_mean():
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}}
    run = {"q1": {"d1": 1.0}, "q2": {}, "q9": {"d9": 1.0}}  # q3 absent; q9 has no qrels (ignored)
    res = evaluate(qrels, run)
    assert list(res.per_query) == ["q1", "q2", "q3"]
    for qid in ("q2", "q3"):
        assert all(v == 0.0 for v in res.per_query[qid].values())
    for metric in HEADLINE_METRICS:
        assert res.mean[metric] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3
    assert res.n_queries == 3
    assert res.metric("ndcg@10") == {"q1": 1.0, "q2": 0.0, "q3": 0.0}


def test_caller_run_is_not_modified():
    run = {"q1": {"q1": 1.0, "d1": 0.5}}
    evaluate({"q1": {"d1": 1}}, run)
    assert run == {"q1": {"q1": 1.0, "d1": 0.5}}


def test_perfect_run_on_sample_scores_one():
    qrels = sample_collection().qrels("test")
    run = {qid: {doc: float(grade) for doc, grade in docs.items()} for qid, docs in qrels.items()}
    res = evaluate(qrels, run)
    for metric in HEADLINE_METRICS:
        assert res.mean[metric] == pytest.approx(1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="no judged query"):
        evaluate({}, {"q1": {"d1": 1.0}})
    with pytest.raises(ValueError, match="positive"):
        evaluate({"q1": {"d1": 1}}, {}, k_values=[0])


def test_scores_a_hair_apart_keep_their_order() -> None:
    # Fused (RRF) scores tie often; best_chunk_per_document keeps the returned order by lowering each score by
    # 1e-9 per position, finer than pytrec_eval compares: the relevant 'a', returned first, must rank first.
    tied = 0.17424242424242425
    result = evaluate({"q": {"a": 1}}, {"q": {"a": tied, "b": tied - 1e-9}})
    assert result.mean["ndcg@10"] == pytest.approx(1.0) and result.mean["mrr@10"] == pytest.approx(1.0)


def test_the_identical_id_rule_can_be_turned_off_for_ids_numbered_alike():
    """A team numbering queries and documents from 1: document 2 really answers query 2."""
    qrels = {"2": {"2": 1}, "3": {"9": 1}}
    run = {"2": {"2": 2.0, "5": 1.0}, "3": {"9": 1.0}}
    assert evaluate(qrels, run).per_query["2"]["ndcg@10"] == 0.0  # BEIR's rule, the default
    kept = evaluate(qrels, run, ignore_identical_ids=False)
    assert kept.per_query["2"]["ndcg@10"] == 1.0 and kept.mean["ndcg@10"] == 1.0


def test_ids_in_another_unicode_normalization_are_one_id():
    """qrels written by a macOS tool (NFD) against a run of the index's NFC ids, and the other way round."""
    nfc, nfd = "recherche/café.md", unicodedata.normalize("NFD", "recherche/café.md")
    assert nfc != nfd
    for judged, found in ((nfd, nfc), (nfc, nfd)):
        result = evaluate({"q-é": {judged: 1}}, {unicodedata.normalize("NFD", "q-é"): {found: 1.0, "other": 0.5}})
        assert result.mean["ndcg@10"] == 1.0 and list(result.per_query) == ["q-é"]


def test_judgement_warnings_name_queries_without_a_relevant_document_and_identical_pairs():
    qrels = {"1": {"1": 1, "4": 0}, "2": {"5": 0, "6": -1}, "3": {"7": 2}, "4": {"8": 1}}
    unanswerable, identical = judgement_warnings(qrels)
    assert unanswerable.startswith("1 of the 4 judged queries has no document judged relevant (grade >= 1)")
    assert "['2']" in unanswerable and "cannot exceed 0.7500" in unanswerable
    assert identical.startswith("1 relevant judgement pairs a query with the document of the same id (queries ['1'])")
    assert "--keep-identical-ids" in identical
    assert judgement_warnings(qrels, ignore_identical_ids=False) == [unanswerable]
    assert judgement_warnings({"1": {"1": 0, "2": 1}}) == []  # a non-relevant identical pair hides nothing
    scores = evaluate(qrels, {q: {"7": 1.0, "8": 1.0} for q in qrels})  # the figures stay pytrec_eval's
    assert scores.per_query["2"]["ndcg@10"] == 0.0 and scores.mean["recall@100"] == 0.5


@pytest.mark.parametrize("dataset", [SCIFACT, NFCORPUS], ids=["scifact", "nfcorpus"])
def test_beir_data_judges_no_document_relevant_to_the_query_of_the_same_id(dataset):
    """Why BEIR's rule is the default: its data never needs the hits it drops (the warning stays quiet)."""
    if not dataset.is_dir():
        pytest.skip(f"{dataset} not available")
    for split in EvalCollection(dataset.name, dataset).splits():
        qrels = read_qrels(dataset / "qrels" / f"{split}.tsv")
        assert not [w for w in judgement_warnings(qrels) if "same id" in w], split
