"""Growth of the embedded engine (Qdrant Edge) with synthetic points: 10k -> 100k -> 1M.

One collection grows through the sizes; at each size: upsert throughput of the increment (generation time
excluded), optimize time (HNSW and sparse index build), hybrid query p50/p95 after optimize, on-disk size,
current and peak RSS of the process (the engine runs in it).

    python -m benchmarks.scale [--max-points 100000] [--queries 200] [--dir PATH]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from benchmarks.common import (
    console,
    dir_size_mb,
    goal,
    machine_info,
    optimize_store,
    peak_rss_mb,
    percentiles,
    print_machine,
    rss_mb,
    run_and_report,
    table,
    timed_ms,
    workdir,
)
from benchmarks.synthetic import SCHEMA as SYNTHETIC_SCHEMA
from benchmarks.synthetic import TERMS_PER_DOC, VOCAB, SyntheticData, fill

STEPS = (10_000, 100_000, 1_000_000)
MEMORY_LIMIT_MB = 24 * 1024


def sizes_up_to(max_points: int) -> list[int]:
    sizes = [s for s in STEPS if s < max_points]
    return [*sizes, max_points]


def run(
    max_points: int = 100_000, queries: int = 200, directory: str | None = None, seed: int = 0, progress: bool = False
) -> dict[str, Any]:
    from retrieval.store import EdgeStore

    info = machine_info(device="cpu (embedded engine)")
    rows = []
    with workdir(directory) as root:
        store = EdgeStore(root, "scale")
        store.ensure(SYNTHETIC_SCHEMA)
        data = SyntheticData(seed=seed)
        query_data = SyntheticData(seed=seed + 1)
        plans = query_data.queries(queries)
        current = 0
        try:
            for size in sizes_up_to(max_points):
                spent = fill(store, data, current, size)
                added, current = size - current, size
                optimize_s = optimize_store(store)
                for plan in plans[: min(10, len(plans))]:  # warm-up
                    store.query(plan)
                latencies = [timed_ms(lambda p=plan: store.query(p))[1] for plan in plans]
                lat = percentiles(latencies)
                rows.append(
                    {
                        "points": size,
                        "upsert_pts_s": added / spent["upsert_s"],
                        "upsert_s": spent["upsert_s"],
                        "optimize_s": optimize_s,
                        "p50_ms": lat["p50"],
                        "p95_ms": lat["p95"],
                        "disk_mb": dir_size_mb(root),
                        "rss_mb": rss_mb(),
                        "peak_rss_mb": peak_rss_mb(),
                        "count": store.count(),
                        "load_1m": round(os.getloadavg()[0], 2),
                    }
                )
                if progress:  # long runs (1M) show each size as soon as it is measured
                    console.print(f"[dim]{rows[-1]}[/dim]")
        finally:
            store.close()
    return {"machine": info, "rows": rows, "queries": queries}


def report(result: dict[str, Any]) -> None:
    rows = result["rows"]
    print_machine(result["machine"], rows[-1]["load_1m"] if rows else None)
    console.print(
        table(
            f"Embedded engine growth (synthetic: 384-d unit vectors + ~{TERMS_PER_DOC} Zipf terms of {VOCAB:,}; "
            f"hybrid RRF query, prefetch 100, top 10, {result['queries']} queries)",
            [
                "points",
                "upsert pts/s",
                "upsert s",
                "optimize s",
                "query p50 ms",
                "query p95 ms",
                "disk MiB",
                "RSS MiB",
                "peak RSS MiB",
                "load",
            ],
            [
                [
                    r["points"],
                    r["upsert_pts_s"],
                    r["upsert_s"],
                    r["optimize_s"],
                    r["p50_ms"],
                    r["p95_ms"],
                    r["disk_mb"],
                    r["rss_mb"],
                    r["peak_rss_mb"],
                    r["load_1m"],
                ]
                for r in rows
            ],
        )
    )
    if rows:
        last = rows[-1]
        growth = " -> ".join(f"{r['peak_rss_mb'] / 1024:.1f}" for r in rows)
        console.print(f"peak RSS growth (GiB): {growth}")
        console.print(
            f"fits in 24 GiB at {last['points']:,} points: {goal(last['peak_rss_mb'] < MEMORY_LIMIT_MB)} "
            f"(peak {last['peak_rss_mb'] / 1024:.2f} GiB)"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--max-points", type=int, default=100_000, help="largest size (steps 10k, 100k, 1M below it)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dir", default=None, help="where the collection is built (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return run_and_report(lambda: run(args.max_points, args.queries, args.dir, args.seed, progress=True), report)


if __name__ == "__main__":
    main()
