"""Several devices at once: sentence-transformers' multi-process pool, stopped on close or at exit."""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def pool_devices(device: str) -> list[str]:
    """The devices a multi-process pool should use: every CUDA device when ``device`` is ``cuda`` (no index)
    and there are several, else none (single process)."""
    if device != "cuda":
        return []
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count > 1 else []


def start_pool(
    owner: object, model: Any, devices: Sequence[str], home_device: str
) -> tuple[dict[str, Any], weakref.finalize]:
    """Start a pool over ``devices`` for ``model``: the pool and the finalizer that stops it (called when
    ``owner`` is garbage collected, at exit, or by :func:`stop_pool`)."""
    log.info("starting a dense encoding pool on %s", ", ".join(devices))
    pool = model.start_multi_process_pool(target_devices=list(devices))
    # Starting the pool moves the model to the CPU (the workers got their copy): move it back for the
    # inputs encoded in this process.
    model.to(home_device)
    finalizer = weakref.finalize(owner, _stop, pool)
    atexit.register(finalizer)
    return pool, finalizer


def stop_pool(finalizer: weakref.finalize) -> None:
    """Stop a pool started by :func:`start_pool` now."""
    finalizer()
    atexit.unregister(finalizer)


def _stop(pool: dict[str, Any]) -> None:
    from sentence_transformers import SentenceTransformer

    SentenceTransformer.stop_multi_process_pool(pool)
