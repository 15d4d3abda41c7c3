"""Peak memory of a build: `hybrid-rag run` (the Dagster job: first build, then a rerun with nothing changed) vs
`hybrid-rag index` (first build), each a process of its own, on corpora of N documents: SciFact and NFCorpus
documents repeated under new ids (`<id>-rK`), judged by SciFact's qrels; `--sample` adds the shipped sample corpus.
Each run's `chunks` asset is reported too: its seconds and how many documents it chunked (the rest it reused from
its previous materialization).

Vectors come from a copy of the embedding cache (`--cache`, default the user's; the copy is what gets written),
so only the first size that needs a text embeds it.

    python -m benchmarks.pipeline_memory [--sizes 2000 10000] [--sample] [--no-index] [--cache FILE] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import SCIFACT, console, machine_info, print_machine, table, workdir

NFCORPUS = Path(os.environ.get("HYBRID_RAG_NFCORPUS", SCIFACT.parent / "nfcorpus"))
SAMPLE = Path(__file__).resolve().parents[1] / "evals" / "sample"
SAMPLE_SIZE = 0  # the size that stands for the shipped sample corpus
DEFAULT_CACHE = Path.home() / ".cache" / "hybrid-rag" / "embeddings.sqlite"


def write_corpus(size: int, out: Path) -> Path:
    """``size`` documents: SciFact's then NFCorpus', again and again (the K-th repetition under ``<id>-rK``),
    with SciFact's queries and qrels."""
    source: list[dict] = []
    for root in (SCIFACT, NFCORPUS):
        if (root / "corpus.jsonl").is_file():
            source += [json.loads(line) for line in (root / "corpus.jsonl").read_text().splitlines() if line.strip()]
    if not source:
        raise SystemExit(f"no corpus.jsonl in {SCIFACT} or {NFCORPUS} (set HYBRID_RAG_SCIFACT, HYBRID_RAG_NFCORPUS)")
    out.mkdir(parents=True, exist_ok=True)
    with (out / "corpus.jsonl").open("w") as f:
        for i in range(size):
            doc, repeat = dict(source[i % len(source)]), i // len(source)
            if repeat:
                doc["_id"] = f"{doc['_id']}-r{repeat}"
            f.write(json.dumps(doc) + "\n")
    shutil.copy(SCIFACT / "queries.jsonl", out / "queries.jsonl")
    shutil.copytree(SCIFACT / "qrels", out / "qrels", dirs_exist_ok=True)
    return out


def seed_cache(cache: Path, folder: Path) -> None:
    """``folder`` (a ``HYBRID_RAG_CACHE_DIR``) starts with a copy of the embedding cache file ``cache``, if any."""
    folder.mkdir(exist_ok=True)
    if cache.is_file() and not (folder / "embeddings.sqlite").exists():
        shutil.copy(cache, folder / "embeddings.sqlite")


def measured(args: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of one ``hybrid-rag`` command in a process of its own (``os.wait4``: that
    process' own peak)."""
    started = time.perf_counter()
    with log.open("w") as err:
        pid = subprocess.Popen(
            [sys.executable, "-m", "orchestration.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=err
        ).pid
        _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(args)} failed: {log.read_text()[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def chunks_step(dagster_home: Path, partition: str) -> tuple[float, int | None]:
    """Seconds and documents chunked (None: a release that does not say) of the latest ``chunks`` asset run."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        [record] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("chunks"), asset_partitions=[partition]), limit=1
        ).records
    meta = record.asset_materialization.metadata
    chunked = meta.get("chunked_documents")
    return float(meta["duration_s"].value), int(chunked.value) if chunked is not None else None


def run(sizes: list[int], cache: Path, directory: str | None = None, index: bool = True) -> list[list]:
    info = machine_info(device="cpu")
    rows = []
    with workdir(directory) as root:
        seed_cache(cache, root / "cache")
        for size in sizes:
            corpus = SAMPLE if size == SAMPLE_SIZE else write_corpus(size, root / f"c{size}")
            source, kind = (corpus, "beir") if size == SAMPLE_SIZE else (corpus / "corpus.jsonl", "jsonl")
            corpora = root / f"corpora{size}.yaml"
            corpora.write_text(
                f"corpora:\n  m{size}:\n    source: {source}\n    format: {kind}\n"
                f"    qrels: {corpus}\n    split: test\n    collection: run{size}\n"
            )
            env = {
                **os.environ,
                "HYBRID_RAG_QDRANT_PATH": str(root / "index"),
                "HYBRID_RAG_CACHE_DIR": str(root / "cache"),
                "HYBRID_RAG_HISTORY_PATH": str(root / "history.sqlite"),
                "HYBRID_RAG_MODELS_DIR": str(root / "models"),
                "HYBRID_RAG_CORPORA_FILE": str(corpora),
                "HYBRID_RAG_ASSETS_DIR": str(root / "assets"),
                "DAGSTER_HOME": str(root / "dagster_home"),
                "TQDM_DISABLE": "1",
            }
            steps = [
                ("hybrid-rag index (first build)", ["index", str(source), "-c", f"cli{size}"]),
                ("hybrid-rag run (first build)", ["run", "--corpus", f"m{size}"]),
                ("hybrid-rag run (nothing changed)", ["run", "--corpus", f"m{size}"]),
            ][0 if index else 1 :]
            documents = sum(1 for line in (corpus / "corpus.jsonl").read_text().splitlines() if line.strip())
            for name, args in steps:
                peak, seconds = measured(args, env, root / "last.err")
                step = chunks_step(root / "dagster_home", f"m{size}") if args[0] == "run" else (None, None)
                rows.append([documents, name, peak, seconds, *step])
                console.print(f"[dim]{documents} documents, {name}: {peak:.0f} MiB peak, {seconds:.0f} s[/dim]")
            shutil.rmtree(root / "index", ignore_errors=True)  # the next size starts from nothing
            shutil.rmtree(root / "assets", ignore_errors=True)
    print_machine(info, os.getloadavg()[0])
    return rows


def report(rows: list[list]) -> None:
    """Each command's peak, and how much it grew per document from the previous size (the slope that decides
    what a larger corpus needs; the peak of a small size is mostly imports and models)."""
    previous: dict[str, tuple[int, float]] = {}
    shown = []
    for size, name, peak, seconds, chunks_s, chunked in rows:
        slope = None
        if name in previous and size > previous[name][0]:
            slope = (peak - previous[name][1]) * 1024 / (size - previous[name][0])
        previous[name] = (size, peak)
        shown.append([size, name, peak, slope, seconds, chunks_s, chunked])
    console.print(
        table(
            "Peak RSS of a build, one process per command",
            [
                "documents",
                "command",
                "peak RSS MiB",
                "KiB per added document",
                "seconds",
                "chunks asset s",
                "documents chunked",
            ],
            shown,
        )
    )


def main(argv: list[str] | None = None) -> list[list]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--sample", action="store_true", help="also the shipped sample corpus (first)")
    parser.add_argument("--no-index", action="store_true", help="only the Dagster runs, not `hybrid-rag index`")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="embedding cache to start from (copied)")
    parser.add_argument("--dir", help="work folder (kept; default: a temporary one)")
    args = parser.parse_args(argv)
    sizes = [SAMPLE_SIZE, *args.sizes] if args.sample else args.sizes
    rows = run(sizes, args.cache, args.dir, index=not args.no_index)
    report(rows)
    return rows


if __name__ == "__main__":
    main()
