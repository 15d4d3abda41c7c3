"""The one evaluation path: evaluate_collection's typed report, its history rows and its JSON form."""

import json
import time
import unicodedata
from collections import Counter

import pytest

from assets.evaluation import sample_table
from evals.collections import EvalCollection, sample_collection
from evals.history import EvalHistory
from evals.metrics import evaluate
from evals.report import markdown_table, search_settings
from evals.runner import (
    LATENCY_P50,
    LATENCY_P95,
    RUN_DEPTH,
    EvalReport,
    deepen_runs,
    evaluate_collection,
    evaluate_variants,
    judgements_fingerprint,
    retrieve_run,
)
from evals.runs import best_chunk_per_document
from retrieval import Document, HybridRetriever, RetrievalSettings, RetrievalStack, Variant, read_documents
from retrieval.errors import InvalidArgumentError
from tests.conftest import BACKENDS, TINY_DOCS

VARIANTS = ["sparse", "hybrid"]


@pytest.fixture(scope="module")
def sample_report(indexed_stack) -> tuple[EvalReport, HybridRetriever]:
    coll = sample_collection()
    docs, _ = read_documents(coll.root)
    retriever = indexed_stack("edge", docs, collection="runner", rerank=False).retriever()
    yield evaluate_collection(retriever, coll, "test", VARIANTS, progress=False), retriever
    retriever.close()


def test_report_describes_what_was_evaluated(sample_report) -> None:
    report, retriever = sample_report
    qrels = sample_collection().qrels("test")
    assert (report.collection, report.split, report.qdrant_collection) == ("sample", "test", "runner")
    assert report.version == retriever.store.current_version() and report.version is not None
    assert report.n_queries == len(qrels) and list(report.variants) == VARIANTS
    assert report.settings["dense_model"] == retriever.dense.model_name and report.settings["sparse_model"] == "bm25"
    assert report.settings["rrf_k"] == retriever.settings.rrf_k and report.settings["fusion"] == "rrf"
    assert report.settings["dense_backend"] == "torch" and search_settings(report.context()) == "shipped"
    int8 = {**report.context(), "dense_backend": "onnx-int8"}  # queries encoded in int8 move the figures
    assert search_settings(int8) == "dense_backend=onnx-int8"
    assert report.seconds > 0


def test_a_reports_repr_is_a_summary_not_every_query(sample_report) -> None:
    """What a notebook shows for ``report``: the metrics, not each query's scores and run (megabytes for SciFact)."""
    report, _ = sample_report
    shown = repr(report)
    assert "ndcg@10" in shown and "per_query" not in shown and "run=" not in shown
    assert len(shown) < 3000 + 200 * len(report.variants)


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ("hybrid", "not one string \\('hybrid'\\)"),  # read letter by letter: "'h' is not a valid Variant"
        (["Hybrid"], "unknown variant 'Hybrid'; valid: dense, sparse, hybrid, hybrid\\+rerank"),
        ([], "variants is empty"),  # an empty report, which recorded nothing
    ],
)
def test_bad_variants_are_refused_before_any_work(sample_report, variants, message) -> None:
    _, retriever = sample_report
    with pytest.raises(InvalidArgumentError, match=message):
        evaluate_collection(retriever, sample_collection(), "test", variants, progress=False)


def test_report_scores_are_the_runs_scored_against_the_qrels(sample_report) -> None:
    report, _ = sample_report
    qrels = sample_collection().qrels("test")
    for result in report.variants.values():
        assert set(result.run) == set(qrels) and all(0 < len(docs) <= 100 for docs in result.run.values())
        scored = evaluate(qrels, result.run)
        assert result.metrics == scored.mean and result.per_query == scored.per_query  # for significance tests
        assert set(result.per_query) == set(qrels)
        assert 0 < result.latency_ms["p50"] <= result.latency_ms["p95"]
    assert report.variants["hybrid"].metrics["ndcg@10"] > 0.5  # the sample is easy; a broken path scores near 0
    table = report.metrics()
    assert table["sparse"]["latency_ms"] == report.variants["sparse"].latency_ms["p50"]


def test_summary_round_trip_and_history_rows(sample_report, tmp_path) -> None:
    report, _ = sample_report
    again = EvalReport.from_summary(json.loads(json.dumps(report.summary())))
    assert again.metrics() == report.metrics() and again.settings == report.settings
    assert (again.version, again.timestamp, again.n_queries) == (report.version, report.timestamp, report.n_queries)
    assert again.variants["hybrid"].run == {}  # the summary leaves out runs and per-query values

    history = EvalHistory(tmp_path / "evals.sqlite")
    rows = report.record(history, source="benchmark", note="nightly")
    df = history.records(collection="sample")
    assert rows == len(df) == sum(len(r.metrics) + 2 for r in report.variants.values())  # + p50 and p95 latency
    for name, result in report.variants.items():
        latency = df[df["variant"] == name].set_index("metric")["value"]
        assert (latency[LATENCY_P50], latency[LATENCY_P95]) == (result.latency_ms["p50"], result.latency_ms["p95"])
    assert set(df["source"]) == {"benchmark"} and df["timestamp"].nunique() == 1
    assert df["context"][0] == {**report.context(), "note": "nightly"} and df["context"][0]["version"] == report.version
    hybrid = df[(df["variant"] == "hybrid") & (df["metric"] == "ndcg@10")]["value"].tolist()
    assert hybrid == [report.variants["hybrid"].metrics["ndcg@10"]]
    # a notebook cell run again records the same report again: nothing appended (it doubled the rows)
    assert report.record(history, source="benchmark", note="nightly") == 0
    assert len(history.records(collection="sample")) == rows

    md = markdown_table(report.frame(), metrics=["ndcg@10", LATENCY_P50]).splitlines()
    assert md[0] == "| collection | split | variant | nDCG@10 | latency_p50_ms | last run (UTC) |"
    assert len(md) == 2 + len(VARIANTS)


def test_history_rows_say_which_queries_and_qrels_were_scored(sample_report) -> None:
    """n_queries and a fingerprint of the judged queries' text and the qrels, so that the history never joins
    figures scored on other queries or judgements (eval-report's plot and table, the publishing gate)."""
    report, _ = sample_report
    collection = sample_collection()
    queries, qrels = collection.split_queries("test"), collection.qrels("test")
    context = report.context()
    assert context["n_queries"] == len(qrels) == 21
    assert context["qrels_fingerprint"] == judgements_fingerprint(queries, qrels)
    assert judgements_fingerprint({**queries, "unjudged": "not scored"}, qrels) == context["qrels_fingerprint"]
    first = sorted(qrels)[0]
    others = [
        (queries, {q: j for q, j in qrels.items() if q != first}),  # a query dropped
        (queries, {**qrels, first: {d: g + 1 for d, g in qrels[first].items()}}),  # regraded
        ({**queries, first: queries[first] + " reworded"}, qrels),  # the query text edited
    ]
    assert len({context["qrels_fingerprint"], *(judgements_fingerprint(q, j) for q, j in others)}) == 4


def test_a_hit_with_the_query_id_is_ignored(indexed_stack, tmp_path) -> None:
    """BEIR's convention through the whole path: the document whose id is the query id never counts."""
    root = tmp_path / "coll"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS))
    queries = {"pasta": "how can I keep spaghetti from sticking", "q-moon": "Earth's natural satellite orbit"}
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\npasta\tpasta\t1\nq-moon\tmoon\t1\n")
    retriever = indexed_stack("edge", TINY_DOCS, collection="ids", rerank=False).retriever()
    try:
        report = evaluate_collection(retriever, EvalCollection("ids", root), "test", ["dense"], progress=False)
    finally:
        retriever.close()
    result = report.variants["dense"]
    assert "pasta" not in result.run["pasta"] and result.run["pasta"]  # left out of the run (a run file too)...
    assert result.per_query["pasta"]["ndcg@10"] == 0.0  # ...and not counted
    assert result.per_query["q-moon"]["ndcg@10"] == 1.0
    table = sample_table(queries, {"pasta": {"pasta": 1}}, report.variants, 1)  # the Dagster sample_queries table
    assert "| pasta: how can I keep spaghetti from sticking | dense | " in table and ", pasta" not in table
    assert "| dense | pasta" not in table
    assert any("1 relevant judgement pairs a query with the document of the same id" in w for w in report.warnings)
    assert "ignore_identical_ids" not in report.context()


def test_the_identical_id_rule_can_be_turned_off(indexed_stack, tmp_path) -> None:
    """Queries and documents numbered alike: the document with the query's id is searched, kept and scored."""
    root = tmp_path / "coll"
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text(json.dumps({"_id": "pasta", "text": "keep spaghetti from sticking"}) + "\n")
    (root / "qrels" / "test.tsv").write_text("pasta\tpasta\t1\n")
    retriever = indexed_stack("edge", TINY_DOCS, collection="ids", rerank=False).retriever()
    try:
        coll = EvalCollection("ids", root)
        report = evaluate_collection(retriever, coll, "test", ["dense"], progress=False, ignore_identical_ids=False)
    finally:
        retriever.close()
    result = report.variants["dense"]
    assert next(iter(result.run["pasta"])) == "pasta" and len(result.run["pasta"]) == len(TINY_DOCS)
    assert result.metrics["ndcg@10"] == 1.0 and not report.warnings
    assert report.context()["ignore_identical_ids"] is False  # the history tells these figures apart


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_index_time_settings_recorded_are_the_collections(indexed_stack, backend) -> None:
    """Chunk sizes, BM25 parameters and the document prompt come from the collection, not the evaluating process."""
    coll = sample_collection()
    docs, _ = read_documents(coll.root)
    built = indexed_stack(backend, docs, collection="chunked", chunk_tokens=48, chunk_overlap=8)
    evaluating = RetrievalStack(  # the shipped settings, searching the collection built above
        RetrievalSettings(qdrant_path=built.settings.qdrant_path, collection="chunked", rerank=False),
        dense=built.dense,
        sparse=built.sparse,
        store=built.store(),
    )
    report = evaluate_collection(evaluating.retriever(), coll, "test", ["sparse"], progress=False)
    recorded = {k: report.settings[k] for k in ("chunk_tokens", "chunk_overlap", "bm25_k1", "bm25_b", "bm25_avg_len")}
    assert recorded == {"chunk_tokens": 48, "chunk_overlap": 8, "bm25_k1": 1.2, "bm25_b": 0.75, "bm25_avg_len": 256.0}
    assert report.settings["document_prompt"] == "" and report.settings["rrf_k"] == evaluating.settings.rrf_k


@pytest.fixture(scope="module")
def deep_sample(indexed_stack) -> RetrievalStack:
    """The sample in small chunks, several per document: runs need the document-level top-up."""
    docs, _ = read_documents(sample_collection().root)
    return indexed_stack("edge", docs, collection="deep", chunk_tokens=24, chunk_overlap=4)


@pytest.mark.parametrize("variant", ["dense", "hybrid+rerank"])
def test_runs_hold_depth_documents_and_keep_the_applications_ranking(deep_sample, variant) -> None:
    """Recall@100 is scored on 100 documents, not on the documents of the top 100 chunks (several chunks of a
    document count once); the top of the run stays the order an application searching k=depth chunks gets."""
    coll = sample_collection()
    retriever, queries, depth = deep_sample.retriever(), coll.split_queries("test"), 10
    run, latencies = retrieve_run(retriever, queries, variant, depth=depth, progress=False)
    assert len(latencies) == len(queries) and set(run) == set(queries)
    short = 0
    for qid, text in queries.items():
        hits = retriever.search(text, k=depth, variant=variant)
        app = [d for d in dict.fromkeys(h.doc_id for h in hits) if d != qid]
        short += len(app) < depth
        assert len(run[qid]) == depth, qid  # the sample holds 60 documents
        assert list(run[qid])[: len(app)] == app  # the application's ranking, unchanged, on top
        scores = list(run[qid].values())
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False))  # trec_eval keeps this order
    assert short  # multi-chunk documents: some queries' top chunks hold fewer than `depth` documents


def test_depth_settings_without_effect_are_recorded_as_in_effect(indexed_stack) -> None:
    """PREFETCH_K and RERANK_DEPTH below the evaluation's 100 hits change nothing there: the report records what
    the search used (so eval-report shows the shipped search) and says why in one warning each."""
    coll = sample_collection()
    docs, _ = read_documents(coll.root)
    stack = indexed_stack("edge", docs, collection="shallow", prefetch_k=10, rerank_depth=10)
    report = evaluate_collection(stack.retriever(), coll, "test", ["hybrid+rerank"], progress=False)
    assert (report.settings["prefetch_k"], report.settings["rerank_depth"]) == (100, 100)
    assert search_settings(report.context()) == "shipped"
    assert [w.split(" has no effect")[0] for w in report.warnings] == ["PREFETCH_K=10", "RERANK_DEPTH=10"]
    assert all("at depth 100" in w for w in report.warnings)


def test_the_coverage_warning_tells_a_corpus_file_lacking_judged_documents_from_a_partial_index(
    indexed_stack, tmp_path
) -> None:
    """The qrels judge a document corpus.jsonl does not hold: the collection holds the whole corpus, the warning
    says where the missing documents are missing from. Only documents judged relevant count: a missing
    non-relevant one (a pool of another system, graded 0 or -1) caps no score."""
    root = tmp_path / "coll"
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d.id, "text": d.text}) + "\n" for d in TINY_DOCS))
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "noodles in boiling water"}) + "\n")
    qrels = "q1\tpasta\t1\nq1\tvalve\t0\nq1\tmissing-doc\t1\nq1\tpool-1\t0\nq1\tpool-2\t-1\n"
    (root / "qrels" / "test.tsv").write_text(qrels)
    retriever = indexed_stack("edge", TINY_DOCS, collection="judged", rerank=False).retriever()
    report = evaluate_collection(retriever, EvalCollection("coll", root), "test", ["sparse"], progress=False)
    assert report.judged_coverage == pytest.approx(1 / 2) and report.judged_not_in_corpus == pytest.approx(1 / 2)
    assert "50.0% are not in the corpus file itself" in report.coverage_warning()
    assert "0.0% are in the corpus file but missing from the collection" in report.coverage_warning()
    assert report.context()["judged_not_in_corpus"] == pytest.approx(0.5)
    (root / "qrels" / "test.tsv").write_text(qrels.replace("missing-doc\t1", "missing-doc\t0"))
    report = evaluate_collection(retriever, EvalCollection("coll", root), "test", ["sparse"], progress=False)
    assert report.judged_coverage == 1.0 and report.coverage_warning() is None
    assert "judged_coverage" not in report.context()


def test_qrels_naming_a_document_in_another_unicode_normalization_match_it(indexed_stack, tmp_path) -> None:
    """A folder's file ids are stored in NFC; qrels written on macOS name them in NFD: the same document."""
    cafe = Document(id="recherche/café études.md", text="Espresso coffee roasting and grinding beans at home.")
    root = tmp_path / "coll"
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "roasting coffee beans"}) + "\n")
    (root / "qrels" / "test.tsv").write_text(f"q1\t{unicodedata.normalize('NFD', cafe.id)}\t1\n")
    retriever = indexed_stack("edge", [*TINY_DOCS, cafe], collection="nfc", rerank=False).retriever()
    try:
        report = evaluate_collection(retriever, EvalCollection("nfc", root), "test", ["sparse"], progress=False)
    finally:
        retriever.close()
    assert report.judged_coverage == 1.0 and report.coverage_warning() is None
    assert report.variants["sparse"].metrics["ndcg@10"] == 1.0


def test_variants_evaluated_together_equal_each_variant_searched_on_its_own(deep_sample) -> None:
    """Encoding each query once for every variant and sharing top-ups changes no figure: each variant searched
    as an application searches (every search encodes its query), with a top-up of its own, gives the same runs
    and metrics."""
    coll = sample_collection()
    qrels, retriever = coll.qrels("test"), deep_sample.retriever()
    queries = {qid: text for qid, text in coll.split_queries("test").items() if qid in qrels}
    together = evaluate_variants(retriever, queries, qrels, progress=False)
    short = 0
    for variant in Variant:
        run = {}
        for qid, text in queries.items():
            hits = retriever.search(text, k=RUN_DEPTH, variant=variant, rerank=variant is Variant.HYBRID_RERANK)
            run[qid] = best_chunk_per_document((h.doc_id, h.score) for h in hits if h.doc_id != qid)
        short += sum(len(docs) < RUN_DEPTH for docs in run.values())
        deepen_runs(retriever, queries, {variant: run}, RUN_DEPTH)  # its own top-up, its own (batched) encoding
        assert together[variant.value].run == run, variant
        assert together[variant.value].metrics == evaluate(qrels, run).mean, variant
    assert short  # the top-ups were compared too
    assert together["hybrid+rerank"].run != together["hybrid"].run  # reranked: another order, one shared top-up


def test_an_evaluation_encodes_each_query_once_and_its_latencies_include_the_encoding(deep_sample, monkeypatch):
    """Four variants and their top-ups: one dense and one sparse encoding per query (the dense encoder was called
    5 times per query before), one document-level top-up per first stage (hybrid+rerank shares hybrid's). The
    real encoders, spied on; the dense one made 50 ms slower, which shows in the latency of every variant that
    searches dense vectors (the application's search encodes its query) and not in sparse's."""
    coll = sample_collection()
    qrels, retriever = coll.qrels("test"), deep_sample.retriever()
    queries = {qid: text for qid, text in coll.split_queries("test").items() if qid in qrels}
    encoded: dict[str, list[str]] = {"dense": [], "sparse": []}
    delay = {"dense": 0.05, "sparse": 0.0}

    def spy(channel, encode):
        def encode_queries(texts, *args, **kwargs):
            encoded[channel].extend(texts)
            time.sleep(delay[channel])
            return encode(texts, *args, **kwargs)

        return encode_queries

    monkeypatch.setattr(retriever.dense, "encode_queries", spy("dense", retriever.dense.encode_queries))
    monkeypatch.setattr(retriever.sparse, "encode_queries", spy("sparse", retriever.sparse.encode_queries))
    top_ups: Counter[str] = Counter()
    search_batch = retriever.search_batch

    def counted(texts, **kwargs):
        if kwargs.get("group_by") == "doc":
            top_ups[str(kwargs["variant"])] += 1
        return search_batch(texts, **kwargs)

    monkeypatch.setattr(retriever, "search_batch", counted)
    results = evaluate_variants(retriever, queries, qrels, progress=False)
    assert Counter(encoded["dense"]) == Counter(encoded["sparse"]) == Counter(queries.values())
    assert top_ups == {"dense": 1, "sparse": 1, "hybrid": 1}
    for variant, result in results.items():
        slow = variant != "sparse"
        assert (result.latency_ms["p50"] >= 1000 * delay["dense"]) is slow, (variant, result.latency_ms)


def test_a_collection_from_python_dicts_is_evaluated_without_files(indexed_stack) -> None:
    """A notebook's queries and qrels as dicts: judgements naming each query's one right document, which the
    lexical channel ranks first, score a perfect nDCG (a grade-0 judgement lowers nothing)."""
    queries = {"q-valve": "ZX-4471 valve gasket", "q-moon": "Moon natural satellite orbit kilometres"}
    qrels = {"q-valve": {"valve": 1, "pasta": 0}, "q-moon": {"moon": 2}}
    coll = EvalCollection.from_dicts("notebook", queries, qrels, corpus=TINY_DOCS)
    retriever = indexed_stack("edge", TINY_DOCS, collection="dicts", rerank=False).retriever()
    try:
        report = evaluate_collection(retriever, coll, "test", ["sparse"], progress=False)
    finally:
        retriever.close()
    assert report.collection == "notebook" and report.split == "test" and report.n_queries == 2
    assert report.variants["sparse"].metrics["ndcg@10"] == 1.0
    assert {q: next(iter(run)) for q, run in report.variants["sparse"].run.items()} == {
        "q-valve": "valve",
        "q-moon": "moon",
    }
    assert report.judged_coverage == 1.0 and report.coverage_warning() is None
    assert report.qrels_fingerprint == judgements_fingerprint(queries, qrels)
