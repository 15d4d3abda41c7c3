"""The files users have, read by every input reader: line ends (CRLF, a lone CR), encodings (UTF-16 from PowerShell
or Notepad, Latin-1/Windows-1252, a UTF-8 BOM), gzip, and JSON that is not JSON Lines. Each is either read as
meant or refused once, naming the file (and line) and what to do, never a traceback or a file's worth of
misleading per-line errors."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import pytest
from typer.testing import CliRunner

from assets.corpora import CorpusConfigError, load_corpora
from evals.collections import CollectionFormatError, load_collection
from evals.runs import RunFormatError, read_run
from orchestration.cli import app
from retrieval import input_files
from retrieval.documents import BadInputError, DocumentReader, read_documents

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


UTF16_BE = b"\xfe\xff" + LINES.encode("utf-16-be")
ARRAY = json.dumps(RECORDS, ensure_ascii=False, indent=2)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("docs.jsonl", LINES.encode("utf-16")),
        ("docs.jsonl", UTF16_BE),
        ("docs.jsonl.gz", gzip.compress(LINES.encode())),
        ("docs.ndjson.gz", gzip.compress(LINES.replace("\n", "\r").encode("utf-16"))),
        ("docs.json.gz", gzip.compress(b"\xef\xbb\xbf" + ARRAY.encode())),
        ("docs.json", ARRAY.encode("utf-16")),
        ("docs.json", b"\n" + json.dumps(RECORDS).encode()),
        ("docs.jsonl", ARRAY.replace("\n", "\r\n").encode()),  # the content decides, not the suffix
    ],
    ids=["utf-16-le", "utf-16-be", "gzip", "gzip-utf16-cr", "gzip-bom-array", "utf16-array", "array", "crlf-array"],
)
def test_gzip_utf16_and_json_array_files_are_read(tmp_path, name, data):
    """They were refused as a whole: 'UTF-16 text: save it as UTF-8', 'gzip-compressed: decompress it first', 'a
    JSON array, not JSON Lines: convert it'."""
    path = tmp_path / name
    path.write_bytes(data)
    docs, report = read_documents(path)
    assert [(d.id, d.text) for d in docs] == [("a", "alpha été"), ("b", "beta")]
    assert report.skipped == []


def test_compressed_utf16_and_array_sources_are_indexed_and_found(tmp_path, indexed_stack):
    """End to end, once for all: each new kind of file is read, indexed and found by its own words."""
    records = [{"_id": "gz", "text": "lanterns glow over the harbour"}, {"_id": "arr", "text": "glaciers calve ice"}]
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress((json.dumps(records[0]) + "\n").encode()))
    (tmp_path / "b.json").write_bytes(json.dumps(records[1:], indent=2).encode("utf-16"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "c.md.gz").write_bytes(gzip.compress(b"# Bees\nHoneybees dance to share nectar.\n"))
    (tmp_path / "notes" / "d.txt").write_text("Volcanoes erupt molten basalt.\n", encoding="utf-16")
    docs = [d for name in ("a.jsonl.gz", "b.json", "notes") for d in read_documents(tmp_path / name)[0]]
    stack = indexed_stack("edge", docs)
    search = stack.retriever(rerank=False).search
    for query, doc_id in [
        ("harbour lanterns", "gz"),
        ("glaciers", "arr"),
        ("honeybees nectar", "c.md.gz"),
        ("basalt volcanoes", "d.txt"),
    ]:
        assert search(query, k=1)[0].doc_id == doc_id, query
    stack.close()


def test_a_bad_line_of_a_compressed_or_utf16_file_is_named_by_its_decompressed_line(tmp_path):
    lines = '{"_id": "a", "text": "x"}\n\n{"_id": "b"}\n{"_id": "c", "text": "z"}\n'
    (tmp_path / "docs.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "u16.jsonl").write_bytes(lines.replace("\n", "\r\n").encode("utf-16"))
    for name in ("docs.jsonl.gz", "u16.jsonl"):
        path = tmp_path / name
        with pytest.raises(BadInputError) as caught:
            read_documents(path)
        assert str(caught.value) == f"{path}:3: document 'b': missing or non-string 'text'"
        docs, report = read_documents(path, policy="skip")
        assert [d.id for d in docs] == ["a", "c"] and [p.line for p in report.skipped] == [3]


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_cut_or_damaged_gzip_file_is_refused_as_a_whole_naming_it(tmp_path, policy):
    """Under skip too: the records after the damage are unknown, so nothing is indexed (no stored document is
    taken for deleted by a sync)."""
    data = gzip.compress("".join(json.dumps({"_id": f"d{i}", "text": "w " * 9}) + "\n" for i in range(999)).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    damaged = bytearray(data)
    damaged[-6] ^= 0xFF  # the CRC-32 and length trailer
    (tmp_path / "crc.jsonl.gz").write_bytes(damaged)
    for name, why in [("cut", "Compressed file ended before the end-of-stream marker was reached"), ("crc", "CRC")]:
        path = tmp_path / f"{name}.jsonl.gz"
        with pytest.raises(BadInputError) as caught:
            read_documents(path, policy=policy)
        assert str(caught.value).startswith(f"{path}: damaged gzip data ({why}")
        assert str(caught.value).endswith(f"): gzip -t {name}.jsonl.gz checks it")
        assert not caught.value.skippable


def test_utf16_that_is_cut_or_holds_a_lone_surrogate_names_the_line(tmp_path):
    path = tmp_path / "u16.jsonl"
    path.write_bytes(LINES.encode("utf-16")[:-1])
    with pytest.raises(BadInputError, match=r"u16\.jsonl:2: not valid UTF-16 \(truncated data\)"):
        read_documents(path, policy="skip")
    path.write_bytes(LINES.encode("utf-16") + '{"_id": "c", "text": "\ud83d"}\n'.encode("utf-16-le", "surrogatepass"))
    with pytest.raises(BadInputError, match=r"u16\.jsonl:3: not valid UTF-16 \(a lone surrogate\)"):
        read_documents(path, policy="skip")


def test_json_array_elements_follow_the_jsonl_rules_and_are_named_by_line_and_index(tmp_path):
    path = tmp_path / "export.json"
    records = [{"_id": "a", "text": "x"}, {"_id": "b"}, ["not", "a", "record"], {"_id": "a", "text": "y"}]
    path.write_text("[\n" + ",\n".join(json.dumps(r, indent=1) for r in records) + "\n]\n")
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["a"]
    assert [str(p) for p in report.skipped] == [
        f"{path}:6: element [1]: document 'b': missing or non-string 'text'",
        f"{path}:9: element [2]: expected a JSON object, got list",
        f"{path}:14: element [3]: duplicate document id 'a' (first seen at {path}:2)",
    ]
    assert report.skipped[0].doc_id == "b"  # what is stored for it is kept


@pytest.mark.parametrize("compress", [False, True])
def test_objects_written_over_several_lines_are_records_named_by_their_first_line(tmp_path, compress):
    """`jq . docs.jsonl > docs.json` (one pretty-printed object after another) was refused with a `jq -c` hint."""
    records = [*RECORDS, {"_id": "c"}, {"_id": "d", "text": "delta", "metadata": {"tags": ["x", "y"]}}]
    text = "\n".join(json.dumps(r, ensure_ascii=False, indent=2) for r in records).replace("\n", "\r\n")
    path = tmp_path / ("docs.json.gz" if compress else "docs.json")
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    docs, report = read_documents(path, policy="skip")
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("a", "alpha été", {}),
        ("b", "beta", {}),
        ("d", "delta", {"tags": ["x", "y"]}),
    ]
    assert [str(p) for p in report.skipped] == [f"{path}:9: document 'c': missing or non-string 'text'"]


@pytest.mark.parametrize("indent", [None, 1], ids=["one line", "indented"])
def test_a_json_array_is_read_a_window_at_a_time_and_names_a_bad_element(tmp_path, monkeypatch, indent):
    """Windows of 5 characters: values, strings, numbers and a UTF-8 character cut between them are read whole, and
    an element that does not parse is named by its line, column and index as in the file."""
    monkeypatch.setattr(input_files, "JSON_WINDOW", 5)
    records = [*RECORDS, {"_id": 12345678, "text": "number id", "metadata": {"n": -1.5e3, "ok": True}}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=indent), encoding="utf-8")
    docs, _ = read_documents(path)
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("a", "alpha été", {}),
        ("b", "beta", {}),
        ("12345678", "number id", {"n": -1500.0, "ok": True}),
    ]
    text = path.read_text().removesuffix("]") + ', {"_id": "x", "text": "y" "z"}]'
    path.write_text(text)
    bad = text.rindex('"z"')
    line, column = text.count("\n", 0, bad) + 1, bad - text.rfind("\n", 0, bad)
    with pytest.raises(BadInputError) as caught:
        read_documents(path, policy="skip")
    assert str(caught.value) == (
        f"{path}:{line}: malformed JSON array: Expecting ',' delimiter at column {column} (element [3])"
    )


def test_reading_a_json_array_holds_a_window_of_it_not_the_file(tmp_path, monkeypatch):
    """A 121 MB array peaked 237 MB above the same records as JSON Lines: the whole file was read into memory."""
    monkeypatch.setattr(input_files, "JSON_WINDOW", 16 * 1024)
    records = [{"_id": f"d{i}", "text": f"word{i} " * 1200} for i in range(250)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(records, indent=1))
    size = path.stat().st_size  # about 2 MB
    tracemalloc.start()
    try:
        count = sum(1 for _ in DocumentReader().read(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 250 and peak < size / 4, (peak, size)


LATIN1_HINT = (
    "Latin-1 or Windows-1252? convert it: iconv -f cp1252 -t utf-8 a.json > a.json.new && mv a.json.new a.json"
)


@pytest.mark.parametrize("policy", ["fail", "skip"])
@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            '[{"_id": "a", "text": "x"},\n {"_id": "b", "text": }]',
            "2: malformed JSON array: Expecting value at column 23 (element [1])",
        ),
        (
            '[{"_id": "a", "text": "x"}\n {"_id": "b", "text": "y"}]',
            "2: malformed JSON array: expected ',' or ']' after element [0]",
        ),
        ('[{"_id": "a", "text": "x"}]\n\n[]', "3: malformed JSON array: more data after its closing ']'"),
        (
            '[{"_id": "a", "text": "x"},\n{"_id": "b", "text": "caf\xe9"}]',
            f"2: not valid UTF-8 (byte offset 53: b'\\xe9'; {LATIN1_HINT})",
        ),
        (
            "\n" + json.dumps(RECORDS[0], indent=2) + '\n{\n  "_id": "b",\n  "text":\n}\n',
            "9: malformed JSON: Expecting value at column 1",
        ),
    ],
    ids=["syntax", "no-comma", "extra", "latin1", "objects over several lines"],
)
def test_a_json_array_that_does_not_parse_is_refused_as_a_whole_at_its_line(tmp_path, text, where, policy):
    """Where the next element starts is unknown: under either policy the file is not read (nothing is lost)."""
    path = tmp_path / "a.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(BadInputError) as caught:
        read_documents(path, policy=policy)
    assert str(caught.value) == f"{path}:{where}"
    assert not caught.value.skippable


def test_the_fail_policy_names_the_first_20_bad_records_at_once(tmp_path):
    """It stopped at the first: a file with three bad lines took three runs to fix."""
    path = tmp_path / "docs.jsonl"
    good = [json.dumps({"_id": f"d{i}", "text": "t"}) for i in range(40)]
    path.write_text("\n".join([good[0], '{"_id": "x"}', good[1], "{not json", good[2], '{"text": "y"}']) + "\n")
    with pytest.raises(BadInputError) as caught:
        read_documents(path)
    assert str(caught.value) == (
        f"{path}:2: document 'x': missing or non-string 'text' (and 2 more bad records: "
        f"{path}:4: malformed JSON: Expecting property name enclosed in double quotes at column 2; "
        f"{path}:6: missing document id ('_id' or 'id'))"
    )
    assert caught.value.skippable and [p.line for p in caught.value.problems] == [2, 4, 6]
    path.write_text("\n".join(["{bad"] * 30 + good) + "\n")
    with pytest.raises(BadInputError) as caught:
        read_documents(path)
    assert [p.line for p in caught.value.problems] == list(range(1, 21))
    message = str(caught.value)
    assert message.startswith(f"{path}:1: malformed JSON") and "(and 19 more bad records: " in message
    assert message.endswith("; reading stopped there)")


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
        "cp1252.txt:1: not valid UTF-8 (byte offset 6: b'\\x93'; Latin-1 or Windows-1252? convert it: "
        "iconv -f cp1252 -t utf-8 cp1252.txt > cp1252.txt.new && mv cp1252.txt.new cp1252.txt)"
    )
    with pytest.raises(BadInputError) as caught:
        read_documents(tmp_path / "l.jsonl")
    assert str(caught.value).endswith(
        "l.jsonl:1: not valid UTF-8 (byte 25: b'\\xe9'; Latin-1 or Windows-1252? convert it: "
        "iconv -f cp1252 -t utf-8 l.jsonl > l.jsonl.new && mv l.jsonl.new l.jsonl)"
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
        (
            "queries.jsonl",
            '{"_id": "q1", "text": "café?"}\n'.encode("latin-1"),
            "1: not valid UTF-8 (byte 26: b'\\xe9'; Latin-1 or Windows-1252? convert it: iconv -f cp1252 -t utf-8 "
            "queries.jsonl > queries.jsonl.new && mv queries.jsonl.new queries.jsonl)",
        ),
        (
            "qrels/test.tsv",
            "q1\td1\t1\nq1\tdé\t1\n".encode("cp1252"),
            "2: not valid UTF-8 (byte 4: b'\\xe9'; Latin-1 or Windows-1252? convert it: iconv -f cp1252 -t utf-8 "
            "test.tsv > test.tsv.new && mv test.tsv.new test.tsv)",
        ),
    ],
    ids=["latin1-queries", "cp1252-qrels"],
)
def test_evaluation_files_that_are_not_utf8_are_errors_naming_file_and_line(tmp_path, file, data, reason):
    """They were a UnicodeDecodeError naming no file: `eval` printed a traceback."""
    collection = _beir(tmp_path / "c")
    (collection.root / file).write_bytes(data)
    with pytest.raises(CollectionFormatError) as caught:
        collection.split_queries("test")
    assert str(caught.value) == f"{collection.root / file}:{reason}"


def test_evaluation_files_in_utf16_or_gzip_compressed_are_read_as_the_corpus_is(tmp_path):
    """They were refused ('UTF-16 text: save it as UTF-8') while the corpus beside them is read."""
    collection = _beir(tmp_path / "c", QUERIES.decode().encode("utf-16"), gzip.compress(QRELS))
    assert collection.split_queries("test") == {"q1": "alpha?"}


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


def test_the_corpus_ids_of_a_compressed_json_array_or_pretty_printed_corpus_are_read(tmp_path):
    """`eval` indexed such a corpus, then stopped at its ids: "corpus.jsonl:1: malformed JSON"."""
    array = gzip.compress(json.dumps(RECORDS, indent=2).encode("utf-16"))
    pretty = "\n".join(json.dumps(r, indent=2) for r in RECORDS).encode()
    for name, corpus in [("array", array), ("pretty", pretty)]:
        collection = _beir(tmp_path / name, corpus=corpus)
        assert collection.doc_ids() == {"a", "b"} == {d.id for d in read_documents(collection.root)[0]}
    with pytest.raises(CollectionFormatError, match=r"corpus\.jsonl:2: element \[1\]: expected a JSON object"):
        _beir(tmp_path / "bad", corpus=b'[{"_id": "a", "text": "x"},\n ["b"]]').doc_ids()


def test_a_run_file_that_is_not_utf8_names_file_and_line_and_a_bom_is_not_a_query_id(tmp_path):
    run = tmp_path / "run.trec"
    run.write_bytes(b"\xef\xbb\xbfq1 Q0 d1 1 2.0 mine\r\nq1 Q0 d2 2 1.0 mine\r\n")
    assert read_run(run) == ({"q1": {"d1": 2.0, "d2": 1.0}}, "mine")
    run.write_bytes("q1 Q0 d1 1 2.0 mine\nq1 Q0 dé 2 1.0 mine\n".encode("latin-1"))
    with pytest.raises(RunFormatError, match=r"run\.trec:2: not valid UTF-8 \(byte 7: b'\\xe9'"):
        read_run(run)
    run.write_bytes("q1 Q0 d1 1 2.0 mine\n".encode("utf-16"))
    assert read_run(run) == ({"q1": {"d1": 2.0}}, "mine")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (CORPORA.encode("utf-16"), ": UTF-16 text (byte order mark FF FE): save it as UTF-8"),
        (
            ("# Données\n" + CORPORA).encode("cp1252"),
            ", line 1: not valid UTF-8 (byte offset 6: b'\\xe9'; Latin-1 or Windows-1252? convert it: "
            "iconv -f cp1252 -t utf-8 corpora.yaml > corpora.yaml.new && mv corpora.yaml.new corpora.yaml)",
        ),
        (
            (CORPORA.replace("\n", "\r") + "# café\r").encode("latin-1"),
            ", line 7: not valid UTF-8 (byte offset 90: b'\\xe9'; Latin-1 or Windows-1252? convert it: "
            "iconv -f cp1252 -t utf-8 corpora.yaml > corpora.yaml.new && mv corpora.yaml.new corpora.yaml)",
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


def without_bars(output: str) -> str:
    """``output`` without the CLI's ``reading`` bar (drawn unless ``TQDM_DISABLE`` is set, as ``make test`` sets
    it), stripped."""
    lines = output.replace("\r", "\n").splitlines()
    return "\n".join(line for line in lines if not line.startswith("reading:")).strip()


def test_index_stopped_by_one_record_says_what_reads_the_others(tmp_path, monkeypatch):
    """A docs folder with an image failed on it, naming nothing that would index the Markdown beside it; a file as a
    whole that no policy reads gets no such hint."""
    for key, sub in (("QDRANT_PATH", "index"), ("CACHE_DIR", "cache"), ("MODELS_DIR", "models")):
        monkeypatch.setenv(f"HYBRID_RAG_{key}", str(tmp_path / sub))
    (tmp_path / "docs" / "img").mkdir(parents=True)
    (tmp_path / "docs" / "guide.md").write_text("# Guide\nSteps.\n")
    (tmp_path / "docs" / "img" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "docs" / "notes.doc").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress(LINES.encode())[:-9])
    result = CliRunner().invoke(app, ["index", str(tmp_path / "docs"), "-c", "docs"])
    assert result.exit_code == 2, result.output
    assert without_bars(result.output) == (
        f"error: {tmp_path}/docs/img/logo.png: unsupported file type '.png' (and 1 more bad record: "
        f"{tmp_path}/docs/notes.doc: unsupported file type '.doc' (save it as .docx to index it)) "
        "(--policy skip indexes the others and lists each record it leaves out)"
    )
    result = CliRunner().invoke(app, ["index", str(tmp_path / "cut.jsonl.gz"), "-c", "docs"])
    assert without_bars(result.output) == (
        f"error: {tmp_path}/cut.jsonl.gz: damaged gzip data (Compressed file ended before the end-of-stream marker "
        "was reached): gzip -t cut.jsonl.gz checks it"
    )


def test_jsonl_whose_later_records_are_pretty_printed_is_read_from_the_first_such_record(tmp_path):
    """Records one a line, then pretty-printed (a record edited by hand, files joined): each line of the second
    record was a bad record ('Expecting property name' at its '{' line)."""
    pretty = json.dumps({"_id": "c", "text": "gamma", "metadata": {"tags": ["x"]}}, indent=2)
    path = tmp_path / "docs.jsonl"
    path.write_text(LINES + pretty + "\n" + json.dumps({"_id": "d", "text": "delta"}) + "\n")
    for policy in ("fail", "skip"):
        docs, report = read_documents(path, policy=policy)
        assert [d.id for d in docs] == ["a", "b", "c", "d"] and docs[2].metadata == {"tags": ["x"]}
        assert not report.skipped
    path.write_text(LINES + pretty + '\n{"_id": "d", "text": }\n')
    with pytest.raises(BadInputError) as caught:
        read_documents(path, policy="skip")
    assert str(caught.value) == (
        f"{path}:12: malformed JSON: Expecting value at column 22 (records are written over several lines from "
        "line 3 on, as jq . writes JSON)"
    )


def test_a_jsonl_record_that_does_not_end_on_its_line_says_so_and_how_to_rewrite_it(tmp_path):
    """The record goes on over the next lines (not a '{' line alone, or after a bad line) or is cut: the error said
    'Expecting property name' and nothing of why."""
    path = tmp_path / "docs.jsonl"
    path.write_text(LINES + '{"_id": "c",\n "text": "gamma"}\n')
    hint = "the record does not end on this line: cut, or pretty-printed over several lines? JSON Lines holds one a "
    hint += "line"
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["a", "b"] and [p.line for p in report.skipped] == [3, 4]
    assert report.skipped[0].reason == (
        "malformed JSON: Expecting property name enclosed in double quotes at column 13 "
        f"({hint}: jq -c . docs.jsonl > docs-lines.jsonl)"
    )
    assert report.skipped[0].doc_id == "c"  # what is stored for it is kept
    path.write_text("{bad\n" + LINES + "{\n" + '"_id": "c", "text": "gamma"\n}\n')  # after a bad line: not read
    docs, report = read_documents(path, policy="skip")
    assert [p.line for p in report.skipped] == [1, 4, 5, 6] and hint in report.skipped[1].reason


DEEP = '"text": "x", "m": ' + "[" * 5000 + "]" * 5000 + "}"  # past Python's parser


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[{"_id": "a", ' + DEEP + "]", "1: JSON nested too deeply (element [0]; "),
        ('{\n"_id": "a", ' + DEEP, "1: JSON nested too deeply ("),
        (LINES + '{\n"_id": "c", ' + DEEP, "3: JSON nested too deeply ("),
    ],
    ids=["array", "pretty-printed", "pretty-printed after JSON Lines"],
)
def test_json_deeper_than_python_reads_says_how_deep_metadata_may_nest(tmp_path, text, where):
    """A streamed array (session 19) lost the hint JSON Lines gives."""
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(BadInputError) as caught:
        read_documents(path, policy="skip")
    assert str(caught.value).startswith(f"{path}:{where}metadata may nest 32 levels)")
