"""What an erasing write costs on the embedded engine: a delete of one document, staged as every write (a copy of
the published version), then the staged version written again from its live points (so that no file holds the
deleted point: see README, Operations, "Erasure"), then published; on synthetic points (no model), at N points.

    python -m benchmarks.erasure [--sizes 5000 50000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import console, dir_size_mb, machine_info, print_machine, table, workdir
from benchmarks.synthetic import SCHEMA, SyntheticData, fill
from retrieval.store import EdgeStore


def run(sizes: Sequence[int] = (5000, 50000), root: str | None = None) -> dict[str, Any]:
    info = machine_info()
    rows = []
    for n in sizes:
        with workdir(Path(root) / f"n{n}" if root else None) as work:
            rows.append(_one_size(n, work))
    return {"machine": info, "rows": rows}


def _one_size(n: int, work: Path) -> dict[str, Any]:
    store = EdgeStore(work / "index", "bench")
    try:
        staged = store.stage(SCHEMA)
        fill(staged, SyntheticData(), 0, n)
        store.seal(staged)
        store.publish(staged)
        staged.close()
        started = time.perf_counter()
        staged = store.stage(SCHEMA, copy_current=True, resume=False)
        copied = time.perf_counter()
        staged.delete_documents(["syn-1"])
        staged.flush()
        deleted = time.perf_counter()
        store.seal(staged)  # writes the version again from its live points
        rewritten = time.perf_counter()
        store.publish(staged)
        published = time.perf_counter()
        staged.close()
        return {
            "points": n,
            "copy_s": copied - started,
            "delete_s": deleted - copied,
            "rewrite_s": rewritten - deleted,
            "publish_s": published - rewritten,
            "count": store.count(),
            "disk_mb": dir_size_mb(work / "index"),
        }
    finally:
        store.close()


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"])
    console.print(
        table(
            "An erasing delete of one document (embedded engine, synthetic points)",
            ["points", "copy s", "delete s", "rewrite from live points s", "publish s", "points left", "MiB"],
            [
                (r["points"], r["copy_s"], r["delete_s"], r["rewrite_s"], r["publish_s"], r["count"], r["disk_mb"])
                for r in result["rows"]
            ],
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 50000], help="collection sizes (points)")
    parser.add_argument("--dir", help="work directory (kept); default: a temporary one per size")
    args = parser.parse_args(argv)
    report(run(args.sizes, args.dir))


if __name__ == "__main__":
    main()
