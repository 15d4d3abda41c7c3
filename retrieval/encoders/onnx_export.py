"""ONNX export of a sentence-transformers model, once per model under ``<cache_dir>/models/``.

sentence-transformers' own ``backend="onnx"`` needs ``optimum-onnx``, which pins ``transformers<4.58`` and
so cannot be installed beside sentence-transformers 6 (``transformers>=5``); the export here needs only
``torch.onnx``, ``onnx`` and ``onnxruntime`` (for the int8 copy, :mod:`retrieval.encoders.quantize`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path

import psutil

from retrieval.encoders.fingerprint import model_fingerprint
from retrieval.encoders.quantize import quantize_int8

log = logging.getLogger(__name__)

EXPORT_VERSION = 2  # bump when the export or quantization recipe changes: old exports are then ignored
EXPORT_META = "export.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
TMP_NAME = re.compile(r"\..+\.tmp-(?P<pid>\d+)-[0-9a-f]{8}")  # an export being written (see ensure_onnx_export)


def export_dir(model_path: str, cache_dir: str | Path) -> Path:
    """Where the ONNX export of ``model_path`` lives: ``<cache_dir>/models/<name>-<fingerprint>``.

    The fingerprint covers the model's content (:func:`~retrieval.encoders.fingerprint.model_fingerprint`) and the
    export recipe version, so a changed model gets a fresh export.
    """
    source = Path(model_path)
    parts = [str(EXPORT_VERSION), model_path, model_fingerprint(model_path)]
    fingerprint = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.name if source.is_dir() else model_path).strip("-")[-48:]
    return Path(cache_dir) / "models" / f"{slug or 'model'}-{fingerprint}"


def stale_exports(cache_dir: str | Path) -> list[Path]:
    """The temporary export folders under ``<cache_dir>/models`` left by processes that have ended (killed during
    an export): removed by the next export (:func:`ensure_onnx_export`), counted by ``hybrid-rag cache``."""
    models = Path(cache_dir) / "models"
    if not models.is_dir():
        return []
    stale = []
    for entry in models.iterdir():
        match = TMP_NAME.fullmatch(entry.name)
        if match and int(match["pid"]) != os.getpid() and not psutil.pid_exists(int(match["pid"])):
            stale.append(entry)
    return sorted(stale)


def ensure_onnx_export(model_path: str, cache_dir: str | Path) -> Path:
    """The directory holding the fp32 and int8 ONNX exports of ``model_path``, exporting them on first use.

    The export is written to a temporary directory and renamed into place, so concurrent first uses in
    several processes are safe (the loser's copy is discarded).
    """
    target = export_dir(model_path, cache_dir)
    if (target / EXPORT_META).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_exports(cache_dir):
        log.info("removing %s, an export left by a process that has ended", stale)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        export_onnx(model_path, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / EXPORT_META).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_onnx(model_path: str, out_dir: str | Path) -> Path:
    """Export the transformer of a sentence-transformers model (Transformer + Pooling [+ Normalize]) to
    ``out_dir/model.onnx``, quantize it to ``model_int8.onnx`` and save the tokenizer and pooling config."""
    import torch
    from sentence_transformers import SentenceTransformer

    from retrieval.encoders.runtime import load_float32

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = load_float32(SentenceTransformer, model_path, "cpu")  # model.onnx is the fp32 export
    modules = [type(m).__name__ for m in st]
    if modules[:2] != ["Transformer", "Pooling"] or any(m != "Normalize" for m in modules[2:]):
        raise NotImplementedError(
            f"{model_path}: ONNX export supports Transformer + Pooling (+ Normalize) models, not {modules}; "
            "use the torch backend"
        )
    pooling = st[1].get_config_dict()
    mode = pooling.get("pooling_mode") or ("cls" if pooling.get("pooling_mode_cls_token") else "mean")
    if mode not in {"mean", "cls"}:
        raise NotImplementedError(f"{model_path}: pooling {mode!r} is not supported by the ONNX backend")
    if not pooling.get("include_prompt", True):
        raise NotImplementedError(f"{model_path}: pooling without the prompt tokens is not supported by ONNX")
    tokenizer = st.tokenizer
    transformer = st[0].auto_model.eval()
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]
    sample = tokenizer(["an example sentence", "another, longer example sentence"], padding=True, return_tensors="pt")

    class _Wrapper(torch.nn.Module):  # keyword arguments: positional order differs between transformers releases
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python branches on shapes
        torch.onnx.export(
            _Wrapper(transformer),
            tuple(sample[n] for n in names),
            str(out / FP32_FILE),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    quantize_int8(out / FP32_FILE, out / INT8_FILE)
    tokenizer.save_pretrained(str(out))
    meta = {
        "source": model_path,
        "export_version": EXPORT_VERSION,
        "pooling": mode,
        "include_prompt": pooling.get("include_prompt", True),
        "dimension": int(st.get_embedding_dimension()),
        "max_seq_length": int(st.max_seq_length),
        "inputs": names,
    }
    (out / EXPORT_META).write_text(json.dumps(meta, indent=2))
    return out
