"""What a write costs on the embedded engine now that it goes to a new version: staging a copy of the published
version, a reader's private view of a version another process holds, and a whole no-op incremental index
(a diff against the published version: nothing is copied or published) on SciFact.

    python -m benchmarks.versions [--max-docs 0] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from benchmarks.common import (
    console,
    dir_size_mb,
    machine_info,
    print_machine,
    read_docs,
    require_scifact,
    table,
    workdir,
)

HOLD = """
import sys
from retrieval.store import EdgeStore
store = EdgeStore(sys.argv[1], "scifact")
print(store.count(), flush=True)
sys.stdin.readline()
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="BEIR directory (default: SciFact)")
    parser.add_argument("--max-docs", type=int, default=0, help="documents to index (0: all)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", help="work directory (kept); default: a temporary one")
    args = parser.parse_args(argv)

    from retrieval import RetrievalSettings, RetrievalStack
    from retrieval.store import EdgeStore
    from retrieval.store.base import version_name
    from retrieval.store.edge import SHARD_DIR, _make_view

    info = machine_info()
    docs = read_docs(require_scifact(args.data), args.max_docs or None)
    with workdir(args.dir) as root:
        settings = RetrievalSettings(qdrant_path=root / "index", collection="scifact", rerank=False)
        stack = RetrievalStack(settings)
        indexer = stack.indexer()
        started = time.perf_counter()
        first = indexer.index(docs, progress=False)
        index_s = time.perf_counter() - started
        store: EdgeStore = indexer.store  # type: ignore[assignment]
        version_dir = root / "index" / version_name("scifact", first.version or 0)
        size_mb, apparent_mb = dir_size_mb(version_dir), _apparent_mb(version_dir)

        copies, noops = [], []
        for _ in range(args.rounds):
            with store.write_lock():
                current = store.current_version() or 0
                started = time.perf_counter()
                staged = store.stage(indexer.schema(), copy_current=True)
                copies.append(time.perf_counter() - started)
                staged.drop()
                staged.close()
            started = time.perf_counter()
            report = indexer.index(docs, progress=False)  # nothing changed: a diff, no copy, no new version
            noops.append(time.perf_counter() - started)
            if report.written or report.changed or report.version != current:
                raise RuntimeError(f"a re-index of unchanged documents wrote something: {report}")

        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(root / "index")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        try:
            holder.stdout.readline()
            shard = root / "index" / version_name("scifact", store.current_version() or 0) / SHARD_DIR
            views = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                view = _make_view(shard)
                views.append(time.perf_counter() - started)
                view_mb = _written_mb(view)
                subprocess.run(["rm", "-rf", str(view)], check=True)
            second = EdgeStore(root / "index", "scifact")
            started = time.perf_counter()
            count = second.count()  # opens through a view: the holder has the version
            open_view_s = time.perf_counter() - started
            second.close()
        finally:
            holder.stdin.close()
            holder.wait(timeout=60)
        store.close()

    print_machine(info)
    console.print(
        table(
            f"Embedded versions on {len(docs):,} documents ({first.points:,} points; first index {index_s:.0f}s, "
            f"embedding cache on)",
            ["operation", "median s", "rounds", "notes"],
            [
                (
                    "stage: copy the published version",
                    statistics.median(copies),
                    args.rounds,
                    f"{size_mb:.0f} MiB on disk ({apparent_mb:.0f} MiB apparent: preallocated WAL, copied sparse)",
                ),
                (
                    "no-op incremental index (diff only)",
                    statistics.median(noops),
                    args.rounds,
                    "what a reindex with nothing changed costs: no copy, readers keep the version",
                ),
                (
                    "reader view of a held version",
                    statistics.median(views),
                    args.rounds,
                    f"{view_mb:.1f} MiB written (large files hard-linked)",
                ),
                ("second process: open through a view + count", open_view_s, 1, f"{count:,} points"),
            ],
        )
    )


def _written_mb(path) -> float:
    """Disk used by the files of ``path`` that are not hard links to another version's files."""
    files = [p.stat() for p in path.rglob("*") if p.is_file()]
    return sum(st.st_blocks * 512 for st in files if st.st_nlink == 1) / 2**20


def _apparent_mb(path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


if __name__ == "__main__":
    main()
