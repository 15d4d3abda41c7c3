"""Bad input: every problem names file, line and reason; the skip policy keeps the valid records."""

import datetime as dt
import json
import math

import numpy as np
import pytest

from retrieval import BadInputError, Document, read_documents
from retrieval.documents import MAX_DOCUMENT_BYTES
from retrieval.errors import InvalidDocumentError

CET = dt.timezone(dt.timedelta(hours=1))


def write_jsonl(path, lines):
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


def ok(doc_id, text="some text"):
    return json.dumps({"_id": doc_id, "text": text})


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{oops", "malformed JSON"),
        (json.dumps({"text": "no id"}), "missing document id"),
        (json.dumps({"_id": "x"}), "missing or non-string 'text'"),
        (json.dumps({"_id": "x", "text": ""}), "empty text"),
        (json.dumps({"_id": "x", "text": "   \n\t "}), "empty text"),
        (b'{"_id": "x", "text": "caf\xe9"}', "not valid UTF-8"),
        (json.dumps(["a", "list"]), "expected a JSON object"),
        (json.dumps({"_id": "x", "text": "t", "metadata": "nope"}), "'metadata' must be an object"),
        (ok("a"), "duplicate document id 'a'"),
    ],
)
def test_each_bad_record_is_named_by_file_line_and_reason(tmp_path, bad_line, reason):
    path = write_jsonl(tmp_path / "corpus.jsonl", [ok("a"), bad_line, ok("b")])
    with pytest.raises(BadInputError) as err:
        read_documents(path)
    assert "corpus.jsonl:2: " in str(err.value) and reason in str(err.value)
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["a", "b"]
    assert report.skipped_count == 1 and report.skipped[0].line == 2 and reason in report.skipped[0].reason


def test_folder_source_skips_binary_undecodable_and_unsupported_files(tmp_path):
    (tmp_path / "good.md").write_text("# Heading\nbody text")
    (tmp_path / "notes.txt").write_text("plain notes")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (tmp_path / "binary.txt").write_bytes(b"abc\x00\x01\x02")
    (tmp_path / "latin1.txt").write_bytes(b"line one\nd\xe9j\xe0 vu")
    (tmp_path / "empty.txt").write_text("  ")
    docs, report = read_documents(tmp_path, policy="skip")
    assert sorted(d.id for d in docs) == ["good.md", "notes.txt"]
    assert next(d for d in docs if d.id == "good.md").title == "Heading"
    reasons = {p.path.name: p.reason for p in report.skipped}
    assert "unsupported file type '.png'" in reasons["image.png"]
    assert "binary content" in reasons["binary.txt"]
    assert "not valid UTF-8" in reasons["latin1.txt"]
    assert next(p for p in report.skipped if p.path.name == "latin1.txt").line == 2
    assert "empty text" in reasons["empty.txt"]
    with pytest.raises(BadInputError, match="binary.txt: binary content"):
        read_documents(tmp_path, policy="fail")


def test_oversized_document_is_refused_with_its_size(tmp_path):
    big = "word " * (MAX_DOCUMENT_BYTES // 5 + 10)  # just over the limit (~10 MB with the default)
    path = write_jsonl(tmp_path / "big.jsonl", [ok("small"), json.dumps({"_id": "huge", "text": big})])
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["small"]
    assert "exceeds" in report.skipped[0].reason and report.skipped[0].line == 2


def test_unreadable_and_missing_sources(tmp_path):
    with pytest.raises(BadInputError, match="(?i)no such file or directory"):
        read_documents(tmp_path / "missing.jsonl")
    unreadable = tmp_path / "folder.jsonl"
    unreadable.mkdir()  # exists but cannot be opened as a file, even by root
    with pytest.raises(BadInputError, match=r"folder\.jsonl: cannot open file"):
        read_documents(unreadable, fmt="jsonl")


def test_a_truncated_json_line_is_reported_at_its_end(tmp_path):
    path = write_jsonl(tmp_path / "cut.jsonl", [ok("a"), ok("b")[:-1], ok("c")])
    with pytest.raises(BadInputError, match=r"cut\.jsonl:2: malformed JSON: Expecting ',' delimiter at column 33$"):
        read_documents(path)


def test_hidden_files_and_folders_are_left_out_of_a_folder_source(tmp_path):
    notes = tmp_path / "notes"
    for name, text in {
        "n.md": "# Note\nbody",
        "sub/m.txt": "more notes",
        ".hidden.txt": "hidden",
        ".git/HEAD": "ref: refs/heads/main",  # no suffix: would be an unsupported file
        ".obsidian/workspace.md": "# ws",
        "sub/.cache/x.md": "cached",
    }.items():
        (notes / name).parent.mkdir(parents=True, exist_ok=True)
        (notes / name).write_text(text)
    docs, report = read_documents(notes)  # policy fail: nothing hidden is even looked at
    assert [d.id for d in docs] == ["n.md", "sub/m.txt"] and report.skipped_count == 0
    hidden_root = tmp_path / ".vault"
    (notes / "n.md").rename(tmp_path / "n.md")
    hidden_root.mkdir()
    (tmp_path / "n.md").rename(hidden_root / "n.md")
    assert [d.id for d in read_documents(hidden_root)[0]] == ["n.md"]  # a hidden root given explicitly


def test_dates_in_metadata_are_stored_as_iso_strings_that_date_filters_match(indexed_stack):
    stack = indexed_stack("edge", [])
    try:
        stack.indexer().index(
            [
                Document("old", "geothermal heat pumps", metadata={"at": dt.datetime(2019, 5, 1, 12, tzinfo=dt.UTC)}),
                Document("new", "geothermal heat storage", metadata={"at": dt.datetime(2025, 1, 1, 1, tzinfo=CET)}),
                Document("day", "geothermal heat maps", metadata={"at": dt.date(2024, 6, 1), "n": (np.int64(3),)}),
            ],
            progress=False,
        )
        retriever = stack.retriever(rerank=False)
        stored = {h.doc_id: h.metadata for h in retriever.search("geothermal heat", k=5)}
        assert stored == {
            "old": {"at": "2019-05-01T12:00:00Z"},
            "new": {"at": "2025-01-01T00:00:00Z"},  # in UTC, as filters compare them
            "day": {"at": "2024-06-01", "n": [3]},  # a tuple is a list, a numpy integer an integer
        }
        after = retriever.search("geothermal heat", k=5, filter={"at": {"gte": dt.date(2024, 1, 1)}})
        assert {h.doc_id for h in after} == {"new", "day"}
        # 01:00 CET is 00:00 UTC; the date is its midnight (UTC)
        between = {"at": {"gt": "2024-06-01", "lt": "2025-01-01T00:30"}}
        assert [h.doc_id for h in retriever.search("geothermal heat", k=5, filter=between)] == ["new"]
    finally:
        stack.close()


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"tags": {"a", "b"}}, r"metadata 'tags': set values cannot be stored"),
        ({"owner": object()}, r"metadata 'owner': object values cannot be stored"),
        ({"raw": b"\x00"}, r"metadata 'raw': bytes values cannot be stored"),
        ({"score": math.nan}, r"metadata 'score': nan is not a finite number"),
        ({"deep": {"er": [1, math.inf]}}, r"metadata 'deep\.er': inf is not a finite number"),
        ({1: "x"}, r"metadata 1: keys must be strings"),
    ],
)
def test_metadata_that_cannot_be_stored_is_refused_before_anything_is_written(indexed_stack, metadata, message):
    stack = indexed_stack("edge", [])
    try:
        docs = [Document("ok", "fine text"), Document("d4", "geothermal heat", metadata=metadata)]
        with pytest.raises(InvalidDocumentError, match=r"^documents\[1\] \(id 'd4'\): " + message):
            stack.indexer().index(docs, progress=False)
        assert stack.store().schema() is None  # nothing written, no unfinished collection
    finally:
        stack.close()


def test_a_json_line_with_nan_metadata_is_a_bad_record(tmp_path):
    path = write_jsonl(tmp_path / "nan.jsonl", [ok("a"), '{"_id": "b", "text": "t", "metadata": {"score": NaN}}'])
    with pytest.raises(BadInputError, match=r"nan\.jsonl:2: document 'b': metadata 'score': nan is not a finite"):
        read_documents(path)
