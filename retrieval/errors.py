"""The library's exceptions: one base class, so callers (and the CLI) can catch every expected failure."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


class HybridRagError(Exception):
    """Base of every error hybrid-rag raises on purpose; its message is one line a user can act on."""


class InvalidArgumentError(HybridRagError, ValueError):
    """An argument is out of range or not one of the accepted names (the message lists them)."""


class EmptyQueryError(InvalidArgumentError):
    """A query is empty or only whitespace."""


class FilterError(InvalidArgumentError):
    """A metadata filter cannot be built; the message names the field."""


class InvalidDocumentError(HybridRagError, ValueError):
    """A document cannot be indexed (empty text, duplicate id, too large); the message says which and why."""


class InputFormatError(HybridRagError, ValueError):
    """An input file (queries, qrels, run file, history) is malformed; the message starts with ``file:line`` or
    ``file``."""


class InputNotFoundError(HybridRagError, FileNotFoundError):
    """An input file, folder or split does not exist; the message names it and what was expected."""


class UnsafeDeleteError(HybridRagError):
    """An index run would delete most (or all) of a collection; pass ``allow_delete`` to do it anyway."""


class NothingToIndexError(HybridRagError, ValueError):
    """An index run with no document into a collection that has no published version: an empty collection is not
    created (unless ``allow_delete``: an empty one, asked for), nor ever from a source whose every record was
    skipped as bad input."""


# How to ask for such a deletion, from every entry point (the library's messages end with it).
ALLOW_DELETE_HINT = (
    "pass allow_delete=True if that is intended (CLI: hybrid-rag index or hybrid-rag run --allow-delete; "
    "Dagster: run config ops.qdrant_index.config.allow_delete: true)"
)


class ClosedError(HybridRagError, RuntimeError):
    """A stack, store or retriever used after its ``close()``: closing is final; build a new ``RetrievalStack``."""


class ModelLoadError(HybridRagError):
    """A configured model cannot be loaded; the message names the model and the setting."""

    @classmethod
    def wrapping(cls, exc: BaseException, what: str, name: str, setting: str) -> ModelLoadError:
        """``cannot load <what> model '<name>' (setting <setting>): <the first line of exc>``."""
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        return cls(f"cannot load {what} model {name!r} (setting {setting}): {reason}")


class ResourceLimitError(HybridRagError):
    """The process ran out of memory or could not start a thread (``ulimit -v``, ``ulimit -u``, a container's
    memory or pids limit); the message says which and what was left as it was."""


def choice(enum_type: type[E], value: object, what: str) -> E:
    """``enum_type(value)``, or an :class:`InvalidArgumentError` naming ``what`` and the valid values."""
    try:
        return enum_type(value)
    except ValueError:
        valid = ", ".join(m.value for m in enum_type)
        raise InvalidArgumentError(f"unknown {what} {value!r}; valid: {valid}") from None


def not_one_string(values: object, call: str, what: str) -> None:
    """Refuse one ``str``/``bytes`` where ``call`` takes a list of ``what``: Python would iterate it character by
    character (``delete_documents("10")`` would mean the documents "1" and "0")."""
    if isinstance(values, str | bytes | bytearray):
        shown = repr(values) if len(values) <= 40 else repr(values[:40]) + "..."
        raise InvalidArgumentError(
            f"{call} takes a list of {what}, not one string ({shown}); for one, pass a list of one"
        )


def document_ids(values: object, call: str) -> list[str]:
    """``values`` as a list of document ids (strings, as stored: a JSONL ``_id`` of 6 is the id ``"6"``), or a clear
    :class:`InvalidArgumentError` naming ``call``: one string, something not iterable, or an id that is no string."""
    not_one_string(values, call, "document ids")
    try:
        ids = list(values)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgumentError(f"{call} takes a list of document ids, got {type(values).__name__}") from None
    for position, doc_id in enumerate(ids):
        if not isinstance(doc_id, str):
            hint = f" (a document id written as {doc_id} is stored as '{doc_id}')" if isinstance(doc_id, int) else ""
            raise InvalidArgumentError(
                f"{call}: document ids are strings{hint}; ids[{position}] is {type(doc_id).__name__} {doc_id!r}"
            )
        if not doc_id.strip():  # no document has one (Document refuses it): a blank from a script's empty variable
            raise InvalidArgumentError(f"{call}: ids[{position}] is blank ({doc_id!r}); no document has such an id")
    return ids


class MissingExtraError(HybridRagError, ModuleNotFoundError):
    """An optional feature whose extra is not installed; the message names the extra and how to install it."""


def install_extra(extra: str) -> str:
    """How to install the optional ``extra``, from a checkout or from the wheel."""
    wheel = f"dist/hybrid_rag-<version>-py3-none-any.whl[{extra}]"
    return f"pip install -e '.[{extra}]' in the checkout, or pip install '{wheel}'"


@contextmanager
def requires_extra(extra: str, package: str, feature: str) -> Iterator[None]:
    """Turn a missing ``package`` (the extra's top-level module) imported in the block into a
    :class:`MissingExtraError` naming ``extra`` and its install line; other import errors pass as they are."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != package:
            raise
        raise MissingExtraError(
            f"{feature} needs the [{extra}] extra ({exc.name} is not installed): {install_extra(extra)}", name=exc.name
        ) from exc
