"""What the command line prints: content and user input shown literally, never interpreted by the terminal.

Every human-readable line goes through :class:`LiteralConsole` (rich output) or :func:`printable` (plain text,
log lines): rich markup (``[bold]``, ``[link=...]``, ``[/x]``), emoji codes and highlighting are not applied to
strings, and control characters (ANSI/OSC escapes, other C0/C1 codes, bidirectional overrides) are shown
escaped (``\\x1b``), so a document, id, query, path or error message can neither crash the output, style it,
make links, nor move the cursor or retitle the terminal. Styling is added only by the code, with ``Text``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from rich.console import Console
from rich.protocol import is_renderable
from rich.text import Text

# C0 codes but tab and newline, DEL, C1 codes, the bidirectional embeddings/overrides/isolates, and lone
# surrogates (a file name's bytes that are not UTF-8: printed as they are, the output would not be UTF-8 either)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(value: object) -> str:
    """``str(value)`` with every control character but tab and newline, and every lone surrogate, shown as its
    escape (``\\x1b``, ``\\u202e``, ``\\udce9``)."""
    return _CONTROL.sub(lambda m: ascii(m[0])[1:-1], str(value))


class LiteralConsole(Console):
    """A rich console that renders every string literally (see the module); ``Text`` objects keep their
    styles."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """As :meth:`Console.print`, every object that is not a rich renderable printed as its ``str``."""
        super().print(*(o if is_renderable(o) else str(o) for o in objects), **kwargs)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """Every string rich renders (printed objects, table titles and cells) passes here."""
        return super().render_str(printable(text), **{**kwargs, "markup": False, "emoji": False})


class PrintableFormatter(logging.Formatter):
    """Log lines with their control characters escaped (a message may quote content or a server's answer)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


class ConsoleHandler(logging.Handler):
    """Log records as the command line's own lines, one style for both: ``warning: message`` (the level in
    lowercase, styled as the CLI styles its labels), printed literally on ``console``."""

    STYLES = {"WARNING": "yellow", "ERROR": "red", "CRITICAL": "red"}

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tag = label(f"{record.levelname.lower()}:", self.STYLES.get(record.levelname, ""))
            self.console.print(tag, self.format(record), soft_wrap=True)
        except Exception:
            self.handleError(record)


def show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """A ``warnings.showwarning`` hook: a Python warning (a library's ``warnings.warn``) as a log warning of
    ``py.warnings`` (the logger ``logging.captureWarnings`` uses), so that it prints as the CLI's other warnings
    (``warning: message``), not as ``/path/file.py:123: UserWarning: message`` and its source line. Installed by
    the CLI only: an application importing the library keeps its own."""
    logging.getLogger("py.warnings").warning("%s", message)


def label(text: str, style: str) -> Text:
    """Styled text (``error:``, ``warning:``, ``skipped``), as literal as any other string."""
    return Text(printable(text), style=style)
