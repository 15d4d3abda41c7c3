"""Progress bars: tqdm's, off when a caller says ``progress=False``, else as tqdm's own defaults say.

``tqdm.auto`` picks the notebook widget in a Jupyter kernel and the text bar elsewhere, or in a kernel without
ipywidgets, where it also warns ``IProgress not found. Please update jupyter and ipywidgets`` once per kernel (at
its first import: this module's, or sentence-transformers' when it is imported first). The text bar is what this
library wants there, so that one warning is silenced here, where ``retrieval`` first imports it; no other is.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

from tqdm import TqdmWarning

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
    from tqdm.auto import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, progress: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or one updated by hand), disabled when ``progress`` is false. Otherwise
    ``disable`` is not passed, so tqdm's defaults apply, its ``TQDM_*`` environment variables included
    (``TQDM_DISABLE=1`` silences every bar): an explicit ``disable=False`` would override them."""
    return tqdm(iterable, **kwargs) if progress else tqdm(iterable, disable=True, **kwargs)
