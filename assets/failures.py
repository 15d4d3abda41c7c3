"""Expected errors raised inside an asset become a ``dg.Failure`` with their one-line message.

The library's errors (:class:`retrieval.errors.HybridRagError`), invalid settings (pydantic ``ValidationError``)
and the corpora file's errors say what to fix in one line; as a ``dg.Failure`` that line is the step's failure
reason in the UI and in ``hybrid-rag run``, not the last line of a traceback.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import dagster as dg
from pydantic import ValidationError

from retrieval.errors import HybridRagError
from retrieval.settings import settings_problems

EXPECTED = (HybridRagError, ValidationError)  # the corpora file's errors are HybridRagErrors too
F = TypeVar("F", bound=Callable[..., Any])


def error_line(exc: BaseException) -> str:
    """The error's message as one line (a settings ValidationError as ``invalid settings: field: reason; ...``)."""
    if isinstance(exc, ValidationError):
        return settings_problems(exc)
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split())


@contextmanager
def clear_failure() -> Iterator[None]:
    """Re-raise an expected error as ``dg.Failure(description=<its message>)``; anything else as it is."""
    try:
        yield
    except EXPECTED as exc:
        raise dg.Failure(description=error_line(exc), metadata={"error": type(exc).__name__}) from exc


def fails_clearly(fn: F) -> F:
    """Decorate an asset function (plain or generator) so that expected errors fail it with one clear line."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Any:
            with clear_failure():
                yield from fn(*args, **kwargs)

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with clear_failure():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
