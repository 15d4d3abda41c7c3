"""Progress bars: tqdm's, off when a caller says ``progress=False``, else as tqdm's own defaults say."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, progress: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or one updated by hand), disabled when ``progress`` is false. Otherwise
    ``disable`` is not passed, so tqdm's defaults apply, its ``TQDM_*`` environment variables included
    (``TQDM_DISABLE=1`` silences every bar): an explicit ``disable=False`` would override them."""
    return tqdm(iterable, **kwargs) if progress else tqdm(iterable, disable=True, **kwargs)
