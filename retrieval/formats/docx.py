"""Word documents (``.docx``), read with python-docx: the body's paragraphs and tables in document order.

Paragraphs are set apart by blank lines, list items and table rows are lines (a row's cells joined by " | ", a
merged cell once); empty paragraphs are left out. Page headers and footers, footnotes, comments and text boxes are
not read. An old binary ``.doc`` file (or a password-protected ``.docx``, which Word stores the same way) and a
file that is no Word document are a :class:`FileProblem` saying so.

A hostile file is one too: its zip archive is checked before python-docx reads a member whole (a zip bomb): at
most :data:`MAX_MEMBERS` members, deflated or stored as Word writes them, none unpacking to more than it declares,
an XML part (a member that starts as XML, whatever its name) at most :data:`MAX_XML_BYTES` unpacked, all at most
:data:`MAX_UNPACKED_BYTES`; the body at most :data:`MAX_PARAGRAPHS` paragraphs (python-docx takes some 0.1 ms
each). python-docx's XML parser resolves no entity (no external file is read) and libxml2 refuses an entity
expansion bomb.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import zipfile
import zlib
from typing import Any

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.oxml.ns import qn
from docx.styles import BabelFish
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml.etree import XMLSyntaxError

from retrieval.formats import MAX_FILE_BYTES, FileContent
from retrieval.input_files import FileProblem

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a Compound File: Word 97-2003 .doc, or an encrypted .docx
CELL_SEPARATOR = " | "
TITLE_STYLES = {"Title", "Heading 1"}
NOT_DOCX = "not a Word .docx file"
MAX_MEMBERS = 10_000  # a Word document holds tens; listing a million tiny members takes GBs
MAX_XML_BYTES = 32 * 1024 * 1024  # an XML part unpacked: python-docx parses it whole (about 20 times its size)
MAX_UNPACKED_BYTES = MAX_FILE_BYTES  # all members unpacked: images, stored as they are, may make a file large
MAX_PARAGRAPHS = 100_000  # in tables too: some 100 µs each in python-docx
CENTRAL_HEADER = b"PK\x01\x02"  # starts each member's entry in the archive's list of members
XML_LEAD = b" \t\r\n\x00\xef\xbb\xbf\xfe\xff"  # what may come before XML's first "<": white space, a BOM
WORD_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
ENCRYPTED = 0x1  # a zip member's flag (zipfile needs a password to read it)


def read(data: bytes) -> FileContent:
    """The text, title and metadata (``author``, ``created``, ``modified``) of the Word document in ``data``."""
    document = _opened(data)
    if (paragraphs := sum(1 for _ in document.element.body.iter(qn("w:p")))) > MAX_PARAGRAPHS:
        raise FileProblem(f"too long to read: {paragraphs:,} paragraphs, over {MAX_PARAGRAPHS:,}")
    blocks: list[tuple[str, str]] = []  # (text, its group: "" a paragraph, "list" or a table's rows), in order
    title = ""
    styles = _style_names(document)
    for n, item in enumerate(document.iter_inner_content()):
        if isinstance(item, Table):
            blocks.extend((row, f"table {n}") for row in _rows(item))
        elif text := item.text.strip():
            style = styles.get(item._p.style, styles[None])
            if not title and style in TITLE_STYLES:
                title = text
            blocks.append((text, "list" if _is_list_item(item, style) else ""))
    # a group's lines follow each other; other blocks are set apart by a blank line
    text = "".join(("\n" if group and group == blocks[i - 1][1] else "\n\n") + b for i, (b, group) in enumerate(blocks))
    if not (text := text.strip()):
        raise FileProblem("no text to index: the document's body holds no text (only images, or empty)")
    properties = document.core_properties
    return FileContent(text, (properties.title or "").strip() or title, _metadata(properties))


def _opened(data: bytes) -> Any:
    """The python-docx document of ``data``, or FileProblem naming why it is none."""
    if data.startswith(OLE2_MAGIC):
        raise FileProblem(
            f"{NOT_DOCX}: an old .doc file (Word 97-2003) or a password-protected one: save it as .docx (without a "
            "password) to index it"
        )
    try:
        _check_members(data)
        return docx.Document(io.BytesIO(data))
    except zipfile.BadZipFile:
        reason = "not a zip archive (damaged or cut, or another type renamed); an old .doc file: save it as .docx"
    except (PackageNotFoundError, KeyError, ValueError, XMLSyntaxError, zlib.error, EOFError) as exc:
        reason = f"a zip archive without a readable Word document ({exc}): damaged, or another Office type renamed"
    raise FileProblem(f"{NOT_DOCX}: {reason}")


def _check_members(data: bytes) -> None:
    """FileProblem when the zip archive in ``data`` is no Word document that can be read in bounded memory: too
    many members, one compressed or encrypted as Word never does, members that unpack to too much (a zip bomb) or
    to more than the archive says (python-docx reads a member whole: zipfile inflates all of its data, then cuts
    it to the size declared)."""
    if (count := data.count(CENTRAL_HEADER)) > MAX_MEMBERS:  # counted before zipfile lists them
        raise FileProblem(f"{NOT_DOCX}: a zip archive of over {MAX_MEMBERS:,} members ({count:,})")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = archive.infolist()
        if (total := sum(m.file_size for m in members)) > MAX_UNPACKED_BYTES:
            raise FileProblem(f"{NOT_DOCX}: unpacks to {total:,} bytes, over {MAX_UNPACKED_BYTES:,} (a zip bomb?)")
        for member in members:
            name = member.filename
            if member.compress_type not in WORD_METHODS or member.flag_bits & ENCRYPTED:
                raise FileProblem(f"{NOT_DOCX}: member {name!r} is compressed or encrypted as Word never does")
            if member.compress_type == zipfile.ZIP_DEFLATED and not _inflates_as_declared(archive, member):
                raise FileProblem(f"{NOT_DOCX}: member {name!r} is damaged or unpacks to more than its declared size")
            if member.file_size > MAX_XML_BYTES and _is_xml(archive, member):
                raise FileProblem(
                    f"{NOT_DOCX}: member {name!r} unpacks to {member.file_size:,} bytes, over the {MAX_XML_BYTES:,} "
                    "an XML part may hold (a zip bomb?)"
                )


def _inflates_as_declared(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bool:
    """Whether ``member`` unpacks to the size and checksum it declares (read a MiB at a time, and one byte
    further than it declares: zipfile's checksum then fails when there is more)."""
    over = copy.copy(member)
    over.file_size += 1  # zipfile reads no further than a member's declared size
    size = 0
    try:
        with archive.open(over) as handle:
            while chunk := handle.read(1 << 20):
                size += len(chunk)
    except zipfile.BadZipFile:  # a bad checksum
        return False
    return size == member.file_size


def _is_xml(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> bool:
    """Whether ``member`` may be XML (python-docx parses it whole if its content type says so, whatever its name):
    its first KiB, past a byte order mark and white space, starts a tag or is all white space."""
    with archive.open(member) as handle:
        head = handle.read(1024).lstrip(XML_LEAD)
    return not head or head.startswith(b"<")


def _rows(table: Table) -> list[str]:
    """The table's rows, each a line of its cells' text (a cell merged over several columns once)."""
    rows = []
    for row in table.rows:
        cells, seen = [], set()
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(" ".join(p.text.strip() for p in cell.paragraphs if p.text.strip()))
        while cells and not cells[-1]:
            cells.pop()
        if cells:
            rows.append(CELL_SEPARATOR.join(cells))
    return rows


def _style_names(document: Any) -> dict[str | None, str]:
    """The names of the document's paragraph styles by id, and (key None) of its default one, as python-docx's
    ``Paragraph.style`` names them: read once (python-docx reads every style for each paragraph)."""
    names: dict[str | None, str] = {None: ""}
    for style in document.styles.element.style_lst:
        if style.get(qn("w:type"), "paragraph") != "paragraph":
            continue
        name = BabelFish.internal2ui(style.name_val) or ""
        names.setdefault(style.get(qn("w:styleId")), name)
        if style.get(qn("w:default")) in {"1", "true", "on"}:  # the last default is the default
            names[None] = name
    return names


def _is_list_item(paragraph: Paragraph, style: str) -> bool:
    """Whether ``paragraph`` (of style ``style``) is an item of a bulleted or numbered list."""
    p_pr = paragraph._p.pPr
    numbered = p_pr is not None and p_pr.numPr is not None
    return numbered or style.startswith("List")


def _metadata(properties: Any) -> dict[str, Any]:
    """The document's ``author`` and its ``created`` and ``modified`` times (datetimes, stored in UTC as every
    metadata datetime is: ``2024-05-01T09:30:00Z``, as a PDF's ``created``), those it has."""
    times = {"created": properties.created, "modified": properties.modified}
    metadata: dict[str, Any] = {"author": (properties.author or "").strip()}
    metadata |= {key: value for key, value in times.items() if isinstance(value, dt.datetime)}
    return {key: value for key, value in metadata.items() if value}
