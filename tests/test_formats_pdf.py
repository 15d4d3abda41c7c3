"""PDF documents: real PDFs written with fpdf2 (and pypdf, for encrypted and damaged ones), read by the folder
reader and indexed through the real CLI into the embedded engine (Qdrant Edge)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pypdf
import pytest
from fpdf import FPDF
from pypdf.generic import NameObject, StreamObject
from typer.testing import CliRunner

from orchestration.cli import app
from retrieval.chunking import Chunker, chunk_metadata
from retrieval.documents import BadInputError, Document, read_documents
from retrieval.formats.pdf import NO_TEXT
from retrieval.store import EdgeStore

PAGE_TWO = "The quokka colony nests beside the lighthouse."
FILLER = "ledger invoice tariff harbour customs freight parcel"  # words no query of these tests asks for


def filler(words: int) -> str:
    return " ".join(FILLER.split()[i % 7] + str(i) for i in range(words))


def pdf_bytes(pages: list[str], title: str | None = None, author: str | None = None) -> bytes:
    """A PDF with one page for each of ``pages`` (an empty string: a blank page) and that /Title and /Author."""
    pdf = FPDF()
    pdf.set_font("Helvetica", size=8)
    if title is not None:
        pdf.set_title(title)
    if author is not None:
        pdf.set_author(author)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 4, text)
    return bytes(pdf.output())


def rewritten(data: bytes, change) -> bytes:
    """``data`` read and written again by pypdf, ``change(writer)`` applied in between."""
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    change(writer)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def read_one(path: Path, data: bytes, policy: str = "fail") -> tuple[list[Document], list[str]]:
    """The documents read from a folder holding only ``path`` (written with ``data``) and the skip reasons."""
    path.write_bytes(data)
    docs, report = read_documents(path.parent, policy=policy)
    return docs, [str(p) for p in report.skipped]


@contextmanager
def root_records(level: int) -> Iterator[list[logging.LogRecord]]:
    """The records that reach the root logger's handlers at ``level`` or above, as the CLI's handler sees them
    (pytest's caplog also hooks loggers that do not propagate: pypdf's)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


def test_pages_are_read_with_title_author_date_and_page_starts(tmp_path):
    data = pdf_bytes(["Page one opens here.", "", PAGE_TWO], title="Quokka field notes", author="A. Ranger")
    [doc], _ = read_one(tmp_path / "notes.pdf", data)
    assert doc.id == "notes.pdf" and doc.title == "Quokka field notes"
    assert doc.text == f"Page one opens here.\n\n{PAGE_TWO}"  # the blank page adds nothing
    meta = doc.metadata
    assert meta["pages"] == 3 and meta["author"] == "A. Ranger" and meta["source_path"] == "notes.pdf"
    assert meta["page_starts"] == [0, 20, 22] and doc.text[22:].startswith("The quokka")
    assert meta["created"].endswith("Z") and meta["created"][:2] == "20"  # ISO 8601, UTC


@pytest.mark.parametrize("title", [None, "", "   ", "Microsoft Word - report.docx", "untitled", "slides.pptx"])
def test_a_title_that_says_nothing_gives_way_to_the_file_name(tmp_path, title):
    [doc], _ = read_one(tmp_path / "annual report.pdf", pdf_bytes(["Some text."], title=title))
    assert doc.title == "annual report"


def test_a_chunk_tells_the_pages_it_starts_and_ends_on():
    """page_starts (not copied into every chunk) becomes each chunk's page and last_page, counted from 1."""
    meta = {"pages": 3, "page_starts": [0, 20, 20, 50], "author": "x"}
    assert chunk_metadata(meta, 0, 10) == {"pages": 3, "author": "x", "page": 1, "last_page": 1}
    assert chunk_metadata(meta, 19, 20) == {"pages": 3, "author": "x", "page": 1, "last_page": 1}
    assert chunk_metadata(meta, 20, 50)["page"] == 3  # page 2 is blank: text at 20 is page 3's
    assert (chunk_metadata(meta, 10, 60)["page"], chunk_metadata(meta, 10, 60)["last_page"]) == (1, 4)
    assert chunk_metadata(meta, 70, 80)["page"] == 4
    plain = {"pages": 3}
    assert chunk_metadata(plain, 10, 20) is plain


def test_long_pdf_chunks_carry_their_pages(tmp_path, dense_encoder):
    pages = [" ".join(f"p{n}w{i}" for i in range(150)) for n in range(1, 4)]  # each word names its page
    [doc], _ = read_one(tmp_path / "long.pdf", pdf_bytes(pages))
    chunks = Chunker(dense_encoder.tokenizer, 128).chunk(doc)
    assert len(chunks) > 3 and all("page_starts" not in c.metadata for c in chunks)
    for chunk in chunks:  # a chunk across a page break: pages 1-2
        assert chunk.text.split()[0].startswith(f"p{chunk.metadata['page']}w")
        assert chunk.text.split()[-1].startswith(f"p{chunk.metadata['last_page']}w")
    assert any(c.metadata["last_page"] > c.metadata["page"] for c in chunks)
    assert {c.metadata["page"] for c in chunks} == {1, 2, 3}


def test_encrypted_pdfs(tmp_path):
    """An empty user password (only the owner's set: restrictions) is read; a real password is bad input."""
    plain = pdf_bytes(["Restricted but readable."])
    [doc], _ = read_one(tmp_path / "open.pdf", rewritten(plain, lambda w: w.encrypt("", owner_password="owner")))
    assert doc.text == "Restricted but readable."
    (tmp_path / "open.pdf").unlink()
    docs, skipped = read_one(tmp_path / "locked.pdf", rewritten(plain, lambda w: w.encrypt("secret")), "skip")
    assert docs == [] and skipped == [
        f"{tmp_path / 'locked.pdf'}: encrypted with a password: decrypt it first, e.g. qpdf --decrypt --password=PW"
    ]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (pdf_bytes(["", ""]), NO_TEXT),
        (b"{}", "cannot be read as PDF: no %PDF- header (not a PDF file)"),
        (pdf_bytes(["Cut short."])[:300], "cannot be read as PDF: Stream has ended unexpectedly"),
    ],
    ids=["blank", "not-a-pdf", "cut"],
)
def test_a_bad_pdf_is_one_bad_record_naming_file_and_reason(tmp_path, data, reason):
    path = tmp_path / "bad.pdf"
    (tmp_path / "good.md").write_text("# Good\nA readable note.")
    with root_records(logging.WARNING) as records:
        docs, skipped = read_one(path, data, "skip")
    assert [d.id for d in docs] == ["good.md"] and skipped == [f"{path}: {reason}"]
    assert records == []  # pypdf's warnings ("EOF marker not found"...) stay at debug level
    with pytest.raises(BadInputError, match=f"^{re.escape(f'{path}: {reason}')}"):
        read_documents(tmp_path)


def _damaged_page_two(writer: pypdf.PdfWriter) -> None:
    stream = StreamObject()
    stream.set_data(b"")
    stream._data = b"not zlib data"  # noqa: SLF001 - what a damaged file holds: a stream that does not inflate
    stream[NameObject("/Filter")] = NameObject("/FlateDecode")
    writer.pages[1][NameObject("/Contents")] = writer._add_object(stream)  # noqa: SLF001


def test_a_damaged_page_is_left_out_with_a_warning_and_pypdf_stays_quiet(tmp_path):
    data = rewritten(pdf_bytes(["Page one.", "Page two.", "Page three."]), _damaged_page_two)
    with root_records(logging.INFO) as records:
        [doc], _ = read_one(tmp_path / "torn.pdf", data)
    assert doc.text == "Page one.\n\nPage three." and doc.metadata["page_starts"] == [0, 9, 11]
    assert [r.getMessage() for r in records] == [
        f"{tmp_path / 'torn.pdf'}: page 2: no text extracted (pypdf: Error -3 while decompressing data: incorrect "
        "header check); the other pages are read"
    ]
    with root_records(logging.DEBUG) as records:
        read_one(tmp_path / "torn.pdf", data)
    pypdf_lines = [r.getMessage() for r in records if r.name == "retrieval.formats.pdf"]
    assert pypdf_lines == ["warning (pypdf.filters): Error -3 while decompressing data: incorrect header check"]


@pytest.mark.slow
def test_a_folder_of_pdfs_and_markdown_is_indexed_and_searched_by_page(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRID_RAG_QDRANT_PATH", str(tmp_path / "index"))
    monkeypatch.setenv("HYBRID_RAG_CACHE_DIR", str(tmp_path / "cache"))
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "field.pdf").write_bytes(
        pdf_bytes([filler(400), f"{filler(400)} {PAGE_TWO}"], title="Island field notes")
    )
    (papers / "pumps.pdf").write_bytes(pdf_bytes(["Replace the pump gasket every two years."]))
    (papers / "readme.md").write_text("# Kitchen\nStir the noodles often.")

    def run(*args: str) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.stdout

    first = json.loads(run("index", str(papers), "-c", "papers", "--json"))
    assert (first["documents"], first["skipped"]) == (3, []) and first[
        "points"
    ] > 6  # field.pdf: a chunk a page or more
    again = json.loads(run("index", str(papers), "-c", "papers", "--json"))
    assert (again["embedded"], again["deleted"], again["unchanged"]) == (0, 0, first["points"])  # nothing rewritten
    [top, *_] = json.loads(run("search", "quokka colony nests beside the lighthouse", "-c", "papers", "--json"))
    assert top["doc_id"] == "field.pdf" and top["title"] == "Island field notes"
    assert PAGE_TWO in top["text"] and top["metadata"]["page"] == 2 and top["metadata"]["pages"] == 2
    table = run("search", "quokka colony nests beside the lighthouse", "-c", "papers", "--k", "1")
    assert re.search(r"│ 1 +│ field\.pdf +│ \d+ p\.2 +│", table)  # the page, beside the chunk
    across = run("search", "ledger invoice", "-c", "papers", "--filter", '{"page": 1, "last_page": 2}', "--json")
    hits = json.loads(across)  # field.pdf's chunks across the page break: their text is on pages 1 and 2
    assert hits and {h["doc_id"] for h in hits} == {"field.pdf"}
    store = EdgeStore(tmp_path / "index", "papers")
    try:
        assert store.count({"doc_id": "pumps.pdf"}) == 1
    finally:
        store.close()
