"""The files users have, read by every input reader: line ends (CRLF, a lone CR), encodings (UTF-16 from PowerShell
or Notepad, Latin-1/Windows-1252, a UTF-8 BOM), gzip, and JSON that is not JSON Lines. Each is either read as
meant or refused once, naming the file (and line) and what to do, never a traceback or a file's worth of
misleading per-line errors."""

from __future__ import annotations

import gzip
import json

import pytest
from typer.testing import CliRunner

from assets.corpora import CorpusConfigError, load_corpora
from evals.collections import CollectionFormatError, load_collection
from evals.runs import RunFormatError, read_run
from orchestration.cli import app
from retrieval.documents import BadInputError, read_documents

RECORDS = [{"_id": "a", "text": "alpha été"}, {"_id": "b", "text": "beta"}]
CORPORA = "default: docs\ncorpora:\n  docs:\n    source: docs\n    format: dir\n    collection: docs\n"
LINES = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECORDS)


@pytest.mark.parametrize("policy", ["fail", "skip"])
@pytest.mark.parametrize("end", ["\r", "\r\n"])
def test_jsonl_lines_ending_in_a_lone_cr_or_crlf_are_records(tmp_path, end, policy):
    """A lone CR ends a line (classic Mac OS, some exporters), as the evaluation readers and an editor take it: it
    was one line 'malformed JSON: Extra data', and under skip nothing was indexed ('the others are indexed')."""
    path = tmp_path / "docs.jsonl"
    path.write_bytes(LINES.replace("\n", end).encode())
    docs, report = read_documents(path, policy=policy)
    assert [(d.id, d.text) for d in docs] == [("a", "alpha été"), ("b", "beta")]
    assert report.skipped == []


def test_a_bad_line_of_a_cr_file_is_named_by_its_own_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"_id": "a", "text": "x"}\r\r{"_id": "b"}\r{"_id": "c", "text": "z"}\r')
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["a", "c"]
    assert [str(p) for p in report.skipped] == [f"{path}:3: document 'b': missing or non-string 'text'"]


@pytest.mark.parametrize("policy", ["fail", "skip"])
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (LINES.encode("utf-16"), "UTF-16 text (byte order mark FF FE): save it as UTF-8"),
        (b"\xfe\xff" + LINES.encode("utf-16-be"), "UTF-16 text (byte order mark FE FF): save it as UTF-8"),
        (gzip.compress(LINES.encode()), "gzip-compressed: decompress it first (gunzip -k FILE)"),
    ],
    ids=["utf-16-le", "utf-16-be", "gzip"],
)
def test_a_utf16_or_gzip_jsonl_file_is_refused_as_a_whole(tmp_path, data, reason, policy):
    """Windows PowerShell's ``>`` writes UTF-16: it was 'line 1: not valid UTF-8 (byte 0)', then 'malformed JSON'
    for every other line, and under skip exit 0 with nothing indexed. Now one error, under either policy."""
    path = tmp_path / "docs.jsonl"
    path.write_bytes(data)
    with pytest.raises(BadInputError) as caught:
        read_documents(path, "jsonl", policy)
    assert str(caught.value) == f"{path}: {reason}"
    assert not caught.value.skippable


@pytest.mark.parametrize("policy", ["fail", "skip"])
@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        (
            "a.json",
            json.dumps(RECORDS),
            "a JSON array, not JSON Lines (one document object per line): convert it, "
            "e.g. jq -c '.[]' a.json > a.jsonl",
        ),
        (
            "a.json",
            json.dumps(RECORDS, indent=2),
            "a JSON array, not JSON Lines (one document object per line): "
            "convert it, e.g. jq -c '.[]' a.json > a.jsonl",
        ),
        (
            "a.jsonl",
            json.dumps(RECORDS[0], indent=2),
            "JSON written over several lines, not JSON Lines (one document "
            "object per line): convert it, e.g. jq -c . a.jsonl > a-lines.jsonl",
        ),
    ],
    ids=["array", "indented array", "indented object"],
)
def test_a_json_array_or_pretty_printed_json_is_refused_with_how_to_convert_it(tmp_path, name, text, reason, policy):
    """A .json file is read as JSONL: an array was 'expected a JSON object, got list' (one record skipped) and a
    pretty-printed one 'malformed JSON' on each of its lines; under skip nothing was indexed, exit 0."""
    path = tmp_path / name
    path.write_text("\n" + text)
    with pytest.raises(BadInputError) as caught:
        read_documents(path, policy=policy)
    assert str(caught.value) == f"{path}:2: {reason}"


def test_a_leading_bad_line_of_jsonl_is_still_one_skipped_record(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("# my corpus\n" + LINES)
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["a", "b"]
    assert [p.line for p in report.skipped] == [1]


def test_markdown_front_matter_with_lone_cr_line_ends_is_metadata(tmp_path):
    """A Markdown file saved with CR line ends kept its front matter as text (and its title came from a heading)."""
    (tmp_path / "cr.md").write_bytes(b"---\rtitle: CR Title\rtags: [ops]\r---\r# Heading\rbody of the file\r")
    (doc,), _ = read_documents(tmp_path)
    assert (doc.title, doc.text, doc.metadata) == (
        "CR Title",
        "# Heading\rbody of the file\r",
        {"tags": ["ops"], "source_path": "cr.md"},
    )


def test_a_nul_byte_anywhere_in_a_text_file_is_binary_content(tmp_path):
    """Only the first 8 KiB were checked: a NUL after them was indexed as text."""
    (tmp_path / "late.txt").write_bytes(b"words " * 2000 + b"\x00 tail")
    with pytest.raises(BadInputError, match=r"late\.txt: binary content \(NUL bytes\) in a text file"):
        read_documents(tmp_path)


def test_a_latin1_file_names_the_byte_and_the_fix(tmp_path):
    (tmp_path / "cp1252.txt").write_bytes("smart “quotes” café\n".encode("cp1252"))
    (tmp_path / "l.jsonl").write_bytes('{"_id": "x", "text": "café"}\n'.encode("latin-1"))
    with pytest.raises(BadInputError) as caught:
        read_documents(tmp_path / "cp1252.txt")
    assert str(caught.value).endswith(
        "cp1252.txt:1: not valid UTF-8 (byte offset 6: b'\\x93'; Latin-1 or Windows-1252? save it as UTF-8)"
    )
    with pytest.raises(BadInputError) as caught:
        read_documents(tmp_path / "l.jsonl")
    assert str(caught.value).endswith(
        "l.jsonl:1: not valid UTF-8 (byte 25: b'\\xe9'; Latin-1 or Windows-1252? save the file as UTF-8)"
    )


QUERIES = b'{"_id": "q1", "text": "alpha?", "metadata": {"lang": "en"}}\n'
QRELS = b"query-id\tcorpus-id\tscore\nq1\td1\t1\n"


def _beir(root, queries=QUERIES, qrels=QRELS, corpus=b'{"_id": "d1", "text": "alpha"}\n'):
    (root / "qrels").mkdir(parents=True)
    (root / "corpus.jsonl").write_bytes(corpus)
    (root / "queries.jsonl").write_bytes(queries)
    (root / "qrels" / "test.tsv").write_bytes(qrels)
    return load_collection(root)


@pytest.mark.parametrize(
    ("file", "data", "reason"),
    [
        ("queries.jsonl", QUERIES.decode().encode("utf-16"), "UTF-16 text (byte order mark FF FE): save it as UTF-8"),
        ("qrels/test.tsv", QRELS.decode().encode("utf-16"), "UTF-16 text (byte order mark FF FE): save it as UTF-8"),
        (
            "queries.jsonl",
            '{"_id": "q1", "text": "café?"}\n'.encode("latin-1"),
            "1: not valid UTF-8 (byte 26: b'\\xe9'; Latin-1 or Windows-1252? save the file as UTF-8)",
        ),
        (
            "qrels/test.tsv",
            "q1\td1\t1\nq1\tdé\t1\n".encode("cp1252"),
            "2: not valid UTF-8 (byte 4: b'\\xe9'; Latin-1 or Windows-1252? save the file as UTF-8)",
        ),
    ],
    ids=["utf16-queries", "utf16-qrels", "latin1-queries", "cp1252-qrels"],
)
def test_evaluation_files_that_are_not_utf8_are_errors_naming_file_and_line(tmp_path, file, data, reason):
    """They were a UnicodeDecodeError naming no file: `eval` printed a traceback."""
    collection = _beir(tmp_path / "c")
    (collection.root / file).write_bytes(data)
    with pytest.raises(CollectionFormatError) as caught:
        collection.split_queries("test")
    separator = ":" if reason[0].isdigit() else ": "
    assert str(caught.value) == f"{collection.root / file}{separator}{reason}"


def test_evaluation_files_with_lone_cr_or_crlf_and_a_bom_are_read(tmp_path):
    queries = b"\xef\xbb\xbf" + QUERIES.replace(b"\n", b"\r") + b'{"_id": "q2", "text": "beta?"}'
    qrels = b"\xef\xbb\xbf" + QRELS.replace(b"\n", b"\r\n") + b"q2\td2\t2\r"
    collection = _beir(tmp_path / "c", queries, qrels)
    assert collection.split_queries("test") == {"q1": "alpha?", "q2": "beta?"}
    assert collection.qrels("test") == {"q1": {"d1": 1}, "q2": {"d2": 2}}


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        (b"q1 d1 1\n", "(they are separated by spaces: use tabs)"),
        (b"q1 0 d1 1\n", "(a TREC qrels line 'query-id iteration corpus-id score'? drop its second column)"),
        (b"q1\t0\td1\t1\n", "(a TREC qrels line 'query-id iteration corpus-id score'? drop its second column)"),
    ],
)
def test_qrels_separated_by_spaces_or_in_trec_columns_say_so(tmp_path, line, hint):
    collection = _beir(tmp_path / "c", qrels=line)
    with pytest.raises(CollectionFormatError, match="expected 3 tab-separated fields") as caught:
        collection.qrels("test")
    assert str(caught.value).endswith(hint)


def test_the_corpus_ids_of_an_evaluation_are_read_as_the_index_reads_them(tmp_path):
    """`id` is a JSONL record's id when it has no `_id` (README): `compare` and the coverage check said
    "missing document id '_id'" of a corpus the index had read."""
    corpus = b'{"id": "d1", "text": "alpha"}\n{"id": 7, "text": "beta"}\n{"_id": "d3", "id": "x", "text": "c"}\n'
    collection = _beir(tmp_path / "c", corpus=corpus)
    assert collection.doc_ids() == {"d1", "7", "d3"}
    assert {d.id for d in read_documents(collection.root)[0]} == collection.doc_ids()


def test_a_run_file_that_is_not_utf8_names_file_and_line_and_a_bom_is_not_a_query_id(tmp_path):
    run = tmp_path / "run.trec"
    run.write_bytes(b"\xef\xbb\xbfq1 Q0 d1 1 2.0 mine\r\nq1 Q0 d2 2 1.0 mine\r\n")
    assert read_run(run) == ({"q1": {"d1": 2.0, "d2": 1.0}}, "mine")
    run.write_bytes("q1 Q0 d1 1 2.0 mine\nq1 Q0 dé 2 1.0 mine\n".encode("latin-1"))
    with pytest.raises(RunFormatError, match=r"run\.trec:2: not valid UTF-8 \(byte 7: b'\\xe9'"):
        read_run(run)
    run.write_bytes("q1 Q0 d1 1 2.0 mine\n".encode("utf-16"))
    with pytest.raises(RunFormatError, match=r"run\.trec: UTF-16 text \(byte order mark FF FE\): save it as UTF-8"):
        read_run(run)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (CORPORA.encode("utf-16"), ": UTF-16 text (byte order mark FF FE): save it as UTF-8"),
        (
            ("# Données\n" + CORPORA).encode("cp1252"),
            ", line 1: not valid UTF-8 (byte offset 6: b'\\xe9'; Latin-1 or Windows-1252? save the file as UTF-8)",
        ),
        (
            (CORPORA.replace("\n", "\r") + "# café\r").encode("latin-1"),
            ", line 7: not valid UTF-8 (byte offset 90: b'\\xe9'; Latin-1 or Windows-1252? save the file as UTF-8)",
        ),
    ],
    ids=["utf-16", "cp1252", "latin1-cr"],
)
def test_a_corpora_file_that_is_not_utf8_is_a_config_error_naming_file_and_line(tmp_path, data, reason):
    """It was a UnicodeDecodeError naming no file, where the Dagster code location loads."""
    file = tmp_path / "corpora.yaml"
    file.write_bytes(data)
    with pytest.raises(CorpusConfigError) as caught:
        load_corpora(file)
    assert str(caught.value) == f"{file}{reason} (no corpus can run until it is fixed)"
    file.write_bytes(b"\xef\xbb\xbf" + CORPORA.replace("\n", "\r").encode())
    assert list(load_corpora(file).corpora) == ["docs"]


def test_index_stopped_by_one_record_says_what_reads_the_others(tmp_path, monkeypatch):
    """A docs folder with an image failed on it, naming nothing that would index the Markdown beside it; a file as a
    whole that no policy reads gets no such hint."""
    for key, sub in (("QDRANT_PATH", "index"), ("CACHE_DIR", "cache"), ("MODELS_DIR", "models")):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(tmp_path / sub))
    (tmp_path / "docs" / "img").mkdir(parents=True)
    (tmp_path / "docs" / "guide.md").write_text("# Guide\nSteps.\n")
    (tmp_path / "docs" / "img" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "u16.jsonl").write_bytes(LINES.encode("utf-16"))
    result = CliRunner().invoke(app, ["index", str(tmp_path / "docs"), "-c", "docs"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: {tmp_path}/docs/img/logo.png: unsupported file type '.png' "
        "(--policy skip indexes the others and lists each record it leaves out)"
    )
    result = CliRunner().invoke(app, ["index", str(tmp_path / "u16.jsonl"), "-c", "docs"])
    assert (
        result.output.strip() == f"error: {tmp_path}/u16.jsonl: UTF-16 text (byte order mark FF FE): save it as UTF-8"
    )
