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
from dataclasses import dataclass
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


def model_key(model_path: str) -> str:
    """The model source an export belongs to (recorded in its ``export.json``): a local folder's absolute path,
    else the model name."""
    path = Path(model_path).expanduser()
    return str(path.resolve()) if path.is_dir() else model_path


def export_dir(model_path: str, cache_dir: str | Path) -> Path:
    """Where the ONNX export of ``model_path`` lives: ``<cache_dir>/models/<name>-<fingerprint>``.

    The fingerprint covers the model source (:func:`model_key`), its content
    (:func:`~retrieval.encoders.fingerprint.model_fingerprint`) and the export recipe version, so a changed model
    gets a fresh export.
    """
    source = Path(model_path)
    key = model_key(model_path)
    parts = [str(EXPORT_VERSION), key, model_fingerprint(key)]
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


@dataclass(frozen=True)
class Export:
    """A finished export folder under ``<cache_dir>/models``: ``current`` is False once it is superseded (another
    export of the same model is the current one: the model changed, or the export recipe did)."""

    path: Path
    model: str
    bytes: int
    written: float  # when it was finished (its export.json's modification time)
    current: bool


def exports(cache_dir: str | Path) -> list[Export]:
    """The finished exports under ``<cache_dir>/models``, by model, newest first.

    An export is current when it is the folder :func:`export_dir` names for its model now; where the model cannot
    be looked at (a local folder gone, a hub model not in this process's hub cache), the newest export of that
    model is. Exports of different models never supersede each other.
    """
    models = Path(cache_dir) / "models"
    found: list[tuple[Path, str, float]] = []
    for entry in sorted(models.iterdir()) if models.is_dir() else []:
        meta = entry / EXPORT_META
        if entry.name.startswith(".") or not meta.is_file():
            continue
        try:
            recorded = json.loads(meta.read_text())
            model = recorded.get("model") or model_key(recorded["source"])  # earlier releases: the source only
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not an export of ours, or damaged: left alone
        found.append((entry, model, meta.stat().st_mtime))
    found.sort(key=lambda f: (f[1], -f[2]))
    result, seen = [], set()
    for path, model, written in found:
        knowable = Path(model).is_dir() or (not Path(model).is_absolute() and model_fingerprint(model) != "hub:?")
        current = path == export_dir(model, cache_dir) if knowable else model not in seen
        seen.add(model)
        result.append(Export(path, model, folder_bytes(path), written, current))
    return result


def folder_bytes(folder: Path) -> int:
    """The size of the files below ``folder`` (an export, or one a killed export left)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def remove_superseded(cache_dir: str | Path, model: str | None = None, keep: Path | None = None) -> list[Export]:
    """Delete the superseded exports (of ``model`` only, when given; never ``keep``) and the temporary folders of
    ended exports (:func:`stale_exports`); return the exports deleted. Safe for a process still using a superseded
    export: it loaded the files when it started (onnxruntime and OpenVINO read the model file whole, the tokenizer
    is read once), and Linux keeps a file that is still open until it is closed."""
    removed = [e for e in exports(cache_dir) if not e.current and model in {None, e.model} and e.path != keep]
    for export in removed:
        log.info("removing %s, a superseded ONNX export of %s", export.path, export.model)
        shutil.rmtree(export.path, ignore_errors=True)
    for stale in stale_exports(cache_dir):
        log.info("removing %s, an export left by a process that has ended", stale)
        shutil.rmtree(stale, ignore_errors=True)
    return removed


def ensure_onnx_export(model_path: str, cache_dir: str | Path) -> Path:
    """The directory holding the fp32 and int8 ONNX exports of ``model_path``, exporting them on first use.

    The export is written to a temporary directory and renamed into place, so concurrent first uses in
    several processes are safe (the loser's copy is discarded). Writing one removes the model's superseded exports
    (:func:`remove_superseded`).
    """
    target = export_dir(model_path, cache_dir)
    if (target / EXPORT_META).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
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
    remove_superseded(cache_dir, model_key(model_path), keep=target)
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
        "model": model_key(model_path),  # which model source this export belongs to (see exports)
        "export_version": EXPORT_VERSION,
        "pooling": mode,
        "include_prompt": pooling.get("include_prompt", True),
        "dimension": int(st.get_embedding_dimension()),
        "max_seq_length": int(st.max_seq_length),
        "inputs": names,
    }
    (out / EXPORT_META).write_text(json.dumps(meta, indent=2))
    return out
