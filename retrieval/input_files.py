"""Opening the input files users have: gzip-compressed (told by its content, decompressed as it is read), UTF-8
with or without a byte order mark, UTF-16 with one (Notepad's "Unicode", Windows PowerShell's ``>``), lines ending
in LF, CRLF or a lone CR. Any other bytes that are not UTF-8 are an error saying how to convert the file: an
encoding is never guessed."""

from __future__ import annotations

import codecs
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # little-, big-endian
GZIP_MAGIC = b"\x1f\x8b"
GZIP_ERRORS = (OSError, EOFError, zlib.error)  # damaged or cut gzip data, as the gzip module raises it
_SURROGATE = re.compile("[\ud800-\udfff]")

ErrorFactory = Callable[[Path, int | None, str], Exception]  # (file, line or None, reason): the reader's own error


class FileProblem(Exception):
    """Why a file cannot be read as text (``reason``), at ``line`` (None: the file as a whole)."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason)
        self.reason, self.line = reason, line


def file_type(path: Path) -> str:
    """The type suffix of ``path`` in lower case, with ``.gz`` kept as part of it (``.jsonl.gz``)."""
    suffix = path.suffix.lower()
    return inner_suffix(path) + suffix if suffix == ".gz" else suffix


def inner_suffix(path: Path) -> str:
    """The suffix of ``path`` in lower case, under a ``.gz`` one: what the compressed file holds."""
    suffix = path.suffix.lower()
    return Path(path.stem).suffix.lower() if suffix == ".gz" else suffix


def base_name(path: Path) -> str:
    """The name of ``path`` without its type suffix (and ``.gz``)."""
    return Path(path.stem).stem if path.suffix.lower() == ".gz" else path.stem


def utf8_problem(data: bytes, exc: UnicodeDecodeError, path: Path, offset: str = "byte") -> str:
    """What to tell of bytes ``data`` of file ``path`` that are not UTF-8 (``exc``: their decoding's error): the
    byte (``offset``: what its position counts from) and the command that converts the file."""
    return f"not valid UTF-8 ({offset} {exc.start}: {bytes(data[exc.start : exc.start + 1])!r}; {convert_hint(path)})"


def convert_hint(path: Path) -> str:
    """How to convert file ``path``, which is not UTF-8, when it is Latin-1 or Windows-1252 (which one is for the
    user to say: both decode any byte)."""
    name, iconv = path.name, "iconv -f cp1252 -t utf-8"
    convert = f"gunzip -c {name} | {iconv} | gzip" if path.suffix.lower() == ".gz" else f"{iconv} {name}"
    return f"Latin-1 or Windows-1252? convert it: {convert} > {name}.new && mv {name}.new {name}"


def gzip_problem(path: Path, exc: BaseException) -> str:
    """What to tell of gzip data of ``path`` that cannot be decompressed (``exc``: cut, damaged)."""
    return f"damaged gzip data ({exc or type(exc).__name__}): gzip -t {path.name} checks it"


def raw_lines(path: Path, error: ErrorFactory, handle: io.BufferedReader | None = None) -> Iterator[bytes]:
    """The lines of file ``path`` as UTF-8 bytes with their ends, read as they are needed: gzip-compressed data is
    decompressed, UTF-16 text (a byte order mark) decoded, a UTF-8 byte order mark dropped. A UTF-8 file's lines
    are split at LF only (:func:`numbered_lines` splits the rest) and are not checked. A file that cannot be opened,
    damaged gzip data or UTF-16 that is not valid raise ``error(path, line, reason)``. ``handle``: the file
    already open (stdin; ``path`` names it), read from where it is and left open."""
    if handle is not None:
        yield from _decoded_lines(path, handle, error)
        return
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise error(path, None, f"cannot open file: {exc.strerror or exc}") from exc
    with handle:
        yield from _decoded_lines(path, handle, error)


def _decoded_lines(path: Path, handle: io.BufferedReader, error: ErrorFactory) -> Iterator[bytes]:
    compressed = handle.peek(len(GZIP_MAGIC)).startswith(GZIP_MAGIC)
    stream: BinaryIO = gzip.GzipFile(fileobj=handle) if compressed else handle  # type: ignore[assignment]
    try:
        yield from _utf8_lines(path, stream, error)
    except GZIP_ERRORS as exc:
        if not compressed:
            raise error(path, None, f"cannot read file: {getattr(exc, 'strerror', None) or exc}") from exc
        raise error(path, None, gzip_problem(path, exc)) from None


def _utf8_lines(path: Path, stream: BinaryIO, error: ErrorFactory) -> Iterator[bytes]:
    head = stream.peek(len(UTF8_BOM))[: len(UTF8_BOM)]  # type: ignore[attr-defined]
    if not head.startswith(UTF16_BOMS):
        for line_no, raw in enumerate(stream):
            yield raw.removeprefix(UTF8_BOM) if line_no == 0 else raw
        return
    # split at LF, CRLF and a lone CR only (not at U+2028 and the like, as str.splitlines does)
    text = io.TextIOWrapper(stream, encoding="utf-16", errors="surrogatepass", newline="")
    line_no = 0
    try:
        for line in text:
            line_no += 1
            if _SURROGATE.search(line):
                raise error(path, line_no, "not valid UTF-16 (a lone surrogate)")
            yield line.encode("utf-8")
    except UnicodeDecodeError as exc:  # an odd number of bytes: a cut file
        raise error(path, line_no + 1, f"not valid UTF-16 ({exc.reason})") from None
    finally:
        text.detach()  # the caller closes the file


def numbered_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``lines`` (as :func:`raw_lines` gives them), numbered from 1, without their line ends: a line ends at LF,
    CRLF or a lone CR (classic Mac OS, some exporters), as an editor and Python's text mode read them. (JSON text
    holds no raw CR.)"""
    line_no = 0
    for raw in lines:
        body = raw[:-2] if raw.endswith(b"\r\n") else raw.removesuffix(b"\n")
        pieces = body.split(b"\r")
        if len(pieces) > 1 and not pieces[-1] and not raw.endswith(b"\n"):  # the file's last line, ended by a CR
            pieces.pop()
        for piece in pieces:
            line_no += 1
            yield line_no, piece


def text_lines(path: Path, error: ErrorFactory) -> Iterator[tuple[int, str]]:
    """The lines of text file ``path`` as :func:`raw_lines` and :func:`numbered_lines` read them, decoded; a line
    that is not UTF-8 raises ``error(path, line, reason)``, the file's reader's own error, instead of a
    UnicodeDecodeError naming neither."""
    for line_no, raw in numbered_lines(raw_lines(path, error)):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(path, line_no, utf8_problem(raw, exc, path)) from None
        yield line_no, line


def file_text(path: Path, limit: int) -> str:
    """The text of file ``path``, read whole as :func:`raw_lines` reads it (gzip, byte order marks), or
    :class:`FileProblem`: it cannot be read, holds a NUL (binary), is not UTF-8 (nor UTF-16 with a byte order
    mark), or decompresses to over ``limit`` bytes (a gzip bomb is not read whole)."""
    try:
        with path.open("rb") as handle:
            compressed = handle.peek(len(GZIP_MAGIC)).startswith(GZIP_MAGIC)
            raw = _unzipped(path, handle, limit) if compressed else handle.read()
    except OSError as exc:
        raise FileProblem(f"cannot read file: {exc.strerror or exc}") from exc
    if raw.startswith(UTF16_BOMS):
        try:
            text = raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise FileProblem(f"not valid UTF-16 ({exc.reason}, byte offset {exc.start})") from None
        if "\x00" in text:
            raise FileProblem("binary content (NUL characters) in a text file")
        return text
    if b"\x00" in raw:  # anywhere: one past the first 8 KiB was indexed as text
        raise FileProblem("binary content (NUL bytes) in a text file")
    try:
        return raw.decode("utf-8-sig")  # a leading BOM is not text
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise FileProblem(utf8_problem(raw, exc, path, offset="byte offset"), line) from None


def _unzipped(path: Path, handle: BinaryIO, limit: int) -> bytes:
    """The decompressed content of gzip file ``handle``, at most ``limit`` bytes, or :class:`FileProblem`."""
    try:
        with gzip.GzipFile(fileobj=handle) as unzipped:
            raw = unzipped.read(limit + 1)
    except GZIP_ERRORS as exc:
        raise FileProblem(gzip_problem(path, exc)) from None
    if len(raw) > limit:
        raise FileProblem(f"decompresses to over {limit:,} bytes, more than a document may hold")
    return raw


def encoding_problem(head: bytes) -> str | None:
    """Why a file whose first bytes are ``head`` is no UTF-8 text for a reader that takes only UTF-8 (the corpora
    file), or None: UTF-16 (a byte order mark) or gzip-compressed."""
    bom = next((b for b in UTF16_BOMS if head.startswith(b)), None)
    if bom is not None:
        return f"UTF-16 text (byte order mark {bom.hex(' ').upper()}): save it as UTF-8"
    if head.startswith(GZIP_MAGIC):
        return "gzip-compressed: decompress it first (gunzip -k FILE)"
    return None
