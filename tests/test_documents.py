"""Bad input: every problem names file, line and reason; the skip policy keeps the valid records."""

import datetime as dt
import gzip
import json
import math
import os
import re
import shutil

import numpy as np
import pytest

from retrieval import BadInputError, Document, read_documents
from retrieval.documents import MAX_DOCUMENT_BYTES, MAX_METADATA_BYTES, MAX_METADATA_DEPTH, validate_documents
from retrieval.errors import HybridRagError, InvalidArgumentError, InvalidDocumentError
from tests.conftest import BACKENDS

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
    with pytest.raises(BadInputError) as caught:
        read_documents(path)
    assert str(caught.value) == (
        f"{path}:2: malformed JSON: Expecting ',' delimiter at column 33 (the record does not end on this line: cut, "
        "or pretty-printed over several lines? JSON Lines holds one a line: jq -c . cut.jsonl > cut-lines.jsonl)"
    )


def test_an_unterminated_string_is_reported_once_at_its_column(tmp_path):
    path = tmp_path / "open.jsonl"
    path.write_text('{"_id": "broken", "text": "oops\n')
    with pytest.raises(
        BadInputError, match=r"open\.jsonl:1: malformed JSON: Unterminated string starting at column 27$"
    ):
        read_documents(path)


def broken(record: dict) -> str:
    """``record`` as json.dumps writes it (non-ASCII as \\u escapes), made malformed by a stray comma at its end."""
    return json.dumps(record)[:-1] + ",}"


@pytest.mark.parametrize(
    ("bad_line", "doc_id"),
    [
        (broken({"_id": "café", "text": "t"}), "café"),  # "caf\u00e9": escapes are decoded
        (broken({"_id": 'doc "q"', "text": "t"}), 'doc "q"'),
        ('{"_id": "a\\/b", "text": "t",}', "a/b"),
        (broken({"id": "m-1", "_id": "doc-e", "text": "t"}), "doc-e"),  # with both, 'id' is an ordinary field
        ('{"id": "m-1", "\\u005fid": "doc-e", "text": "t",}', "doc-e"),
        (broken({"id": "m-1", "user_id": 7, "text": "t"}), "m-1"),
        (broken({"_id": 12, "text": "t"}), "12"),
        ('{"_id": "valve", "text": "Replace the valve', "valve"),  # cut: '_id' came first
        (b'{"_id": "notes-1", "text": "d\xe9j\xe0 vu"}', "notes-1"),  # Latin-1 text, the id is clean
        # the id cannot be read for sure: the record could be any document
        (b'{"_id": "caf\xe9", "text": "t"}', None),  # Latin-1 id
        ('{"_id": "caf\\x", "text": "t",}', None),  # not a JSON escape
        ('{"id": "m-2", "text": "cut', None),  # an '_id' may have followed
        ('{"id": "m-2", _id": "doc-f", "text": "t"}', None),  # a damaged '_id'
        (broken({"metadata": {"id": "n"}, "text": "t"}), None),  # not the record's id
        ('{"_id": "a", "_id": "b", "text": "t",}', None),  # two ids
        ('{"_id": "a", "text": "t"}{"_id": "b", "text": "u"}', None),  # two records on one line
        (broken({"_id": 1.5, "text": "t"}), None),
        (broken({"_id": " ", "text": "t"}), None),
    ],
)
def test_a_broken_lines_id_is_read_as_json_or_not_at_all(tmp_path, bad_line, doc_id):
    path = write_jsonl(tmp_path / "corpus.jsonl", [ok("a1"), bad_line, ok("b1")])
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["a1", "b1"] and report.skipped[0].line == 2
    assert report.skipped[0].doc_id == doc_id


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


def test_office_and_libreoffice_lock_files_are_left_out_of_a_folder_source(tmp_path):
    """A document open in Word or LibreOffice leaves a lock file beside it: not a document, so it must not fail the
    index under the default policy."""
    kb = tmp_path / "kb"
    (kb / "sub").mkdir(parents=True)
    (kb / "notes.md").write_text("# Notes\nbody")
    (kb / "~$port.docx").write_bytes(b"\x0aJane Ops" + b"\x00" * 152)  # Word's owner file: no zip archive
    (kb / "sub" / "~$udget.xlsx").write_bytes(b"\x0aJane Ops" + b"\x00" * 152)
    (kb / "sub" / ".~lock.plan.odt#").write_text("Jane Ops,jane,host,02.12.2026 18:00,file:///home/jane;")
    docs, report = read_documents(kb)
    assert [d.id for d in docs] == ["notes.md"] and report.skipped_count == 0


def test_office_files_of_types_not_read_say_which_type_to_save_them_as(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.odt", "b.rtf", "c.pptx", "d.odp", "e.xlsx"):
        (docs / name).write_bytes(b"PK\x03\x04")
    _, report = read_documents(docs, policy="skip")
    assert [p.reason for p in report.skipped] == [
        "unsupported file type '.odt' (save it as .docx to index it)",
        "unsupported file type '.rtf' (save it as .docx to index it)",
        "unsupported file type '.pptx' (save it as .pdf to index it)",
        "unsupported file type '.odp' (save it as .pdf to index it)",
        "unsupported file type '.xlsx'",
    ]


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


CUT = "\ud83d"  # a lone surrogate: the first half of a cut emoji, valid in JSON (\ud83d) but not Unicode


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"_id": "t2", "text": f"cut tweet {CUT}"}, "document 't2': text is not valid Unicode (lone surrogate)"),
        ({"_id": "t2", "text": "t", "title": f"cut {CUT}"}, "document 't2': title is not valid Unicode"),
        ({"_id": "t2", "text": "t", "metadata": {"a": {"b": [CUT]}}}, "metadata 'a.b': the value is not valid"),
        ({"_id": "t2", "text": "t", "metadata": {f"k{CUT}": 1}}, "metadata 'k\\ud83d': the key is not valid"),
        ({"_id": "t2", "text": "t", "lang": f"e{CUT}"}, "document 't2': metadata 'lang': the value is not valid"),
        ({"_id": f"t{CUT}", "text": "t"}, "document 't\\ud83d': id is not valid Unicode"),
    ],
)
def test_lone_surrogates_are_bad_records_under_either_policy(tmp_path, record, reason):
    path = write_jsonl(tmp_path / "tweets.jsonl", [ok("t1"), json.dumps(record), ok("t3")])  # ASCII: \ud83d
    with pytest.raises(BadInputError, match=r"tweets\.jsonl:2: (document 't2': )?" + re.escape(reason)):
        read_documents(path)
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["t1", "t3"] and report.skipped[0].line == 2
    # an id that is not valid Unicode names no stored document (so a sync keeps what the others had)
    assert report.skipped[0].doc_id == (None if CUT in record["_id"] else "t2")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (Document("a", f"cut {CUT}"), r"text is not valid Unicode \(lone surrogate\)"),
        (Document("a", "t", title=f"cut {CUT}"), "title is not valid Unicode"),
        (Document("a", "t", metadata={"k": CUT}), "metadata 'k': the value is not valid Unicode"),
        (Document(CUT, "t"), "id is not valid Unicode"),
        (Document("a", "t", title=math.nan), "title must be a string or None, got float nan"),
        (Document("a", "t", title=2024), "title must be a string or None, got int 2024"),
        (Document("a", "t", metadata={"h": 2**63}), "metadata 'h': 9223372036854775808 is outside the 64-bit"),
        (Document("a", "t", metadata={"n": {"u": np.uint64(2**64 - 59)}}), r"metadata 'n\.u': 1844\d+ is outside"),
        (Document("a", "t", metadata={"low": -(2**63) - 1}), "metadata 'low': -9223372036854775809 is outside"),
    ],
    ids=[
        "surrogate-text",
        "surrogate-title",
        "surrogate-meta",
        "surrogate-id",
        "nan-title",
        "int-title",
        "uint64",
        "nested-uint64",
        "below-int64",
    ],
)
def test_python_documents_are_checked_before_anything_is_written(indexed_stack, backend, doc, message):
    """Lone surrogates, titles that are not strings and integers a payload cannot hold (i64): each a clear
    InvalidDocumentError naming the document, and the store stays empty."""
    stack = indexed_stack(backend, [], collection="checks")
    try:
        with pytest.raises(InvalidDocumentError, match=r"^documents\[1\] \(id '(a|\\ud83d)'\): " + message):
            stack.indexer().index([Document("ok", "fine text"), doc], progress=False)
        assert stack.store().schema() is None  # nothing written, no unfinished collection
    finally:
        stack.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_title_int64_bounds_one_document_and_surrogate_queries(indexed_stack, backend):
    stack = indexed_stack(backend, [], collection="bounds")
    try:
        ix = stack.indexer()
        with pytest.raises(InvalidDocumentError, match=r"got one Document: pass \[document\]"):
            ix.index(Document("a", "Some text."), progress=False)
        bounds = {"max": 2**63 - 1, "min": -(2**63)}  # stored exactly
        ix.index([Document("a", "Lanterns glow at dusk.", title=None, metadata=bounds)], progress=False)  # None: none
        [hit] = stack.retriever(rerank=False).search("lanterns", k=1)
        assert (hit.doc_id, hit.title, hit.metadata) == ("a", "", bounds)
        with pytest.raises(InvalidArgumentError, match=r"query is not valid Unicode \(lone surrogate"):
            stack.retriever().search(f"lanterns {CUT}")
        with pytest.raises(InvalidArgumentError, match=r"query \(queries\[1\]\) is not valid Unicode"):
            stack.retriever().search_batch(["lanterns", f"emoji {CUT} cut"])
    finally:
        stack.close()


def test_jsonl_fields_beside_text_are_metadata_and_ids_titles_are_strict(tmp_path):
    lines = [
        {"id": "p1", "title": "Refund policy", "text": "t", "url": "https://x/r", "lang": "en", "metadata": {"n": 1}},
        {"_id": 42, "text": "numeric id, as in BEIR", "title": None, "id": "other-system-7"},
        {"_id": True, "text": "t"},
        {"_id": 1.0, "text": "t"},
        {"_id": {"k": 1}, "text": "t"},
        {"id": ["a"], "text": "t"},
        {"_id": "b", "text": "t", "title": ["Boats", "Rafts"]},
        {"_id": "c", "text": "t", "title": 7},
        {"_id": "d", "text": "t", "lang": "en", "metadata": {"lang": "de"}},
    ]
    path = write_jsonl(tmp_path / "kb.jsonl", [json.dumps(r) for r in lines])
    docs, report = read_documents(path, policy="skip")
    assert [(d.id, d.title, d.metadata) for d in docs] == [
        ("p1", "Refund policy", {"n": 1, "url": "https://x/r", "lang": "en"}),
        ("42", "", {"id": "other-system-7"}),  # with '_id' given, 'id' is an ordinary field
    ]
    assert [str(p).removeprefix(str(tmp_path) + "/") for p in report.skipped] == [
        "kb.jsonl:3: document id '_id' must be a string or an integer, got a boolean",
        "kb.jsonl:4: document id '_id' must be a string or an integer, got a decimal number (1.0)",
        "kb.jsonl:5: document id '_id' must be a string or an integer, got an object",
        "kb.jsonl:6: document id 'id' must be a string or an integer, got an array",
        "kb.jsonl:7: document 'b': 'title' must be a string, got an array",
        "kb.jsonl:8: document 'c': 'title' must be a string, got a number",
        "kb.jsonl:9: document 'd': 'lang' is both a top-level field and in 'metadata'",
    ]


def test_byte_order_marks_are_not_content(tmp_path):
    bom = b"\xef\xbb\xbf"
    path = write_jsonl(tmp_path / "excel.jsonl", [bom + ok("b1").encode(), ok("b2")])
    assert [d.id for d in read_documents(path)[0]] == ["b1", "b2"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "windows.md").write_bytes(bom + b"# Windows note\n\nSaved by Notepad.\n")
    (notes / "plain.txt").write_bytes(bom + b"Plain text.\n")
    docs = {d.id: d for d in read_documents(notes)[0]}
    assert docs["windows.md"].title == "Windows note" and docs["windows.md"].text.startswith("# Windows")
    assert docs["plain.txt"].text == "Plain text.\n"


@pytest.mark.parametrize(
    ("markdown", "title"),
    [
        (
            "```bash\n# install the dependencies first\npip install foo\n```\n\n# Deployment guide\n\nbody",
            "Deployment guide",
        ),
        ("~~~\n# not a title\n~~~\n# Title #\nbody", "Title"),
        ("    # an indented code line\n\n# Real\nbody", "Real"),
        ("## Section only\nbody\n#hashtag", "note"),  # no title: the file name, as for .txt and .rst
        ("Intro line\n\n  # Indented heading\nbody", "Indented heading"),
        ("#\nSetext\n===\n# Second #\nbody", "Setext"),  # an empty heading is no title; a setext one is
        ("Upgrading\n=========\n\nHow to upgrade.\n", "Upgrading"),
        ("Section\n-------\nbody", "note"),
        # front matter: its 'title:' is the title; a '# comment' in it is YAML, not a heading
        ("---\n# Jekyll settings, do not edit\nlayout: page\ntitle: Installing\n---\n\n# Installation\n", "Installing"),
        ("---\n# Jekyll settings\nlayout: page\n---\n\n# Installation\nbody", "Installation"),
        ("---\r\ntitle: FAQ\r\n...\r\n\r\nQ: purr?\r\n", "FAQ"),
        ("---\nlayout: page\n---\n\nNo heading.\n", "note"),
    ],
)
def test_a_markdown_title_is_its_first_level_one_heading_outside_code(tmp_path, markdown, title):
    (tmp_path / "note.md").write_text(markdown)
    assert read_documents(tmp_path)[0][0].title == title


FRONT_MATTER = """---
title: Administrator Guide
author: Ann
tags: [ops, admin]
date: 2024-05-01
reviewed: 2024-05-02T10:30:00+02:00
source_path: elsewhere/admin.md
---

# Admin

Rotate the snapshots weekly.
"""


def test_markdown_front_matter_is_metadata_not_text(tmp_path):
    """A Markdown file's YAML front matter becomes its metadata (dates as ISO 8601 strings, as the date filters read
    them), its ``title:`` the title; the text starts after it, so the YAML is neither embedded nor shown as content.
    ``source_path`` is the reader's own key: front matter cannot overwrite it."""
    (tmp_path / "admin.md").write_text(FRONT_MATTER)
    (tmp_path / "plain.md").write_text("---\n\nA thematic break above, not front matter.\n---\nbody\n")
    docs = {d.id: d for d in read_documents(tmp_path)[0]}
    admin = docs["admin.md"]
    assert admin.title == "Administrator Guide"
    assert admin.metadata == {
        "author": "Ann",
        "tags": ["ops", "admin"],
        "date": "2024-05-01",
        "reviewed": "2024-05-02T08:30:00Z",
        "source_path": "admin.md",
    }
    assert admin.text == "\n# Admin\n\nRotate the snapshots weekly.\n"
    assert docs["plain.md"].text.startswith("---\n") and docs["plain.md"].metadata == {"source_path": "plain.md"}


def test_front_matter_that_cannot_be_metadata_is_bad_input_at_its_line(tmp_path, caplog):
    (tmp_path / "nan.md").write_text("---\nlayout: page\nscore: .nan\n---\nbody\n")
    (tmp_path / "stub.md").write_text("---\ntitle: Only a title\n---\n")
    (tmp_path / "typo.md").write_text("---\ntags: [ops\n---\nbody\n")
    with pytest.raises(BadInputError, match=r"nan\.md:3: document 'nan\.md': front matter metadata 'score': nan is"):
        read_documents(tmp_path)
    docs, report = read_documents(tmp_path, policy="skip")
    assert [(p.doc_id, p.line, p.reason) for p in report.skipped] == [
        ("nan.md", 3, "document 'nan.md': front matter metadata 'score': nan is not a finite number"),
        ("stub.md", None, "document 'stub.md': no text after the front matter"),
    ]
    # front matter that is not YAML may be Markdown: kept as text, with a warning naming the file and line
    assert [(d.id, d.text.startswith("---")) for d in docs] == [("typo.md", True)]
    assert "typo.md:3: front matter is not valid YAML" in caplog.text


def test_empty_front_matter_leaves_the_text_and_a_non_mapping_one_stays_text_with_a_warning(tmp_path, caplog):
    """Empty front matter (``---`` then ``---``, as Jekyll writes it) is no metadata and is not text; YAML that is not
    a mapping (a list) between ``---`` lines stays text, with the warning invalid YAML gets. CRLF, a BOM and a
    ``...`` closer are front matter too."""
    (tmp_path / "empty.md").write_text("---\n---\nBody text here.\n")
    (tmp_path / "comment.md").write_text("---\n# only a comment\n---\n# Heading\nBody.\n")
    (tmp_path / "list.md").write_text("---\n- a\n- b\n---\nBody text here.\n")
    (tmp_path / "crlf.md").write_bytes(b"---\r\nauthor: Ann\r\n---\r\nBody.\r\n")
    (tmp_path / "bom.md").write_bytes("\ufeff---\nauthor: Ann\n...\nBody.\n".encode())
    (tmp_path / "bare.md").write_text("---\n---\n")
    with caplog.at_level("WARNING", logger="retrieval.documents"):
        docs, report = read_documents(tmp_path, policy="skip")
    docs = {d.id: d for d in docs}
    assert (docs["empty.md"].text, docs["empty.md"].metadata) == ("Body text here.\n", {"source_path": "empty.md"})
    assert (docs["comment.md"].text, docs["comment.md"].title) == ("# Heading\nBody.\n", "Heading")
    assert docs["list.md"].text == "---\n- a\n- b\n---\nBody text here.\n"
    assert docs["list.md"].metadata == {"source_path": "list.md"}
    assert "list.md:2: front matter is not a YAML mapping (a list): kept as text" in caplog.text
    assert "empty.md" not in caplog.text and "comment.md" not in caplog.text
    assert [(docs[n].text, docs[n].metadata["author"]) for n in ("crlf.md", "bom.md")] == [
        ("Body.\r\n", "Ann"),
        ("Body.\n", "Ann"),
    ]
    assert [(p.doc_id, p.reason) for p in report.skipped] == [
        ("bare.md", "document 'bare.md': no text after the front matter")
    ]


def test_front_matter_keys_filter_search(indexed_stack, tmp_path):
    (tmp_path / "admin.md").write_text(FRONT_MATTER)
    (tmp_path / "other.md").write_text("---\nauthor: Bob\ntags: dev\ndate: 2019-01-01\n---\nRotate logs daily.\n")
    stack = indexed_stack("edge", read_documents(tmp_path)[0])
    search = stack.retriever(rerank=False).search
    for flt in ({"author": "Ann"}, {"tags": "ops"}, {"date": {"gte": "2024-01-01"}}, {"source_path": "admin.md"}):
        assert [h.doc_id for h in search("rotate", k=5, filter=flt)] == ["admin.md"], flt
    hit = search("Administrator Guide author Ann", k=1, filter={"author": "Ann"})[0]
    assert "author" not in hit.text and hit.text.startswith("# Admin")
    stack.close()


def test_utf16_and_gzip_text_files_are_read(tmp_path):
    """UTF-16 files (Notepad's "Unicode": a byte order mark) were refused 'UTF-16 text: save it as UTF-8', a
    gzip-compressed one 'unsupported file type'; a cut one is still one bad file, named."""
    (tmp_path / "ok.md").write_text("# ok\n\nfine.\n")
    (tmp_path / "minutes.txt").write_text("Meeting minutes.\n", encoding="utf-16")
    (tmp_path / "big.txt").write_bytes(b"\xfe\xff" + "Big-endian.\n".encode("utf-16-be"))
    (tmp_path / "guide.md.gz").write_bytes(gzip.compress(b"---\ntags: ops\n---\n# Guide\nSteps.\n"))
    docs, _ = read_documents(tmp_path)
    assert [(d.id, d.title, d.text) for d in docs] == [
        ("big.txt", "big", "Big-endian.\n"),
        ("guide.md.gz", "Guide", "# Guide\nSteps.\n"),
        ("minutes.txt", "minutes", "Meeting minutes.\n"),
        ("ok.md", "ok", "# ok\n\nfine.\n"),
    ]
    assert docs[1].metadata == {"tags": "ops", "source_path": "guide.md.gz"}
    (tmp_path / "nul.txt").write_text("a\x00b", encoding="utf-16")
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(b"words " * 100)[:-20])
    (tmp_path / "data.csv.gz").write_bytes(gzip.compress(b"a,b\n"))
    docs, report = read_documents(tmp_path, policy="skip")
    assert len(docs) == 4
    assert [(p.doc_id, p.reason) for p in report.skipped] == [
        (
            "cut.txt.gz",
            "damaged gzip data (Compressed file ended before the end-of-stream marker was reached): "
            "gzip -t cut.txt.gz checks it",
        ),
        ("data.csv.gz", "unsupported file type '.csv.gz'"),
        ("nul.txt", "binary content (NUL characters) in a text file"),
    ]


def test_a_single_file_is_read_by_its_suffix(tmp_path):
    (tmp_path / "meeting.md").write_text("# Meeting notes\n\nWe ship on Friday.\n")
    (tmp_path / "todo.txt").write_text("Buy lanterns.")
    docs, _ = read_documents(tmp_path / "meeting.md")
    assert [(d.id, d.title, d.metadata) for d in docs] == [
        ("meeting.md", "Meeting notes", {"source_path": "meeting.md"})
    ]
    assert [(d.id, d.text) for d in read_documents(tmp_path / "todo.txt", fmt="dir")[0]] == [
        ("todo.txt", "Buy lanterns.")
    ]
    (tmp_path / "notes.csv").write_text("id,text\n1,hello\n")
    with pytest.raises(BadInputError, match=r"notes\.csv: unsupported file type '\.csv': a file is read as JSONL"):
        read_documents(tmp_path / "notes.csv")
    (tmp_path / "notes.csv.gz").write_bytes(gzip.compress(b"id,text\n"))
    with pytest.raises(BadInputError, match=r"unsupported file type '\.csv\.gz': .*, each maybe gzip-compressed"):
        read_documents(tmp_path / "notes.csv.gz")
    (tmp_path / "corpus.data").write_text(ok("a") + "\n")
    assert [d.id for d in read_documents(tmp_path / "corpus.data", fmt="jsonl")[0]] == ["a"]


def unlistable_folder(path):
    """Make ``path`` a folder that cannot be listed: mode 000, or for root (whom modes do not stop) a link to
    /proc/1/map_files, which root cannot list either."""
    path.mkdir()
    (path / "t1.md").write_text("# Team\n\nTeam page.\n")
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.chmod(0o755)
        shutil.rmtree(path)
        path.symlink_to("/proc/1/map_files", target_is_directory=True)
    try:
        os.listdir(path)
    except PermissionError:
        return
    pytest.skip("no folder this user cannot list")


def test_an_unreadable_folder_is_bad_input_naming_it(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "page.md").write_text("# Page\n\nA page about otters.\n")
    unlistable_folder(notes / "team")
    try:
        with pytest.raises(BadInputError, match=r"notes/team: cannot read folder: Permission denied"):
            read_documents(notes)
        docs, report = read_documents(notes, policy="skip")
        assert [d.id for d in docs] == ["page.md"]
        [problem] = report.skipped
        assert (problem.doc_id, problem.folder) == ("team", True)
        assert problem.covers("team/t1.md") and not problem.covers("team.md") and not problem.covers("teams/a.md")
        with pytest.raises(BadInputError, match=r"team: cannot read folder"):  # the folder given itself
            read_documents(notes / "team", fmt="dir")
    finally:
        (notes / "team").is_symlink() or (notes / "team").chmod(0o755)


def test_linked_folders_are_followed_without_looping(tmp_path):
    notes, team = tmp_path / "notes", tmp_path / "team"
    (notes / "sub").mkdir(parents=True)
    team.mkdir()
    (notes / "local.txt").write_text("Local note about kites.")
    (team / "shared.txt").write_text("Team note about origami cranes.")
    (notes / "team").symlink_to(team, target_is_directory=True)  # a linked folder
    (notes / "linked.txt").symlink_to(team / "shared.txt")  # a linked file
    (notes / "sub" / "up").symlink_to(notes, target_is_directory=True)  # a link to a folder above: a loop
    (notes / "sub" / "out").symlink_to(tmp_path, target_is_directory=True)  # above PATH itself: not walked
    (team / "back").symlink_to(notes, target_is_directory=True)  # a loop through the linked folder
    docs, report = read_documents(notes)
    assert sorted(d.id for d in docs) == ["linked.txt", "local.txt", "team/shared.txt"] and not report.skipped


def nested(levels: int, leaf="leaf"):
    """``leaf`` inside ``levels`` objects: ``{"d": {"d": ... leaf}}``."""
    for _ in range(levels):
        leaf = {"d": leaf}
    return leaf


def test_metadata_nested_deeper_than_the_limit_is_a_bad_record_naming_its_key(tmp_path):
    """r9C-1: 130 nested levels were written, and the engine could not read its WAL back (the collection was lost)."""
    deepest = {"x": nested(MAX_METADATA_DEPTH - 1)}  # the metadata object is the first level
    records = [ok("a"), json.dumps({"_id": "evil", "text": "t", "metadata": {"x": nested(130)}})]
    records += [
        json.dumps({"_id": "deepest", "text": "t", "metadata": deepest}),
        json.dumps({"_id": "lst", "text": "t", "m": [[[1]] * 2] * 2}),
        '{"_id": "py", "text": "t", "m": ' + "[" * 5000 + "]" * 5000 + "}",  # past Python's own limit
    ]
    path = write_jsonl(tmp_path / "meta.jsonl", records)
    key = re.escape("x" + ".d" * (MAX_METADATA_DEPTH - 1))
    with pytest.raises(BadInputError, match=rf"meta\.jsonl:2: document 'evil': metadata '{key}': nested deeper than"):
        read_documents(path)
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["a", "deepest", "lst"] and docs[1].metadata == deepest
    assert [(p.line, p.doc_id) for p in report.skipped] == [(2, "evil"), (5, "py")]
    assert f"nested deeper than {MAX_METADATA_DEPTH} levels" in report.skipped[0].reason
    assert "JSON nested too deeply" in report.skipped[1].reason
    for too_deep in ({"x": nested(MAX_METADATA_DEPTH)}, {"l": [nested(MAX_METADATA_DEPTH - 1)]}):
        with pytest.raises(InvalidDocumentError, match=f"nested deeper than {MAX_METADATA_DEPTH} levels"):
            validate_documents([Document("ok", "t"), Document("d", "t", metadata=too_deep)])


def test_deep_metadata_through_the_python_api_writes_nothing(indexed_stack):
    stack = indexed_stack("edge", [])
    try:
        docs = [Document("ok", "fine text"), Document("evil", "one more document", metadata={"x": nested(130)})]
        with pytest.raises(InvalidDocumentError, match=r"^documents\[1\] \(id 'evil'\): metadata 'x\.d\.d"):
            stack.indexer().index(docs, progress=False)
        assert stack.store().schema() is None
    finally:
        stack.close()


def test_metadata_counts_towards_the_document_limit_and_has_its_own(tmp_path):
    """r9C-5: a 20 MB metadata value was accepted and copied into every chunk (345 MB index, 2.4 GB peak RSS)."""
    near = "w " * ((MAX_DOCUMENT_BYTES - 1000) // 2)  # text just under the limit on its own
    records = [
        ok("a"),
        json.dumps({"_id": "big", "text": "photons " * 200, "metadata": {"blob": "x" * (MAX_METADATA_BYTES + 1)}}),
        json.dumps({"_id": "sum", "text": near, "title": "t" * 2000}),  # over the limit together
        json.dumps({"_id": "fits", "text": "photons", "blob": "x" * (MAX_METADATA_BYTES - 100)}),
    ]
    path = write_jsonl(tmp_path / "big.jsonl", records)
    with pytest.raises(BadInputError, match=r"big\.jsonl:2: document 'big': metadata is 65,548 bytes as JSON, over"):
        read_documents(path)
    docs, report = read_documents(path, policy="skip")
    assert [d.id for d in docs] == ["a", "fits"]
    assert [p.line for p in report.skipped] == [2, 3]
    assert "bytes of text, title and metadata exceed the 8,388,608-byte limit" in report.skipped[1].reason
    heavy = Document("h", near, metadata={"blob": "x" * (MAX_METADATA_BYTES - 100)})  # each part fits, not the sum
    with pytest.raises(InvalidDocumentError, match=r"documents\[0\] \(id 'h'\): .* exceed the 8,388,608-byte limit"):
        validate_documents([heavy])


def test_ids_differing_only_in_unicode_normalization_are_one_id(tmp_path):
    import unicodedata

    nfc, nfd = "résumé.txt", unicodedata.normalize("NFD", "résumé.txt")
    assert nfc != nfd
    # a folder file named decomposed (as macOS writes names) has the composed id, as the same name typed here
    (tmp_path / "mac").mkdir()
    (tmp_path / "mac" / nfd).write_text("Curriculum vitae of Ana Lopez.")
    docs, _ = read_documents(tmp_path / "mac")
    assert [d.id for d in docs] == [nfc] and docs[0].metadata["source_path"] == nfc
    # both forms in one folder (possible on Linux): one id twice, reported
    (tmp_path / "mac" / nfc).write_text("Another file.")
    docs, report = read_documents(tmp_path / "mac", policy="skip")
    assert len(docs) == 1 and len(report.skipped) == 1
    assert "duplicate document id" in report.skipped[0].reason and "normalization" in report.skipped[0].reason
    # a JSONL file holding both forms: a duplicate id naming both lines
    source = tmp_path / "c.jsonl"
    lines = [json.dumps({"_id": unicodedata.normalize(f, "café"), "text": "x"}) for f in ("NFC", "NFD")]
    source.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError) as err:
        read_documents(source)
    message = str(err.value)
    assert f"{source}:2" in message and f"{source}:1" in message and "duplicate document id" in message
    assert "caf\\xe9" in message and "cafe\\u0301" in message  # escaped: they look the same
    with pytest.raises(InvalidDocumentError, match="duplicate document id"):
        validate_documents([Document(unicodedata.normalize(f, "café"), "x") for f in ("NFC", "NFD")])


@pytest.mark.parametrize("doc_id", [6, "", "  ", None])
def test_a_document_id_that_is_no_text_is_refused_as_bad_input(doc_id) -> None:
    with pytest.raises(HybridRagError, match=f"Document.id must be a non-empty string, got {type(doc_id).__name__}"):
        Document(doc_id, "text")


def test_format_beir_given_the_corpus_file_says_it_reads_a_folder(tmp_path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"_id": "a", "text": "Lanterns glow at dusk."}\n')
    with pytest.raises(BadInputError, match=r"corpus.jsonl: format 'beir' reads a folder holding corpus.jsonl, not a"):
        read_documents(corpus, "beir")
    assert [d.id for d in read_documents(tmp_path, "beir")[0]] == ["a"]  # its folder
