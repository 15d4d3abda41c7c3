"""BEIR collections, the shipped sample, and the train-only view for tuning."""

import json
import re
import shutil
import unicodedata
import zipfile

import pytest

from evals.collections import (
    CollectionFormatError,
    EvalCollection,
    TrainSplitView,
    download_beir,
    load_collection,
    read_qrels,
    sample_collection,
)
from evals.metrics import evaluate
from retrieval.errors import InputNotFoundError, InvalidArgumentError


@pytest.fixture
def sample():
    return sample_collection()


def test_sample_loads(sample):
    assert sample.name == "sample"
    assert sample.splits() == ["test", "train"]
    docs = [json.loads(line) for line in sample.corpus_path.read_text(encoding="utf-8").splitlines()]
    assert 50 <= len(docs) <= 80
    for doc in docs:
        assert set(doc) == {"_id", "title", "text", "metadata"}
        assert isinstance(doc["metadata"]["topic"], str) and isinstance(doc["metadata"]["year"], int)
    assert len({doc["metadata"]["topic"] for doc in docs}) >= 8
    assert 25 <= len(sample.queries()) <= 40


def test_sample_splits_are_disjoint_and_consistent(sample):
    train, test = sample.qrels("train"), sample.qrels("test")
    assert 8 <= len(train) <= 15 and 15 <= len(test) <= 25
    assert not train.keys() & test.keys()
    doc_ids, queries = sample.doc_ids(), sample.queries()
    for qrels in (train, test):
        for qid, docs in qrels.items():
            assert qid in queries
            assert 1 <= len(docs) <= 3
            assert docs.keys() <= doc_ids, f"{qid}: judged docs missing from the corpus"
    assert not doc_ids & queries.keys()  # no query id doubles as a doc id (BEIR's identical-id rule)
    assert list(sample.split_queries("train")) == list(train)


def test_sample_is_neither_trivial_nor_hopeless_for_bm25(sample):
    rank_bm25 = pytest.importorskip("rank_bm25")
    docs = [json.loads(line) for line in sample.corpus_path.read_text(encoding="utf-8").splitlines()]
    tokens = [re.findall(r"\w+", f"{d['title']} {d['text']}".lower()) for d in docs]
    bm25 = rank_bm25.BM25Okapi(tokens)
    queries = sample.split_queries("test")
    run = {}
    for qid, text in queries.items():
        scores = bm25.get_scores(re.findall(r"\w+", text.lower()))
        run[qid] = {d["_id"]: float(s) for d, s in zip(docs, scores, strict=True)}
    ndcg = evaluate(sample.qrels("test"), run).mean["ndcg@10"]
    assert 0.5 < ndcg < 0.95  # paraphrased queries defeat plain word matching on some queries


def test_train_view_refuses_test_split(sample):
    view = sample.train_view()
    assert isinstance(view, TrainSplitView)
    assert view.name == "sample" and view.splits() == ["train"]
    assert view.corpus_path == sample.corpus_path
    assert view.qrels() == sample.qrels("train") == view.qrels("train")
    assert view.queries() == sample.split_queries("train")  # test query texts are not exposed either
    assert not view.queries().keys() & sample.qrels("test").keys()
    with pytest.raises(PermissionError, match="'test' is held out"):
        view.qrels("test")
    with pytest.raises(PermissionError, match="held out"):
        view.split_queries("test")
    with pytest.raises(PermissionError):
        TrainSplitView(sample, "test")
    assert not hasattr(view, "collection")


def test_load_collection_by_name_or_path(tmp_path, sample):
    assert load_collection("sample") == sample
    copy = tmp_path / "mini"
    shutil.copytree(sample.root, copy)
    loaded = load_collection(copy)
    assert loaded.name == "mini" and loaded.qrels("test") == sample.qrels("test")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_collection(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing queries.jsonl, qrels"):
        load_collection(tmp_path / "empty")


def test_a_folder_of_queries_and_qrels_without_a_corpus_loads(tmp_path, sample):
    """The form corpora.yaml's `qrels:` takes: judgements of a collection indexed from a text folder or a JSONL
    file; a corpus file holding no document is none either."""
    judged = tmp_path / "judged"
    (judged / "qrels").mkdir(parents=True)
    for name in ("queries.jsonl", "qrels/test.tsv"):
        (judged / name).write_text((sample.root / name).read_text())
    loaded = load_collection(judged)
    assert loaded.split_queries("test") == sample.split_queries("test") and loaded.doc_ids() == set()
    (judged / "corpus.jsonl").write_text("")
    assert load_collection(judged).doc_ids() == set()


def test_missing_split_is_a_clear_error(sample):
    with pytest.raises(FileNotFoundError, match=r"no split 'dev'.*available: test, train"):
        sample.qrels("dev")


def test_a_qrels_folder_without_a_tsv_file_says_what_it_holds(tmp_path):
    """A TREC-style `qrels/test.txt` is no split: the error said 'available: ' and nothing more."""
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.txt").write_text("q1\td1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"available: none: qrels/ holds no SPLIT.tsv file \(test.txt\)$"):
        EvalCollection("mine", tmp_path).qrels("test")


def _collection(tmp_path, qrels_text, queries=({"_id": "q1", "text": "hi"},)):
    (tmp_path / "qrels").mkdir(parents=True, exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "", "text": "x"}) + "\n")
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (tmp_path / "qrels" / "test.tsv").write_text(qrels_text)
    return EvalCollection("tmp", tmp_path)


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("q1\td2", "expected 3 tab-separated fields"),
        ("q1 d2 1", "expected 3 tab-separated fields"),
        ("q1\td2\t1\t", "'query-id<TAB>corpus-id<TAB>score', got 4 .the line ends with a tab after the score"),
        ("q1\td2\t1\t\t", "got 5 .the line ends with a tab after the score: remove it.$"),
        ("q1\td2\t1\tmaybe", "<TAB>score', got 4 .an extra field after the score: 'maybe'.$"),
        ("q1\td2\tyes", "score 'yes' is not an integer"),
        ("q1\td1\t2", r"judged 2 here but 1 on line 2"),
        ("\td2\t1", "empty query-id"),
    ],
)
def test_malformed_qrels_line_names_file_and_line(tmp_path, bad_line, reason):
    coll = _collection(tmp_path, f"query-id\tcorpus-id\tscore\nq1\td1\t1\n{bad_line}\n")
    with pytest.raises(CollectionFormatError, match=reason) as err:
        coll.qrels("test")
    assert str(err.value).startswith(f"{coll.qrels_path('test')}:3: ")


def test_qrels_without_header_keeps_first_line(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text("q1\td1\t1\nq1\td2\t0\n")
    assert read_qrels(path) == {"q1": {"d1": 1, "d2": 0}}


def test_a_header_with_other_names_says_which_header_is_skipped(tmp_path):
    """A header of another tool's names is not taken for one: the error says the header BEIR's files have."""
    path = tmp_path / "q.tsv"
    path.write_text("query_id\tdoc_id\trelevance\nq1\td1\t1\n")
    with pytest.raises(CollectionFormatError, match=r"q.tsv:1: score 'relevance' is not an integer \(a header line "):
        read_qrels(path)


def test_bad_queries_file_and_unknown_query_ids(tmp_path):
    coll = _collection(tmp_path, "q2\td1\t1\n")
    with pytest.raises(CollectionFormatError, match=r"1 query id not in queries.jsonl"):
        coll.split_queries("test")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q2", "text": \n')
    with pytest.raises(CollectionFormatError, match=r"queries.jsonl:2: malformed JSON"):
        coll.queries()


def test_download_beir_unpacks_archive(tmp_path, sample):
    # a local file:// URL stands in for the BEIR server: same zip layout, no network
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "mini.zip", "w") as zf:
        for path in sample.root.rglob("*"):
            if path.is_file():
                zf.write(path, f"mini/{path.relative_to(sample.root).as_posix()}")
    url = (served / "{name}.zip").as_uri().replace("%7B", "{").replace("%7D", "}")
    coll = download_beir("mini", tmp_path / "datasets", url=url)
    assert coll.name == "mini" and coll.qrels("test") == sample.qrels("test")
    assert not (tmp_path / "datasets" / "mini.zip").exists()
    (served / "mini.zip").unlink()  # already unpacked: no second download
    assert download_beir("mini", tmp_path / "datasets", url=url) == coll


def test_download_beir_refuses_paths_outside_dest(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    with zipfile.ZipFile(served / "evil.zip", "w") as zf:
        zf.writestr("../escaped.txt", "x")
    url = (served / "{name}.zip").as_uri().replace("%7B", "{").replace("%7D", "}")
    with pytest.raises(CollectionFormatError, match="unsafe path"):
        download_beir("evil", tmp_path / "datasets", url=url)
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("header", ["query-id\tcorpus-id\tscore\n", ""], ids=["header", "no header"])
def test_a_utf8_byte_order_mark_is_ignored_in_qrels_and_queries(tmp_path, header):
    """Excel's "CSV UTF-8", Notepad and PowerShell start a file with a BOM: not part of the header or an id."""
    coll = _collection(
        tmp_path, "\ufeff" + header + "q1\td1\t1\n", ({"_id": "q1", "text": "hi"}, {"_id": "q2", "text": "b"})
    )
    coll.queries_path.write_text("\ufeff" + coll.queries_path.read_text(), encoding="utf-8")
    assert coll.qrels("test") == {"q1": {"d1": 1}}
    assert coll.split_queries("test") == {"q1": "hi"}


def test_ids_are_read_in_unicode_nfc(tmp_path):
    """A qrels file written by a macOS tool names `café` decomposed: the same id as the index's composed one."""
    nfd = unicodedata.normalize("NFD", "café.md")
    coll = _collection(tmp_path, f"q-é\t{nfd}\t1\n", ({"_id": unicodedata.normalize("NFD", "q-é"), "text": "x"},))
    assert coll.qrels("test") == {"q-é": {"café.md": 1}} and coll.split_queries("test") == {"q-é": "x"}
    coll.corpus_path.write_text(json.dumps({"_id": nfd, "text": "x"}) + "\n")
    assert coll.doc_ids() == {"café.md"}
    coll.qrels_path("test").write_text(f"q-é\t{nfd}\t1\nq-é\tcafé.md\t2\n")  # one id judged twice, apart
    with pytest.raises(CollectionFormatError, match="judged 2 here but 1 on line 1"):
        coll.qrels("test")


@pytest.mark.parametrize(
    ("queries", "qrels", "message"),
    [
        ({"q1": "  "}, {"q1": {"d1": 1}}, "notebook: query 'q1': empty text"),
        ({"q1": None}, {"q1": {"d1": 1}}, "notebook: query 'q1': text must be a string, got NoneType"),
        ({7: "text"}, {"q1": {"d1": 1}}, "notebook: query id 7 is not a non-empty string"),
        ({"q1": "text"}, {"q1": {"d1": 1}, "q9": {"d1": 1}}, "1 query id in qrels not in queries, e.g. ['q9']"),
        ({"q1": "text"}, {"q1": {"d1": 1.5}}, "qrels of query 'q1': grade 1.5 of 'd1' is not an integer"),
        ({"q1": "text"}, {"q1": {"d1": "1"}}, "qrels of query 'q1': grade '1' of 'd1' is not an integer"),
        ({"q1": "text"}, {"q1": {"d1": True}}, "qrels of query 'q1': grade True of 'd1' is not an integer"),
        ({"q1": "text"}, {"q1": {}}, "qrels of query 'q1': expected a non-empty dict {doc_id: grade}"),
        ({"q1": "text"}, {"q1": {"": 1}}, "qrels of query 'q1': document id '' is not a non-empty string"),
        ({"q1": "text"}, {}, "notebook: qrels is empty"),
        ([("q1", "text")], {"q1": {"d1": 1}}, "queries must be a dict {query_id: text}, got list"),
    ],
)
def test_a_collection_from_dicts_refuses_what_the_files_would_in_one_line(queries, qrels, message):
    with pytest.raises(InvalidArgumentError) as info:
        EvalCollection.from_dicts("notebook", queries, qrels)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_collection_from_dicts_reads_like_the_files_and_has_no_files():
    """Ids in NFC as the files' are, grades as ints, one split; a tuning view of its train split works, and a
    file asked of it is an error saying it is held in memory."""
    nfd = unicodedata.normalize("NFD", "café")
    coll = EvalCollection.from_dicts("mem", {nfd: "espresso"}, {nfd: {nfd: 1}}, corpus=["d1", nfd], split="train")
    nfc_id = unicodedata.normalize("NFC", "café")
    assert coll.splits() == ["train"] and coll.queries() == {nfc_id: "espresso"}
    assert coll.qrels("train") == {nfc_id: {nfc_id: 1}} and coll.doc_ids() == {"d1", nfc_id}
    assert coll.train_view().split_queries() == {nfc_id: "espresso"}
    with pytest.raises(InputNotFoundError, match="no split 'test'; available: train"):
        coll.qrels("test")
    with pytest.raises(InputNotFoundError, match=r"mem: held in memory \(EvalCollection.from_dicts\)"):
        coll.corpus_path  # noqa: B018
