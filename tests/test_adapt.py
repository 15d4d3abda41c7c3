"""Corpus adaptation without qrels (issue 9): pseudo-queries from the corpus, the `query_encoder` asset, the
`hybrid-rag adapt` command, and the rule that an adapted encoder is used only when it does not score lower:
on a dev/train split's qrels where they exist (never test), else on held-out pseudo-queries. Real model, real
embedded Qdrant, real Dagster runs on the 60-document sample."""

from __future__ import annotations

import json
import os
import tracemalloc
from dataclasses import replace

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from assets import ALL_ASSETS, chunks, dense_vectors, raw_documents
from assets.query_encoder import query_encoder
from assets.resources import CorporaResource, EvalHistoryResource, RetrievalResource
from evals.collections import EvalCollection, sample_collection
from evals.metrics import evaluate
from evals.pseudo_queries import (
    PSEUDO_GATE,
    AdaptConfig,
    JudgedQueries,
    adapt_query_encoder,
    adaptation_documents,
    candidate_pool,
    dense_ndcg,
    judged_queries,
    judged_split,
    pseudo_queries,
    split_held_out,
    stored_corpus,
)
from evals.runner import retrieve_run
from evals.runs import best_chunk_per_document
from orchestration.cli import app
from orchestration.definitions import defs
from orchestration.parquet_io import ParquetIOManager
from retrieval import Document, RetrievalSettings, RetrievalStack, read_documents
from retrieval.chunking import Chunk
from retrieval.encoders.sparse import SparseVec
from retrieval.search import Variant
from retrieval.settings import ADAPTED_MARKER
from retrieval.store import CollectionSchema, open_store
from tests.conftest import BACKENDS, make_store

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.slow  # trains (a few steps, on the 60-document sample)
SAMPLE = sample_collection()


def test_pseudo_queries_come_from_the_documents_and_hold_out_whole_documents() -> None:
    docs, _ = read_documents(SAMPLE.corpus_path, "jsonl")
    queries = pseudo_queries(docs)
    by_id = {d.id: d for d in docs}
    assert {q.kind for q in queries} == {"title", "sentence"}
    for q in queries:
        assert q.text in (by_id[q.doc_id].title if q.kind == "title" else by_id[q.doc_id].text)
    config = AdaptConfig(holdout=0.3)
    train, held = split_held_out(queries, config)
    assert train and held and not {q.doc_id for q in train} & {q.doc_id for q in held}
    assert split_held_out(queries, config) == (train, held)  # a re-run holds out the same documents


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapt")
    env = {"HYBRID_RAG_QDRANT_PATH": str(root / "data" / "index"), "HYBRID_RAG_CACHE_DIR": str(root / "cache")}
    result = CliRunner().invoke(app, ["index", str(SAMPLE.corpus_path), "-c", "sample"], env=env)
    assert result.exit_code == 0, result.output
    return root, env


@pytest.fixture(scope="module")
def sample_vectors(sample_index):
    root, _ = sample_index
    settings = RetrievalSettings(qdrant_path=root / "data" / "index", collection="sample")
    store = open_store(settings)
    try:
        docs, owners, vectors = stored_corpus(store)
    finally:
        store.close()
    return settings, docs, owners, vectors


def test_the_stored_corpus_is_read_a_page_at_a_time(sample_vectors) -> None:
    settings, docs, owners, vectors = sample_vectors
    store = open_store(settings)
    try:
        paged_docs, paged_owners, paged_vectors = stored_corpus(store, page=7)
        last = sorted(store.stored_hashes())[-1]  # rows follow the sorted point ids
        point = store.points([last], with_dense_vectors=True)[last]
    finally:
        store.close()
    assert vectors.dtype == np.float32 and vectors.shape == (len(owners), 384)
    assert np.array_equal(paged_vectors, vectors) and list(paged_owners) == list(owners)
    assert paged_docs == docs and {d.id for d in docs} == set(SAMPLE.doc_ids())
    assert np.allclose(vectors[-1], point.dense_vector) and owners[-1] == point.payload["doc_id"]


def test_memory_is_bounded_by_the_settings_not_the_corpus(sample_vectors, tmp_path) -> None:
    """Texts are read only for the documents the pseudo-queries come from, vectors only for the candidate pool:
    every chunk of those documents plus ``max_negatives`` others (a seeded uniform sample); adaptation trains
    and judges on that pool."""
    settings, all_docs, all_owners, all_vectors = sample_vectors
    config = AdaptConfig(max_queries=6, max_holdout=3, holdout=0.3, max_negatives=10)
    train, held = adaptation_documents(all_owners, config)  # one id per chunk: repeats are one document
    assert (len(train), len(held)) == (6, 3) and not set(train) & set(held)
    assert adaptation_documents(sorted({d.id for d in all_docs}, reverse=True), config) == (train, held)
    store = open_store(settings)
    try:
        docs, owners, vectors = stored_corpus(store, config, page=5)
        pool = candidate_pool(store.stored_owners(), set(train) | set(held), config)
        stored = store.dense_vectors([pid for pid, _ in pool])
    finally:
        store.close()
    chosen = set(train) | set(held)
    by_id = {d.id: d for d in all_docs}
    assert {d.id for d in docs} == chosen and all(d == by_id[d.id] for d in docs)  # whole texts, these only
    own = np.isin(all_owners, list(chosen))
    assert sum(o in chosen for o in owners) == own.sum() and len(owners) == own.sum() + 10
    assert list(owners) == [o for _, o in pool] and pool == sorted(pool)
    assert np.array_equal(vectors, np.stack([stored[pid] for pid, _ in pool]))  # the pool's stored vectors
    queries = pseudo_queries(all_docs)  # a document's pseudo-queries do not depend on the others read
    assert {q for q in queries if q.doc_id in chosen} == set(pseudo_queries([by_id[d] for d in sorted(chosen)]))
    report = adapt_query_encoder(docs, owners, vectors, settings.dense_model, tmp_path / "out", config)
    assert report.train_queries > 0 and report.held_out_queries > 0 and 0 < report.base_ndcg <= 1


def _synthetic_store(backend: str, root, chunks: int):
    """A real store of ``backend`` holding ``chunks`` synthetic chunks (two per document, 4-d vectors)."""
    store = make_store(backend, root, "synthetic")
    store.ensure(CollectionSchema(dense_model="toy", dense_dim=4, sparse_model="bm25", sparse_idf=True))
    rng = np.random.default_rng(0)
    for start in range(0, chunks, 5000):
        rows = range(start, min(chunks, start + 5000))
        batch = [Chunk(f"doc-{i // 2:06d}", i % 2, f"Sentence {i} of synthetic document {i // 2}.") for i in rows]
        store.upsert(batch, rng.normal(size=(len(batch), 4)).astype(np.float32), [SparseVec([1], [1.0])] * len(batch))
    return store


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_sample_is_seeded_the_same_on_both_backends_and_keeps_the_targets(backend, tmp_path) -> None:
    """The pool is a function of the stored ids and the seed alone (not of the backend, nor of the scroll order):
    same corpus, same seed, same sample; every chunk of the pseudo-queries' documents is always in."""
    config = AdaptConfig(max_queries=40, max_holdout=10, max_negatives=300)
    edge = _synthetic_store("edge", tmp_path / "edge", 3000)
    store = edge if backend == "edge" else _synthetic_store(backend, tmp_path, 3000)
    try:
        docs, owners, vectors = stored_corpus(store, config, page=64)
        again = stored_corpus(store, config)
        expected = stored_corpus(edge, config)
        other_seed = stored_corpus(store, replace(config, seed=7))[1]
        owned = {pid: owner for pid, owner in store.stored_owners()}
    finally:
        store.close()
        edge.close()
    assert docs == again[0] == expected[0] and list(owners) == list(again[1]) == list(expected[1])
    assert np.allclose(vectors, expected[2], atol=1e-6)  # the backends store float32 alike, up to rounding
    targets = {d.id for d in docs}
    assert len(targets) == 50 and len(owners) == 2 * 50 + 300  # all chunks of the targets, 300 others
    assert sum(o in targets for o in owned.values()) == sum(o in targets for o in owners)
    assert set(other_seed) != set(owners)


def test_sampling_memory_does_not_grow_with_the_store(tmp_path) -> None:
    """Drawing the pool scrolls the ids a page at a time and keeps only the samples: the Python heap's peak
    (tracemalloc) is the same for 4x the chunks (it held every point id and document id, about 0.4 KB a chunk)."""
    config = AdaptConfig(max_queries=50, max_holdout=10, max_negatives=500)
    peaks = []
    for size in (4000, 16000):
        store = _synthetic_store("edge", tmp_path / str(size), size)
        try:
            tracemalloc.start()
            docs, owners, _ = stored_corpus(store, config)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
            store.close()
        assert len(docs) == 60 and len(owners) == 2 * 60 + 500
    assert peaks[1] < 1.3 * peaks[0] and peaks[1] < 3_000_000, peaks


def test_dense_ndcg_in_blocks_is_exact_search(sample_vectors) -> None:
    """Scored a block of queries at a time (memory stays block x chunks), the same as ranking every chunk."""
    _, _, owners, vectors = sample_vectors
    rng = np.random.default_rng(0)
    queries = vectors[rng.choice(len(vectors), 40, replace=False)] + rng.normal(0, 0.05, (40, vectors.shape[1]))
    qids = [f"q{i}" for i in range(40)]
    qrels = {q: {str(owners[rng.integers(len(owners))]): 1} for q in qids}
    full = {
        q: best_chunk_per_document((str(owners[i]), float(row[i])) for i in np.argsort(-row))
        for q, row in zip(qids, queries @ vectors.T, strict=True)
    }
    expected = evaluate(qrels, full, k_values=(10,)).mean["ndcg@10"]
    assert 0 < expected < 1
    assert dense_ndcg(queries, qids, qrels, owners, vectors, block=7) == pytest.approx(expected)
    assert dense_ndcg(queries, qids, qrels, owners, vectors, depth=10**6) == pytest.approx(expected)


def test_cli_adapt_saves_an_encoder_that_searches_then_use(sample_index) -> None:
    root, env = sample_index
    result = CliRunner().invoke(app, ["adapt", "-c", "sample"], env=env)
    assert result.exit_code == 0, result.output
    settings = RetrievalSettings(qdrant_path=root / "data" / "index", cache_dir=root / "cache", collection="sample")
    out = settings.adapted_query_dir()
    assert out == root / "data" / "models" / "sample" / "query_encoder"
    if "not used" in result.output:
        assert not out.exists() and settings.resolved_query_model() is None
        return
    assert (out / ADAPTED_MARKER).is_file() and settings.resolved_query_model() == str(out)
    with RetrievalStack(settings) as stack:
        retriever = stack.retriever()
        assert retriever.query_encoder.model_name == str(out)
        assert retriever.search("valve gasket", k=3)  # the adapted encoder answers queries
    other_model = settings.model_copy(update={"dense_model": "another-model"})
    assert other_model.resolved_query_model() is None  # trained against other vectors: ignored


def test_tune_reranker_writes_where_adapt_and_searches_look(sample_index, tmp_path, monkeypatch) -> None:
    """One place says where a collection's models live: ``$HYBRID_RAG_MODELS_DIR/<collection>``."""
    root, env = sample_index
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    args = ["tune-reranker", "sample", "-c", "sample", "--no-train"]
    result = CliRunner().invoke(app, args, env={**env, "HYBRID_RAG_MODELS_DIR": str(models)})
    assert result.exit_code == 0, result.output
    settings = RetrievalSettings(qdrant_path=root / "data" / "index", collection="sample", models_dir=models)
    assert (models / "sample" / "reranker.env").is_file() and not (tmp_path / "data").exists()
    assert settings.collection_models_dir() == models / "sample" == settings.adapted_query_dir().parent


def test_an_adaptation_that_hurts_is_not_used_and_removes_an_earlier_one(sample_vectors, tmp_path) -> None:
    settings, docs, owners, vectors = sample_vectors
    out = tmp_path / "query_encoder"
    out.mkdir()
    (out / ADAPTED_MARKER).write_text("{}")  # an earlier adapted encoder
    # A learning rate this large wrecks the model: the held-out pseudo-queries must catch it.
    report = adapt_query_encoder(
        docs, owners, vectors, settings.dense_model, out, AdaptConfig(learning_rate=0.05, holdout=0.3)
    )
    assert report.adapted_ndcg < report.base_ndcg and not report.used
    assert report.gate == PSEUDO_GATE and report.judged_base_ndcg is None
    assert not out.exists()


def _default_search_rankings(stack: RetrievalStack) -> dict[str, list[str]]:
    """The default search's document ranking (hybrid + rerank, no adapted encoder) of every sample query, as
    the judge measures it."""
    retriever = stack.retriever(adapted_query_model=False)
    run, _ = retrieve_run(retriever, SAMPLE.queries(), Variant.HYBRID_RERANK, progress=False)
    return {qid: sorted(scores, key=lambda d: -scores[d]) for qid, scores in run.items()}


def test_judged_queries_decide_over_the_pseudo_queries_both_ways(sample_vectors, tmp_path) -> None:
    """Synthetic judgements (real queries, real model, real index) built from the default search's own rankings,
    so that the judge must disagree with the held-out pseudo-queries: the judge decides."""
    settings, docs, owners, vectors = sample_vectors
    queries = SAMPLE.queries()
    out = tmp_path / "query_encoder"
    with RetrievalStack(settings) as stack:
        rankings = _default_search_rankings(stack)
        # The default search's own top 10, graded in its order: it scores 1.0, any change of order is worse.
        own_top = JudgedQueries(
            "dev", queries, {q: {d: 10 - r for r, d in enumerate(rs[:10])} for q, rs in rankings.items()}
        )

        def adapt(judged: JudgedQueries, config: AdaptConfig):
            return adapt_query_encoder(
                docs, owners, vectors, settings.dense_model, out, config, judged=judged, stack=stack
            )

        report = adapt(own_top, AdaptConfig(max_queries=64, learning_rate=1e-4))
        assert report.adapted_ndcg >= report.base_ndcg  # the pseudo-queries would accept it
        assert report.judged_base_ndcg == pytest.approx(1.0, abs=1e-3)
        assert report.judged_adapted_ndcg < report.judged_base_ndcg - 0.01
        assert report.gate == "qrels (dev, 32 queries)" and not report.used
        assert not out.exists() and not out.with_name(out.name + ".candidate").exists()

        # The default search's last-ranked document: it scores 0, so the adapted encoder cannot score lower.
        own_last = JudgedQueries("dev", queries, {q: {rs[-1]: 1} for q, rs in rankings.items()})
        # A learning rate that wrecks the model: the pseudo-queries refuse it.
        report = adapt(own_last, AdaptConfig(max_queries=64, learning_rate=0.05, holdout=0.3))
    assert report.adapted_ndcg < report.base_ndcg
    assert report.judged_base_ndcg == 0.0 and report.used
    marker = json.loads((out / ADAPTED_MARKER).read_text())
    assert marker["gate"] == report.gate
    assert marker["judged_ndcg@10"] == {"split": "dev", "base": 0.0, "adapted": report.judged_adapted_ndcg}
    assert marker["held_out_ndcg@10"] == {"base": report.base_ndcg, "adapted": report.adapted_ndcg}
    with pytest.raises(ValueError, match="pass the collection's stack"):
        adapt_query_encoder(docs, owners, vectors, settings.dense_model, out, judged=own_last)


def test_a_test_split_never_judges(sample_vectors, sample_index, tmp_path) -> None:
    settings, docs, owners, vectors = sample_vectors
    with pytest.raises(ValueError, match="'test' split cannot judge"):
        adapt_query_encoder(
            docs,
            owners,
            vectors,
            settings.dense_model,
            tmp_path / "out",
            judged=JudgedQueries("test", SAMPLE.split_queries("test"), SAMPLE.qrels("test")),
        )
    with pytest.raises(ValueError, match="'test' split cannot judge"):
        judged_queries(SAMPLE, "test")
    with pytest.raises(ValueError, match="evaluation split"):
        judged_queries(SAMPLE, "train", evaluated="train")
    assert not (tmp_path / "out").exists()
    _, env = sample_index
    runner = CliRunner()
    for args, message in [
        (["--qrels", str(SAMPLE.root), "--split", "test"], "'test' split cannot judge"),
        (["--qrels", str(SAMPLE.root), "--split", "TEST"], "no split 'TEST'"),
        (["--qrels", str(SAMPLE.root), "--split", "dev"], "no split 'dev'; available: test, train"),
        (["--split", "train"], "--split needs --qrels"),
        (["--qrels", str(tmp_path)], "not a BEIR folder"),
    ]:
        result = runner.invoke(app, ["adapt", "-c", "sample", *args], env=env)
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def _beir(root, splits: list[str]) -> EvalCollection:
    (root / "qrels").mkdir(parents=True)
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q-{s}", "text": s}) + "\n" for s in splits))
    for s in splits:
        (root / "qrels" / f"{s}.tsv").write_text(f"query-id\tcorpus-id\tscore\nq-{s}\td1\t1\n")
    return EvalCollection(root.name, root)


def test_a_judging_split_without_a_relevant_judgement_is_refused(tmp_path, monkeypatch) -> None:
    """All grades 0: every search scores 0 there, so the adapted encoder would pass unjudged; refused, nothing run."""
    root = tmp_path / "zero"
    _beir(root, ["train"])
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq-train\td1\t0\n")
    with pytest.raises(ValueError, match="no relevant judgement"):
        judged_queries(EvalCollection("zero", root))
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))  # no collection: refused before any
    monkeypatch.setenv("HYBRID_RAG_MODELS_DIR", str(tmp_path / "models"))
    result = CliRunner().invoke(app, ["adapt", "-c", "zero", "--qrels", str(root)])
    assert result.exit_code == 2 and "no relevant judgement" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    ("splits", "evaluated", "expected"),
    [
        (["dev", "test", "train"], None, "dev"),
        (["dev", "train"], "dev", "train"),  # the corpus' evaluation split never judges
        (["test", "train"], "test", "train"),
        (["train"], "train", None),
        (["test"], None, None),
        ([], None, None),
    ],
)
def test_the_judged_split_is_dev_else_train_never_test(tmp_path, splits, evaluated, expected) -> None:
    collection = _beir(tmp_path / "beir", splits)
    assert judged_split(collection, evaluated) == expected
    judged = judged_queries(collection, evaluated=evaluated)
    if expected is None:
        assert judged is None
    else:
        assert judged.split == expected and judged.queries == {f"q-{expected}": expected}
        assert judged.qrels == {f"q-{expected}": {"d1": 1}} and judged.gate == f"qrels ({expected}, 1 query)"


def test_cli_adapt_judged_by_qrels(sample_index) -> None:
    root, env = sample_index
    result = CliRunner().invoke(
        app, ["adapt", "-c", "sample", "--qrels", str(SAMPLE.root), "--max-queries", "64"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "decided by qrels (train, 11 queries)" in " ".join(result.output.split())
    rows = [[c.strip() for c in line.split("│")[1:6]] for line in result.output.splitlines() if line.count("│") == 6]
    judge = next(r for r in rows if r[0] == "qrels (train, 11 queries)")
    assert judge[1] == "hybrid+rerank" and judge[4] == "yes"  # the default search decides
    pseudo = next(r for r in rows if r[0].startswith("held-out pseudo-queries"))
    assert (pseudo[1], pseudo[4]) == ("dense", "no")
    base, adapted = (float(judge[i]) for i in (2, 3))
    marker = RetrievalSettings(qdrant_path=root / "data" / "index", collection="sample").adapted_query_dir()
    assert (marker / ADAPTED_MARKER).is_file() == (adapted >= base) == ("not used" not in result.output)
    if adapted >= base:
        saved = json.loads((marker / ADAPTED_MARKER).read_text())
        assert saved["gate"] == "qrels (train, 11 queries)" and saved["judged_ndcg@10"]["split"] == "train"


def test_query_encoder_asset_on_the_sample_partition(tmp_path) -> None:
    assert defs.resolve_job_def("adapt").name == "adapt"
    retrieval = RetrievalResource(qdrant_path=str(tmp_path / "data" / "index"), cache_dir=str(tmp_path / "cache"))
    resources = {
        "retrieval": retrieval,
        "corpora": CorporaResource(),
        "io_manager": ParquetIOManager(base_dir=str(tmp_path / "assets")),
        "eval_history": EvalHistoryResource(path=str(tmp_path / "history.sqlite")),
    }
    # The judge searches the published index: without one, the asset says what to run first.
    with pytest.raises(dg.Failure, match="judge read the published index of 'sample'.*run the reindex job first"):
        dg.materialize(
            [raw_documents, chunks, dense_vectors, query_encoder], partition_key="sample", resources=resources
        )
    assert not retrieval.settings("sample").adapted_query_dir().exists()
    result = dg.materialize([*ALL_ASSETS, query_encoder], partition_key="sample", resources=resources)
    assert result.success
    meta = {
        k: getattr(v, "value", v)
        for k, v in result.asset_materializations_for_node("query_encoder")[0].metadata.items()
    }
    assert meta["train_pseudo_queries"] > 0 and meta["held_out_pseudo_queries"] > 0 and meta["steps"] > 0
    # The sample corpus is evaluated on test and has train qrels: they decide, never the test split.
    assert meta["gate"] == "qrels (train, 11 queries)" and meta["judged_split"] == "train"
    assert meta["used"] == (meta["judged_ndcg@10_adapted"] >= meta["judged_ndcg@10_base"])
    assert "held_out_ndcg@10_base" in meta and "held_out_ndcg@10_adapted" in meta
    out = retrieval.settings("sample").adapted_query_dir()
    assert (out / ADAPTED_MARKER).is_file() == meta["used"]
    assert meta["chunks_ranked"] == len(SAMPLE.doc_ids())  # one chunk a document; every one in the pool


def test_query_encoder_reads_the_index_and_checks_its_tables_lazily(tmp_path) -> None:
    """The asset reads texts and vectors from the published index, as ``hybrid-rag adapt`` does (not the
    ``raw_documents`` table, nor whole tables); ``chunks`` and ``dense_vectors`` are opened lazily and still
    must agree (ids, content hashes, order, model) or the asset fails before training."""
    retrieval = RetrievalResource(qdrant_path=str(tmp_path / "data" / "index"), cache_dir=str(tmp_path / "cache"))
    assets_dir = tmp_path / "assets"
    resources = {
        "retrieval": retrieval,
        "corpora": CorporaResource(),
        "io_manager": ParquetIOManager(base_dir=str(assets_dir)),
        "eval_history": EvalHistoryResource(path=str(tmp_path / "history.sqlite")),
    }
    assert dg.materialize(ALL_ASSETS, partition_key="sample", resources=resources).success
    (assets_dir / "raw_documents" / "sample.parquet").unlink()  # the asset never reads it
    vectors_file = assets_dir / "dense_vectors" / "sample.parquet"
    vectors = pq.read_table(vectors_file)
    hashes = vectors.column("content_hash").to_pylist()
    stale = {
        "a chunk changed": vectors.set_column(1, "content_hash", pa.array(["changed", *hashes[1:]])),
        "rows out of order": vectors.take([1, 0, *range(2, vectors.num_rows)]),
        "a chunk missing": vectors.slice(1),
        "another model": vectors.replace_schema_metadata({b"hybrid_rag.model": b"another-model"}),
    }
    for what, table in stale.items():
        pq.write_table(table, vectors_file)
        with pytest.raises(dg.Failure, match="dense_vectors is out of date with chunks or the dense model"):
            dg.materialize(
                [*ALL_ASSETS, query_encoder], selection=[query_encoder], partition_key="sample", resources=resources
            )
        assert not retrieval.settings("sample").adapted_query_dir().exists(), what


def test_the_sample_reads_one_version_while_a_writer_publishes(tmp_path, dense_encoder, sparse_encoder) -> None:
    """A rebuild published between the two scrolls (and the reads after them) does not mix versions: the sample
    is drawn from the version the first scroll read, whole (it mixed, or failed on a vector gone from the next)."""
    from retrieval import Document, RetrievalStack
    from retrieval.store import EdgeStore
    from tests.test_reliability_versions import settings_for

    def docs(prefix: str) -> list[Document]:
        return [Document(f"{prefix}{i}", f"Note {i} on pump seals, valves and gaskets ({prefix}).") for i in range(30)]

    root = tmp_path / "index"
    writer = RetrievalStack(settings_for(root), dense=dense_encoder, sparse=sparse_encoder)
    writer.indexer().index(docs("a"), progress=False)
    reader = EdgeStore(root, "test")
    scrolls = reader.stored_owners

    def publish_after_first_scroll():
        yield from scrolls()
        if writer.store().current_version() == 1:
            writer.indexer().rebuild(docs("b"), allow_delete=True, progress=False)

    reader.stored_owners = publish_after_first_scroll
    try:
        sample, owners, vectors = stored_corpus(reader, AdaptConfig(max_queries=10, max_holdout=4, max_negatives=5))
        assert writer.store().current_version() == 2  # published in between
    finally:
        reader.close()
        writer.close()
    assert {d.id[0] for d in sample} == {o[0] for o in owners} == {"a"}
    assert len(owners) == len(vectors) == len(sample) + 5  # every chunk of the sampled documents, 5 others


def test_pseudo_queries_of_documents_without_a_title_are_their_sentences() -> None:
    """A title of None (no title) asks no title query, as an empty one: it raised an AttributeError."""
    text = "Replace the valve gasket every two years to prevent leaks. Check the pump pressure after each refill."
    untitled = pseudo_queries([Document("d", text, None)])
    assert untitled == pseudo_queries([Document("d", text, "")]) and untitled
    assert {q.kind for q in untitled} == {"sentence"}
