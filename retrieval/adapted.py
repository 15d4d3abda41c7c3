"""The collection's corpus-adapted query encoder (``hybrid-rag adapt``), followed while a process runs.

``adapt`` saves the encoder to a sibling folder, writes its marker (``adapted.json``) last, then renames the folder
into place (:func:`evals.pseudo_queries.adapt_query_encoder`), so a marker always stands beside a whole model.
"""

from __future__ import annotations

import logging
import os
import threading

from retrieval.encoders import DenseEncoder
from retrieval.encoders.shared import shared_dense
from retrieval.settings import ADAPTED_MARKER, RetrievalSettings

log = logging.getLogger(__name__)

_UNSEEN = (-1, -1, -1)  # no marker identity looks like this: the first call resolves


def _identity(path: os.PathLike[str] | str) -> tuple[int, int, int] | None:
    """What changes when ``adapt`` saves (or removes) the marker: its inode, mtime and size; None when missing."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class AdaptedQueryEncoder:
    """The adapted query encoder of ``settings``' collection, or ``dense`` when there is none.

    :meth:`current` checks the marker's identity (one ``stat``) on every call, which every search makes: a new marker
    builds the new encoder once (its model loads on first use), a removed one (or one trained from another dense
    model) falls back to ``dense``. So a long-lived process follows ``adapt`` as readers follow a new index version.
    Thread-safe.
    """

    def __init__(self, settings: RetrievalSettings, dense: DenseEncoder):
        self.settings, self.dense = settings, dense
        self.marker = settings.adapted_query_dir() / ADAPTED_MARKER
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = _UNSEEN
        self._encoder: DenseEncoder | None = None

    def current(self) -> DenseEncoder:
        """The encoder to embed queries with now."""
        seen = _identity(self.marker)
        if seen != self._seen:
            with self._lock:
                if seen != self._seen:
                    self._encoder = self._build()
                    self._seen = seen
        return self._encoder or self.dense

    def _build(self) -> DenseEncoder | None:
        model = self.settings.resolved_query_model()
        changed = self._seen != _UNSEEN
        if model is None:
            if changed and self._encoder is not None:
                log.warning("adapted query encoder %s removed: queries use the dense model", self.marker.parent)
            return None
        d, remedy = self.dense, self.settings.adapted_query_remedy()
        log.info(
            "adapted query encoder %s%s: queries use it, backend %s",
            model,
            " saved anew" if changed else "",
            d.backend,
        )
        return shared_dense(
            model,
            device=d.device,
            batch_size=d.batch_size,
            backend=d.backend,  # an ONNX export of its own: the export folder fingerprints the model's files
            cache_dir=d.cache_dir,
            query_prompt=d.query_prompt,
            setting=f"HYBRID_RAG_ADAPTED_QUERY_MODEL, the adapted query encoder: {remedy}",
        )


def query_encoder_now(query: DenseEncoder | AdaptedQueryEncoder | None, dense: DenseEncoder) -> DenseEncoder:
    """The encoder to embed queries with now: a followed adapted one's current encoder, a fixed one, else ``dense``."""
    return query.current() if isinstance(query, AdaptedQueryEncoder) else query or dense
