"""Bad input: every problem names file, line and reason; the skip policy keeps the valid records."""

import json

import pytest

from retrieval import BadInputError, read_documents
from retrieval.documents import MAX_DOCUMENT_BYTES


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
