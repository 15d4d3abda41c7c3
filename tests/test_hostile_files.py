"""Files crafted to hurt the indexer in a drop folder (zip bombs, huge or endless content): each is one bad record
naming the file and the reason, read in bounded time and memory, beside a good file that is still indexed. The
bounds are set small here (monkeypatch) so that the hostile files stay small."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import docx
import pytest
from fpdf import FPDF

from retrieval.documents import BadInputError, read_documents
from retrieval.formats import docx as docx_reader
from retrieval.formats import html as html_reader
from retrieval.formats import pdf as pdf_reader
from retrieval.input_files import FileProblem, file_bytes


def word(paragraphs: int = 3) -> bytes:
    document = docx.Document()
    for n in range(paragraphs):
        document.add_paragraph(f"Paragraph {n} about interest rates.")
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def repacked(data: bytes, method: int = zipfile.ZIP_DEFLATED, extra: int = 0) -> bytes:
    """The zip archive ``data`` with its members compressed by ``method`` and ``extra`` empty members added."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for member in source.infolist():
            archive.writestr(member.filename, source.read(member))
        for n in range(extra):
            archive.writestr(f"junk/{n}.bin", b"")
    return out.getvalue()


def lying(data: bytes, member: str, size: int) -> bytes:
    """The zip archive ``data`` whose list of members says ``member`` unpacks to ``size`` bytes (and names the
    checksum of its first ``size`` bytes): zipfile reads it cut to that size without a complaint."""
    real = zipfile.ZipFile(io.BytesIO(data)).read(member)
    raw, at = bytearray(data), 0
    while (at := raw.find(b"PK\x01\x02", at + 1)) >= 0:
        length = struct.unpack_from("<H", raw, at + 28)[0]
        if raw[at + 46 : at + 46 + length] == member.encode():
            struct.pack_into("<I", raw, at + 16, zlib.crc32(real[:size]))  # the member's checksum
            struct.pack_into("<I", raw, at + 24, size)  # its size unpacked
            return bytes(raw)
    raise KeyError(member)


def skipped(folder: Path, name: str, data: bytes) -> str:
    """The reason file ``name`` holding ``data`` is skipped; a good file beside it is read."""
    folder.mkdir(exist_ok=True)
    (folder / "good.md").write_text("Central banks raise interest rates.\n")
    (folder / name).write_bytes(data)
    docs, report = read_documents(folder, policy="skip")
    assert [d.id for d in docs] == ["good.md"]
    assert [p.path.name for p in report.skipped] == [name]
    return report.skipped[0].reason


def test_a_docx_member_that_unpacks_to_more_than_it_declares_is_refused(tmp_path):
    data = lying(word(), "word/document.xml", 100)  # python-docx would read it whole: zipfile inflates all of it
    reason = skipped(tmp_path, "bomb.docx", data)
    assert "'word/document.xml' is damaged or unpacks to more than its declared size" in reason


def test_a_docx_xml_part_over_the_bound_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(docx_reader, "MAX_XML_BYTES", 2_000)
    reason = skipped(tmp_path, "bomb.docx", word(100))
    assert "member 'word/document.xml' unpacks to" in reason and "over the 2,000 an XML part may hold" in reason


def test_a_zip_of_too_many_members_or_another_compression_is_no_docx(tmp_path, monkeypatch):
    monkeypatch.setattr(docx_reader, "MAX_MEMBERS", 50)
    assert "a zip archive of over 50 members" in skipped(tmp_path / "a", "many.docx", repacked(word(), extra=60))
    bzip2 = repacked(word(), zipfile.ZIP_BZIP2)  # zipfile would inflate a bzip2 chunk whole
    assert "compressed or encrypted as Word never does" in skipped(tmp_path / "b", "bz.docx", bzip2)
    (tmp_path / "b" / "good.md").unlink()
    with pytest.raises(BadInputError, match=r"bz\.docx: not a Word \.docx file: member"):
        read_documents(tmp_path / "b", policy="fail")


def test_a_docx_of_too_many_paragraphs_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(docx_reader, "MAX_PARAGRAPHS", 10)
    assert skipped(tmp_path, "long.docx", word(11)) == "too long to read: 11 paragraphs, over 10"


def test_an_html_page_of_too_many_bytes_or_tags_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(html_reader, "MAX_TAGS", 1_000)
    reason = skipped(tmp_path / "a", "tags.html", b"<html><body>" + b"<i>a</i>" * 600 + b"</body></html>")
    assert reason == "too many tags to read: 1,204 '<', over the 1,000 a page may hold"
    monkeypatch.setattr(html_reader, "MAX_BYTES", 10_000)
    reason = skipped(tmp_path / "b", "big.html", b"<html><body><p>" + b"word " * 3_000 + b"</p></body></html>")
    assert reason.startswith("too large to read: 15,") and "over the 10,000 a page may hold" in reason


def test_a_pdf_whose_text_extraction_takes_too_long_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(pdf_reader, "MAX_SECONDS", -1)  # 2,000 pages sharing one huge content stream take hours
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(text="Interest rates")
    reason = skipped(tmp_path, "slow.pdf", bytes(pdf.output()))
    assert reason == "too much content to read: its text extraction took over -1 s"


def test_a_plain_file_over_the_limit_is_not_read_whole(tmp_path):
    (tmp_path / "big.pdf").write_bytes(b"%PDF-" + b" " * 100)
    with pytest.raises(FileProblem, match="over 50 bytes, more than a document may hold"):
        file_bytes(tmp_path / "big.pdf", 50)
