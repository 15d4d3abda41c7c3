"""Shared helpers of the benchmarks: data, timing, machine facts and rich tables."""

from __future__ import annotations

import itertools
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
SCIFACT = Path(os.environ.get("HYBRID_RAG_SCIFACT", DATASETS / "scifact"))
NFCORPUS = Path(os.environ.get("HYBRID_RAG_NFCORPUS", DATASETS / "nfcorpus"))

T = TypeVar("T")
console = Console(width=None if sys.stdout.isatty() else 160)  # no wrapped columns in logs and pipes


# -- machine ------------------------------------------------------------------------------------------
def machine_info(device: str | None = None) -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, load, torch threads, device."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_1m": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    if device:
        info["device"] = device
    return info


def print_machine(info: dict[str, Any], load_after: float | None = None) -> None:
    load = f"{info['load_1m']}" + (f" -> {load_after:.2f}" if load_after is not None else "")
    console.print(
        f"[dim]machine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, "
        f"CUDA devices {info['cuda_devices']}, load average (1 min) {load}"
        + (f", device {info['device']}" if "device" in info else "")
        + "[/dim]"
    )


# -- timing -------------------------------------------------------------------------------------------
def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms, dtype=float) if len(samples_ms) else np.zeros(1)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "n": len(samples_ms)}


def timed_ms(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - started) * 1000


def run_and_report(run: Callable[[], T], report: Callable[[T], Any]) -> T:
    """A benchmark's ``main``: run it, print its tables, then how long it all took."""
    started = time.perf_counter()
    result = run()
    report(result)
    console.print(f"[dim]took {time.perf_counter() - started:.0f} s[/dim]")
    return result


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover - psutil ships with dagster
        return peak_rss_mb()


def dir_size_mb(path: str | Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total / 2**20


@contextmanager
def workdir(path: str | Path | None = None, prefix: str = "hybrid-rag-bench-") -> Iterator[Path]:
    """``path`` if given (kept), else a temporary directory removed afterwards."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


# -- data ---------------------------------------------------------------------------------------------
def collection_dir(name: str) -> Path:
    """A BEIR collection named on a command line: ``sample`` (the shipped one), a folder, or a name under
    ``../shared/datasets`` (``HYBRID_RAG_SCIFACT`` / ``HYBRID_RAG_NFCORPUS`` override theirs)."""
    if name == "sample":
        return REPO / "evals" / "sample"
    if Path(name).is_dir():
        return Path(name)
    return {"scifact": SCIFACT, "nfcorpus": NFCORPUS}.get(name, DATASETS / name)


def require_scifact(root: str | Path | None = None) -> Path:
    path = Path(root) if root else SCIFACT
    if not (path / "corpus.jsonl").is_file():
        raise SystemExit(f"SciFact not found at {path} (BEIR layout expected; set HYBRID_RAG_SCIFACT or --data)")
    return path


def read_docs(root: Path, max_docs: int | None = None) -> list:
    """The first ``max_docs`` documents of a BEIR corpus (all when None or 0)."""
    from retrieval.documents import DocumentReader

    docs = DocumentReader().read(root)
    return list(itertools.islice(docs, max_docs) if max_docs else docs)


@dataclass
class EvalSubset:
    """A corpus subset with the queries (and their judgements) whose relevant documents are all in it."""

    docs: list
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    full_corpus: bool


def eval_subset(root: Path, max_docs: int | None = None, max_queries: int | None = None, split: str = "test"):
    """SciFact ``split`` for evaluating on at most ``max_docs`` documents.

    With no limit (None or 0) it is the whole corpus and every judged query. Otherwise the judged documents
    of the first queries come first (queries are kept while their judged documents fit in half the budget),
    and the rest of the budget is filled with unjudged documents in corpus order, so every kept query can be
    answered and the distractors are real SciFact abstracts.
    """
    from evals.collections import load_collection

    collection = load_collection(root)
    qrels = collection.qrels(split)
    queries = collection.split_queries(split)
    all_docs = read_docs(root)
    if max_queries:
        queries = dict(itertools.islice(queries.items(), max_queries))
    if not max_docs or max_docs >= len(all_docs):
        kept = {q: qrels[q] for q in queries}
        return EvalSubset(all_docs, queries, kept, full_corpus=not max_queries)
    wanted: set[str] = set()
    kept_queries: dict[str, str] = {}
    for qid, text in queries.items():
        judged = set(qrels[qid])
        if len(wanted | judged) > max_docs // 2:
            break
        wanted |= judged
        kept_queries[qid] = text
    docs = [d for d in all_docs if d.id in wanted]
    docs += list(itertools.islice((d for d in all_docs if d.id not in wanted), max_docs - len(docs)))
    return EvalSubset(docs, kept_queries, {q: qrels[q] for q in kept_queries}, full_corpus=False)


# -- tables -------------------------------------------------------------------------------------------
def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> Table:
    t = Table(title=title, caption=caption, title_justify="left", caption_justify="left")
    for i, name in enumerate(columns):
        t.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*[fmt(v) for v in row])
    return t


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def goal(met: bool) -> str:
    return "[green]met[/green]" if met else "[red]missed[/red]"


def optimize_store(store) -> float:
    """Run the embedded engine's segment optimizers (HNSW and sparse index build); returns seconds."""
    started = time.perf_counter()
    optimize = getattr(store, "optimize", None)
    if callable(optimize):
        optimize()
    else:  # EdgeStore has no public optimize() (yet): use the shard it holds for one operation
        with store._using("optimize") as shard:
            shard.optimize()
    return time.perf_counter() - started
