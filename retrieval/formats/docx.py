"""Word documents (``.docx``), read with python-docx: the body's paragraphs and tables in document order.

Paragraphs are set apart by blank lines, list items and table rows are lines (a row's cells joined by " | ", a
merged cell once); empty paragraphs are left out. Page headers and footers, footnotes, comments and text boxes are
not read. An old binary ``.doc`` file (or a password-protected ``.docx``, which Word stores the same way) and a
file that is no Word document are a :class:`FileProblem` saying so.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
import zlib
from typing import Any

import docx
from docx.opc.exceptions import PackageNotFoundError
from docx.table import Table
from docx.text.paragraph import Paragraph
from lxml.etree import XMLSyntaxError

from retrieval.formats import FileContent
from retrieval.input_files import FileProblem

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # a Compound File: Word 97-2003 .doc, or an encrypted .docx
CELL_SEPARATOR = " | "
TITLE_STYLES = {"Title", "Heading 1"}
NOT_DOCX = "not a Word .docx file"


def read(data: bytes) -> FileContent:
    """The text, title and metadata (``author``, ``created``, ``modified``) of the Word document in ``data``."""
    document = _opened(data)
    blocks: list[tuple[str, str]] = []  # (text, its group: "" a paragraph, "list" or a table's rows), in order
    title = ""
    for n, item in enumerate(document.iter_inner_content()):
        if isinstance(item, Table):
            blocks.extend((row, f"table {n}") for row in _rows(item))
        elif text := item.text.strip():
            if not title and item.style is not None and item.style.name in TITLE_STYLES:
                title = text
            blocks.append((text, "list" if _is_list_item(item) else ""))
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
        return docx.Document(io.BytesIO(data))
    except zipfile.BadZipFile:
        reason = "not a zip archive (damaged or cut, or another type renamed); an old .doc file: save it as .docx"
    except (PackageNotFoundError, KeyError, ValueError, XMLSyntaxError, zlib.error, EOFError) as exc:
        reason = f"a zip archive without a readable Word document ({exc}): damaged, or another Office type renamed"
    raise FileProblem(f"{NOT_DOCX}: {reason}")


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


def _is_list_item(paragraph: Paragraph) -> bool:
    """Whether ``paragraph`` is an item of a bulleted or numbered list."""
    p_pr = paragraph._p.pPr
    numbered = p_pr is not None and p_pr.numPr is not None
    return numbered or (paragraph.style is not None and paragraph.style.name.startswith("List"))


def _metadata(properties: Any) -> dict[str, Any]:
    """The document's ``author`` and its ``created`` and ``modified`` times (datetimes, stored in UTC as every
    metadata datetime is: ``2024-05-01T09:30:00Z``, as a PDF's ``created``), those it has."""
    times = {"created": properties.created, "modified": properties.modified}
    metadata: dict[str, Any] = {"author": (properties.author or "").strip()}
    metadata |= {key: value for key, value in times.items() if isinstance(value, dt.datetime)}
    return {key: value for key, value in metadata.items() if value}
