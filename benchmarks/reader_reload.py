"""What one small write costs a long-lived reader on the embedded engine: its warm search latency, then its first
search after another process (`hybrid-rag index` of one new document) published a new version, which opens that
version's shard, and the search after it. Collections of N documents: SciFact and NFCorpus repeated under new ids
(as `benchmarks.pipeline_memory` makes them), vectors from a copy of the embedding cache.

    python -m benchmarks.reader_reload [--sizes 2500 10000] [--rounds 3] [--cache FILE] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import console, machine_info, print_machine, table, workdir
from benchmarks.pipeline_memory import DEFAULT_CACHE, seed_cache, write_corpus


def timed_search(retriever) -> Callable[[], float]:
    """A function timing one search of ``retriever`` (ms)."""

    def search_ms() -> float:
        started = time.perf_counter()
        retriever.search("statin breast cancer mortality")
        return (time.perf_counter() - started) * 1000

    return search_ms


def run(sizes: list[int], rounds: int, cache: Path, directory: str | None = None) -> list[list]:
    from retrieval import RetrievalSettings, RetrievalStack

    info = machine_info(device="cpu")
    rows = []
    with workdir(directory) as root:
        seed_cache(cache, root / "cache")
        env = {**os.environ, "HYBRID_RAG_QDRANT_PATH": str(root / "index"), "HYBRID_RAG_CACHE_DIR": str(root / "cache")}
        for size in sizes:
            corpus = write_corpus(size, root / f"c{size}") / "corpus.jsonl"
            name = f"reload{size}"
            cli = [sys.executable, "-m", "orchestration.cli", "index"]
            subprocess.run([*cli, str(corpus), "-c", name], env=env, check=True, capture_output=True)
            settings = RetrievalSettings(qdrant_path=root / "index", cache_dir=root / "cache", collection=name)
            with RetrievalStack(settings) as stack:
                search_ms = timed_search(stack.retriever())
                for _ in range(5):
                    search_ms()
                for n in range(rounds):
                    warm = statistics.median(search_ms() for _ in range(10))
                    one = root / "one.jsonl"
                    one.write_text(f'{{"_id": "write-{n}", "text": "one small write {n} at {time.time()}"}}\n')
                    subprocess.run([*cli, str(one), "-c", name], env=env, check=True, capture_output=True)
                    first, second = search_ms(), search_ms()
                    rows.append([size, n + 1, warm, first, second])
                    console.print(f"[dim]{size} documents, write {n + 1}: {warm:.0f} / {first:.0f} / {second:.0f} ms")
            shutil.rmtree(root / "index", ignore_errors=True)
    print_machine(info, os.getloadavg()[0])
    return rows


def main(argv: list[str] | None = None) -> list[list]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2500, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="embedding cache to start from (copied)")
    parser.add_argument("--dir", help="work folder (kept; default: a temporary one)")
    args = parser.parse_args(argv)
    rows = run(args.sizes, args.rounds, args.cache, args.dir)
    console.print(
        table(
            "A reader's search around one small write by another process (ms)",
            ["documents", "write", "warm p50", "first search after it", "next search"],
            rows,
        )
    )
    return rows


if __name__ == "__main__":
    main()
