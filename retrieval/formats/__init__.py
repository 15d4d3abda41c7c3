"""Readers of the document files a folder may hold besides plain text and Markdown (PDF, HTML, Word): one module per
file type, each turning a file's bytes into a :class:`FileContent`. A module is imported only when a file of its type
is read; :func:`reader_for` finds it by suffix.

A reader raises :class:`~retrieval.input_files.FileProblem` naming what is wrong with the file (damaged, encrypted,
no text layer...): the document reader reports it with the file's path and applies the bad-input policy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_FILE_BYTES = 256 * 1024 * 1024  # a PDF or Word file's size (images make them far larger than their text)


@dataclass(frozen=True)
class FileContent:
    """What a reader found in a file: its ``text``, a ``title`` ("": none, the file name serves) and ``metadata``
    stored with the document (values as :func:`~retrieval.documents.json_metadata` stores them: a datetime becomes
    ISO 8601; never ``title`` or ``source_path``, which the document reader sets); ``warnings``: what it left out
    (a page that failed), which the document reader logs naming the file."""

    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


FileReader = Callable[[bytes], FileContent]  # a file's bytes (decompressed) -> its content, or FileProblem

# suffix -> the module under retrieval.formats whose ``read(data: bytes) -> FileContent`` reads it
READER_MODULES: dict[str, str] = {
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".docx": "docx",
}


def reader_for(suffix: str) -> FileReader | None:
    """The reader of files with ``suffix`` (lower case, with its dot, without ``.gz``), or None: not a type read
    here."""
    module = READER_MODULES.get(suffix)
    if module is None:
        return None
    return importlib.import_module(f"retrieval.formats.{module}").read
