"""Retrieval metrics computed with ``pytrec_eval`` (trec_eval), following BEIR's conventions.

For every cutoff ``k`` in ``k_values`` the metrics are ``ndcg@k`` (trec_eval ``ndcg_cut.k``), ``recall@k``
(``recall.k``), ``map@k`` (``map_cut.k``) and ``mrr@k`` (``recip_rank`` on the run truncated to its top
``k`` in trec_eval order: score descending, ties by doc id descending). The headline metrics are
:data:`HEADLINE_METRICS`.

Conventions:

- BEIR's ``ignore_identical_ids``: a hit whose doc id equals its query id is dropped before scoring (BEIR's
  data never judges such a pair relevant; a team numbering queries and documents alike does: pass False, and see
  :func:`judgement_warnings`).
- Ids: query and document ids of the qrels and the run are compared in Unicode NFC, as the index treats ids
  differing only in normalization as one id (of two that become one, the higher grade or score stays).
- Averaging: BEIR divides by the number of queries pytrec_eval returned, i.e. queries present in *both*
  qrels and run, so a query the system never answered silently leaves the mean (its own MRR, however,
  divides by all qrels queries). Here every query with qrels counts, and a query absent from the run (or
  left with no hits) scores 0 on every metric. This is the conservative choice and makes means of
  different systems comparable on the same query set; it equals BEIR whenever the run covers every query.
- Order: pytrec_eval compares scores at lower precision than a Python float (two scores 1e-9 apart tie, and
  trec_eval then orders them by doc id), so it is given each query's ranks instead (``n - rank`` in trec_eval
  order, computed here in full precision): the metrics score the order the system returned, which
  :func:`~evals.runs.best_chunk_per_document` keeps strictly decreasing, ties of fused scores included.
- Queries in the run without qrels are ignored; graded relevance feeds nDCG, while recall, MAP and MRR
  count a document as relevant when its grade is >= 1 (trec_eval's default). A query judged with no document
  graded >= 1 scores 0 on every metric and counts in the means, as in pytrec_eval and BEIR
  (:func:`judgement_warnings` says how many there are).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pytrec_eval

from evals.runs import rank_hits
from retrieval.documents import compact_repr
from retrieval.wording import counted

Qrels = Mapping[str, Mapping[str, int]]
RunLike = Mapping[str, Mapping[str, float]]

HEADLINE_METRICS: tuple[str, ...] = ("ndcg@10", "recall@100", "mrr@10", "map@100")
DEFAULT_K_VALUES: tuple[int, ...] = (10, 100)
LATENCY_KEY = "latency_ms"  # the p50 search latency, shown beside the metrics in tables
LATENCY_P50 = "latency_p50_ms"  # the p50 latency as a metric name: EvalReport.frame(), Dagster metadata, history
LATENCY_P95 = "latency_p95_ms"  # the p95 latency as a metric name: history rows (see EvalReport.record)


@dataclass(frozen=True)
class EvalResult:
    """Mean and per-query metric values; ``per_query`` has every qrels query, in sorted order."""

    mean: dict[str, float]
    per_query: dict[str, dict[str, float]]

    __repr__ = compact_repr  # the means and a few queries, not 300 queries' values

    @property
    def n_queries(self) -> int:
        return len(self.per_query)

    def metric(self, name: str) -> dict[str, float]:
        """Per-query values of one metric."""
        return {qid: values[name] for qid, values in self.per_query.items()}


def metric_names(k_values: Iterable[int] = DEFAULT_K_VALUES) -> list[str]:
    """The metric names :func:`evaluate` returns for ``k_values``."""
    return [f"{name}@{k}" for name in ("ndcg", "recall", "mrr", "map") for k in sorted(set(k_values))]


def evaluate(
    qrels: Qrels,
    run: RunLike,
    k_values: Iterable[int] = DEFAULT_K_VALUES,
    *,
    ignore_identical_ids: bool = True,
) -> EvalResult:
    """Score ``run`` against ``qrels``; see the module docstring for the conventions."""
    ks = sorted({int(k) for k in k_values})
    if not ks or ks[0] < 1:
        raise ValueError(f"k_values must be positive integers, got {list(k_values)}")
    judged = {q: {d: int(s) for d, s in docs.items()} for q, docs in nfc_ids(qrels).items() if docs}
    if not judged:
        raise ValueError("qrels has no judged query")
    by_qid = nfc_ids(run)
    hits: dict[str, dict[str, float]] = {}
    for qid in judged:
        found = by_qid.get(qid, {})
        hits[qid] = {d: float(s) for d, s in found.items() if not (ignore_identical_ids and d == qid)}

    ranked = {qid: rank_hits(h) for qid, h in hits.items()}  # full precision; pytrec_eval gets exact ranks
    as_ranks = {qid: {d: float(len(r) - i) for i, (d, _) in enumerate(r)} for qid, r in ranked.items()}
    cut = ",".join(map(str, ks))
    main = pytrec_eval.RelevanceEvaluator(judged, {f"ndcg_cut.{cut}", f"recall.{cut}", f"map_cut.{cut}"})
    scores = main.evaluate(as_ranks)
    rr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"})
    rr_at = {k: rr.evaluate({q: dict(list(r.items())[:k]) for q, r in as_ranks.items()}) for k in ks}

    names = metric_names(ks)
    per_query: dict[str, dict[str, float]] = {}
    for qid in sorted(judged):
        values = dict.fromkeys(names, 0.0)
        measured = scores.get(qid)
        for k in ks:
            if measured is not None:
                values[f"ndcg@{k}"] = measured[f"ndcg_cut_{k}"]
                values[f"recall@{k}"] = measured[f"recall_{k}"]
                values[f"map@{k}"] = measured[f"map_cut_{k}"]
            values[f"mrr@{k}"] = rr_at[k].get(qid, {}).get("recip_rank", 0.0)
        per_query[qid] = values
    n = len(per_query)
    mean = {name: sum(v[name] for v in per_query.values()) / n for name in names}
    return EvalResult(mean=mean, per_query=per_query)


def nfc(text: str) -> str:
    """An id in Unicode NFC (``café`` composed or with a combining accent: one id, as in the index)."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def nfc_ids(data: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """qrels or a run with its query and document ids in NFC (:func:`nfc`); of two ids that become one, the higher
    grade or score stays."""
    out: dict[str, dict[str, float]] = {}
    for qid, docs in data.items():
        merged = out.setdefault(nfc(str(qid)), {})
        for doc_id, value in docs.items():
            key = nfc(str(doc_id))
            merged[key] = max(value, merged.get(key, value))
    return out


def relevant_documents(qrels: Qrels) -> set[str]:
    """The id (NFC) of every document judged relevant (grade >= 1) in ``qrels``: only those cap the scores when
    missing from the index."""
    return {nfc(doc_id) for docs in qrels.values() for doc_id, grade in docs.items() if grade >= 1}


def judgement_warnings(qrels: Qrels, ignore_identical_ids: bool = True) -> list[str]:
    """What the qrels cap or hide without a word from the metrics: queries judged with no relevant document (grade
    >= 1; they score 0 on every metric, so no mean can exceed the share of the others), and, under BEIR's
    identical-id rule, relevant judgements pairing a query with the document of the same id (never found)."""
    judged = {q: docs for q, docs in nfc_ids(qrels).items() if docs}
    out = []
    unanswerable = sorted(q for q, docs in judged.items() if max(docs.values()) < 1)
    if unanswerable:
        n, total = len(unanswerable), len(judged)
        out.append(
            f"{n:,} of the {counted(total, 'judged query')} {'has' if n == 1 else 'have'} no document judged "
            f"relevant (grade >= 1), e.g. {unanswerable[:5]}: they score 0 on every metric and count in the means, "
            f"which cannot exceed {(total - n) / total:.4f} (as pytrec_eval and BEIR score them)"
        )
    same = sorted(q for q, docs in judged.items() if docs.get(q, 0) >= 1)
    if ignore_identical_ids and same:
        out.append(
            f"{counted(len(same), 'relevant judgement')} {'pairs' if len(same) == 1 else 'pair'} a query with the "
            f"document of the same id (queries {same[:5]}): "
            "BEIR's identical-id rule drops such hits, so they can never be found (ids numbered alike for queries and "
            "documents? score them with --keep-identical-ids, ignore_identical_ids=False)"
        )
    return out
