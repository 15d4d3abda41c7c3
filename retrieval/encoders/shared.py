"""Encoders shared within a process, so a second :class:`~retrieval.RetrievalStack` on the same model (another
collection, a notebook cell run again, a web service's second index) loads nothing again and holds one copy.

An encoder is shared when everything that makes two differ is equal: its constructor's arguments (model name or
folder, device, backend, hence precision and quantization, batch size, prompts, cache folder, the setting it came
from) and the model's content (:func:`~retrieval.encoders.fingerprint.model_fingerprint`, a ``stat`` per file: a
folder saved in place loads anew). The registry holds them weakly: an encoder lives while a stack, retriever or
caller holds it, and its memory is freed with the last of them (closing a stack does not: its encoders stay usable).
:func:`clear_shared_encoders` forgets them all: later stacks load anew, the current holders keep theirs.
Thread-safe. BM25 has no model and is not shared.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from retrieval.encoders.dense import DenseEncoder, resolve_model_path
from retrieval.encoders.fingerprint import model_fingerprint
from retrieval.encoders.sparse import Bm25Encoder, SpladeEncoder, make_sparse_encoder

_lock = threading.Lock()
_encoders: weakref.WeakValueDictionary[str, DenseEncoder | SpladeEncoder] = weakref.WeakValueDictionary()


def shared_dense(model_name: str, **kwargs: Any) -> DenseEncoder:
    """The process's :class:`DenseEncoder` for these arguments (see the module), built (not loaded) if none is held."""
    with _lock:
        key = json.dumps(["dense", model_name, kwargs], default=str, sort_keys=True)
        encoder = _encoders.get(key)
        if encoder is None or _changed(encoder, resolve_model_path(model_name)):
            encoder = _encoders[key] = DenseEncoder(model_name, **kwargs)
        assert isinstance(encoder, DenseEncoder)
        return encoder


def shared_sparse(name: str, *, device: str | None = None, **bm25: Any) -> Bm25Encoder | SpladeEncoder:
    """:func:`~retrieval.encoders.make_sparse_encoder`'s encoder: a SPLADE model shared as :func:`shared_dense`'s,
    a new BM25 one (nothing to load)."""
    if name.lower() == "bm25":
        return make_sparse_encoder(name, device=device, **bm25)
    with _lock:
        key = json.dumps(["splade", name, device], default=str)
        encoder = _encoders.get(key)
        if encoder is None or _changed(encoder, name):
            encoder = _encoders[key] = SpladeEncoder(name, device=device)
        assert isinstance(encoder, SpladeEncoder)
        return encoder


def clear_shared_encoders() -> None:
    """Forget the shared encoders: later stacks load their models anew (the stacks holding one keep it)."""
    with _lock:
        _encoders.clear()


def _changed(encoder: DenseEncoder | SpladeEncoder, path: str) -> bool:
    """Whether the model's content changed since ``encoder`` fingerprinted it (not while the hub's is unknown)."""
    was = encoder.fingerprint
    return not was.endswith("?") and was != model_fingerprint(path)
