"""PDF documents (pypdf): the text layer of every page, the title and author from the document information.

A PDF without a text layer (a scan) has nothing to index: it needs OCR first. pypdf's own log records (warnings
about slightly damaged files) are logged at debug level by this module's logger: a folder of PDFs does not flood the
output.

A hostile PDF is a :class:`FileProblem` in bounded time and memory: pypdf's own limits refuse a stream that inflates
too much, a looping page tree or one of over 100,000 entries, a content stream of too many tokens; the text
extraction of a file stops after :data:`MAX_SECONDS` (pypdf bounds a stream's work, not a file's: 2,000 pages may
share one content stream of 2 million tokens, a page may draw one such form 5,000 times). Known limit: pypdf holds a
literal string in some 20 times its size (a 100 MB ``/Title``: 2 GB).
"""

from __future__ import annotations

import io
import logging
import re
import time
from contextvars import ContextVar
from typing import Any

from pypdf import PageObject, PdfReader
from pypdf.errors import DependencyError, FileNotDecryptedError

from retrieval.chunking import PAGE_STARTS
from retrieval.formats import FileContent
from retrieval.input_files import FileProblem

log = logging.getLogger(__name__)

MAX_SECONDS = 60  # a file's text extraction (a 1,000-page book takes some 20 s)
NO_TEXT = "no text: a scanned PDF? run OCR on it first, e.g. ocrmypdf"
# a /Title that names a file or says nothing: "Microsoft Word - report.docx", "untitled", "slides.pptx"
_NO_TITLE = re.compile(
    r"(?:microsoft \w+ - .*|untitled\b.*|title|document\d*|.*\.(?:pdf|docx?|pptx?|xlsx?|odt|rtf|txt|tex|dvi|ps|indd))",
    re.IGNORECASE,
)
# the messages pypdf logs while a page's text is extracted (None: no page is)
_PAGE_RECORDS: ContextVar[list[str] | None] = ContextVar("pdf_page_records", default=None)


class _AtDebug(logging.Handler):
    """Logs the records of pypdf's loggers (its warnings about slightly damaged files: one a file or more, which
    would flood the output of a folder's read) at debug level, through this module's logger, naming the source; and
    collects them for the page being extracted (:data:`_PAGE_RECORDS`)."""

    def emit(self, record: logging.LogRecord) -> None:
        if (found := _PAGE_RECORDS.get()) is not None:
            found.append(record.getMessage())
        log.debug("%s (%s): %s", record.levelname.lower(), record.name, record.getMessage())


_PYPDF = logging.getLogger("pypdf")
_PYPDF.addHandler(_AtDebug())
_PYPDF.propagate = False


def read(data: bytes) -> FileContent:
    """The text of PDF ``data``: its pages' text separated by a blank line; metadata ``pages``, ``page_starts``
    (where each page's text starts: a chunk's ``page``), ``author`` and ``created`` when set. A page whose text
    cannot be extracted is left out with a note in ``warnings``. :class:`FileProblem` for a file that is no PDF or
    is damaged, is encrypted with a password, or has no text."""
    reader = _open(data)
    deadline = _Deadline()
    texts: list[str] = []
    warnings: list[str] = []
    for number, page in enumerate(reader.pages, 1):
        deadline()
        text, failed = _page_text(page, deadline)
        texts.append(text)
        if failed:
            warnings.append(f"page {number}: no text extracted ({failed}); the other pages are read")
    if not any(texts):
        if warnings:
            raise FileProblem(f"cannot be read as PDF: no page's text could be extracted ({warnings[0]})")
        raise FileProblem(NO_TEXT if texts else "no text: the PDF has no pages")
    starts, text = [], ""
    for page_text in texts:
        if page_text and text:
            text += "\n\n"
        starts.append(len(text))
        text += page_text
    info = _info(reader)
    metadata: dict[str, Any] = {"pages": len(texts), PAGE_STARTS: starts}
    metadata |= {k: v for k, v in info.items() if k != "title"}
    return FileContent(text, info.get("title", ""), metadata, warnings)


class _Deadline:
    """Called before each content operator pypdf extracts text from, and between pages: FileProblem when the
    file's text extraction has taken over MAX_SECONDS."""

    def __init__(self) -> None:
        self.end = time.monotonic() + MAX_SECONDS

    def __call__(self, *_: Any) -> None:
        if time.monotonic() > self.end:
            raise FileProblem(f"too much content to read: its text extraction took over {MAX_SECONDS} s")


def _page_text(page: PageObject, deadline: _Deadline) -> tuple[str, str]:
    """The text of ``page`` and, when it gave none because of an error (raised, or a warning pypdf logged while
    extracting it: damaged page content), the error ("": none). FileProblem: the file's time is up."""
    records = _PAGE_RECORDS.set([])
    try:
        text = _clean(page.extract_text(visitor_operand_before=deadline)).strip()
    except FileProblem:
        raise
    except Exception as exc:  # noqa: BLE001 - any error of a damaged page: the others are still read
        return "", _reason(exc)
    finally:
        found = _PAGE_RECORDS.get() or []
        _PAGE_RECORDS.reset(records)
    return text, "" if text or not found else f"pypdf: {found[0]}"


def _open(data: bytes) -> PdfReader:
    """A reader of ``data`` with its pages listed and, when encrypted, decrypted (an empty password is tried)."""
    if b"%PDF-" not in data[:1024]:  # where the header may lie
        raise FileProblem("cannot be read as PDF: no %PDF- header (not a PDF file)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise FileNotDecryptedError
        len(reader.pages)  # a damaged page tree fails here, not page by page
    except FileNotDecryptedError:
        raise FileProblem("encrypted with a password: decrypt it first, e.g. qpdf --decrypt --password=PW") from None
    except DependencyError as exc:  # AES encryption (even with an empty password) needs the cryptography package
        raise FileProblem(f"cannot be read as PDF: {exc} (pip install cryptography)") from None
    except Exception as exc:  # noqa: BLE001 - pypdf raises many kinds on a damaged file
        raise FileProblem(f"cannot be read as PDF: {_reason(exc)}") from None
    return reader


def _info(reader: PdfReader) -> dict[str, Any]:
    """The document information worth storing: ``title`` when meaningful, ``author``, ``created`` (a datetime)."""
    try:
        info = reader.metadata
    except Exception:  # noqa: BLE001 - a damaged information dictionary: the text is still read
        return {}
    if info is None:
        return {}
    found: dict[str, Any] = {}
    title = " ".join(_clean(str(info.title or "")).split())
    if title and not _NO_TITLE.fullmatch(title):
        found["title"] = title
    if author := _clean(str(info.author or "")).strip():
        found["author"] = author
    try:
        if info.creation_date is not None:
            found["created"] = info.creation_date  # stored as ISO 8601 (json_metadata)
    except ValueError:  # a date pypdf cannot parse: left out
        pass
    return found


def _clean(text: str) -> str:
    """``text`` without NULs and lone surrogates (which a PDF's odd encodings may give): storable text."""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _reason(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
