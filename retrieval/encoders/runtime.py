"""Where and how the models run: the device, the weights' precision, and one CPU thread for small inputs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from retrieval.wording import counted

SINGLE_THREAD_MAX = 8  # inputs this small (queries) are encoded on one CPU thread, see one_thread
_THREADS_LOCK = threading.Lock()


def select_device(requested: str | None = None) -> str:
    """The requested device, else CUDA, then Apple MPS, then CPU."""
    if requested:
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def check_device(device: str) -> None:
    """A :class:`~retrieval.errors.ModelLoadError` when torch cannot use ``device`` (e.g. ``cuda`` on a CPU build)."""
    import torch

    from retrieval.errors import ModelLoadError

    kind, _, index = device.partition(":")
    if kind == "cuda":
        usable = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if usable <= (int(index) if index else 0):
            raise ModelLoadError(
                f"HYBRID_RAG_DENSE_DEVICE={device}: torch {torch.__version__} sees {counted(usable, 'CUDA device')}; "
                "unset it to use the best available device"
            )
    elif kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelLoadError(f"HYBRID_RAG_DENSE_DEVICE={device}: Apple MPS is not available here")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (for small inputs on the CPU).

    A query is a few dozen tokens: splitting its matrix products over the cores gains little, and when
    the cores are busy (indexing, other processes) every operator waits at a barrier for a descheduled
    worker thread. Measured here on 2 busy cores: single-query p50 12-19 ms on one thread vs
    160-400 ms on two. ``torch.set_num_threads`` is process-wide, so the switch is serialized.
    """
    import torch

    with _THREADS_LOCK:
        before = torch.get_num_threads()
        if before > 1:
            torch.set_num_threads(1)
        try:
            yield
        finally:
            if before > 1:
                torch.set_num_threads(before)


@contextmanager
def fork_guard(device: str) -> Iterator[None]:
    """A model's calls: CUDA does not survive ``os.fork``, so a model a parent process ran on a GPU fails in its
    forked child (gunicorn ``--preload`` with a warm-up search, a ``fork`` multiprocessing pool) with torch's
    "Cannot re-initialize CUDA in forked subprocess"; that becomes a
    :class:`~retrieval.errors.ModelLoadError` saying what to do instead."""
    try:
        yield
    except RuntimeError as exc:
        if "forked subprocess" not in str(exc):
            raise
        from retrieval.errors import ModelLoadError

        raise ModelLoadError(
            f"the model runs on {device}, which this process's parent used before it forked: CUDA does not survive "
            "a fork; build the stack in each worker after the fork (gunicorn without --preload), start workers "
            "with multiprocessing's 'spawn' method, or set HYBRID_RAG_DENSE_DEVICE=cpu"
        ) from exc


@contextmanager
def quiet_local_load(path: str) -> Iterator[None]:
    """No transformers progress bar ("Loading weights") while a model is loaded from folder ``path``: it takes under
    a second and printed a bar on every search of the CLI. A hub name keeps its bars (the download can take
    minutes)."""
    from pathlib import Path

    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    if shown and Path(path).is_dir():
        transformers_logging.disable_progress_bar()
        try:
            yield
        finally:
            transformers_logging.enable_progress_bar()
    else:
        yield


def load_float32(model_class, path: str, device: str):
    """``model_class(path)`` (a sentence-transformers ``SentenceTransformer`` or ``SparseEncoder``) on ``device`` with
    float32 weights, whatever dtype its checkpoint was saved in (transformers would load fp16 or bf16 weights, as
    many hub models have, in that dtype: slow and coarse on a CPU, and unfit to train against float32 vectors)."""
    import torch
    import transformers
    from packaging.version import Version

    dtype = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
    with quiet_local_load(path):
        model = model_class(path, device=device, model_kwargs={dtype: torch.float32})
    if any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point()):
        model.float()  # modules transformers does not load (e.g. a Dense layer)
    return model


def trainable_model(path: str, device: str | None = None):
    """The sentence-transformers model at ``path``, in float32, on ``device`` (None: the best available, as for
    encoding: a GPU when there is one), ready to fine-tune."""
    from sentence_transformers import SentenceTransformer

    device = select_device(device)
    check_device(device)
    return load_float32(SentenceTransformer, path, device)
