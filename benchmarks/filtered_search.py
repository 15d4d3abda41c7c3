"""Filtered search on the embedded engine, with and without payload indexes on the filtered metadata keys
(``PAYLOAD_INDEXES``).

A collection holds synthetic points (see ``benchmarks.synthetic``; 11,344 by default, the size of SciFact
repeated 4x) with a ``tenant`` (one tenant of 6 points, 0.05%, one of 1%, one of 10%, the rest one big
tenant), an integer ``year`` and an ISO ``date``; a staged copy of it (the same segments) also indexes
``tenant:tenant, year:integer, date:datetime``. Each query is the hybrid Qdrant query alone (``store.query``:
prefetch 100 per channel, RRF, top 10 with payload) from precomputed vectors, run on both versions in turn, for
each filter: the rare tenant, the 1% and 10% tenants, the rare tenant's documents by ``doc_id`` (always indexed),
one ``year``, a ``date`` range, and no filter. "Same hits": the same scores, and the same points above the 10th
score (RRF ties at the cut may come in either order). Also: the time to add the indexes to the filled collection,
and its disk before and after.

    python -m benchmarks.filtered_search [--points 11344] [--queries 100] [--dir DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import time
from dataclasses import replace
from typing import Any

from benchmarks.common import (
    console,
    machine_info,
    percentiles,
    print_machine,
    run_and_report,
    table,
    timed_ms,
    workdir,
)
from benchmarks.synthetic import SCHEMA, SyntheticData

INDEXES = {"tenant": "tenant", "year": "integer", "date": "datetime"}
RARE = 6  # points of the rarest tenant


def _metadata(i: int, n: int) -> dict[str, Any]:
    tenant = "rare" if i < RARE else "one-percent" if i < n // 100 else "ten-percent" if i < n // 10 else "big"
    day = dt.date(2000, 1, 1) + dt.timedelta(days=(i * 37) % 9000)
    return {"tenant": tenant, "year": 2000 + i % 25, "date": day.isoformat()}


def _fill(store: Any, data: SyntheticData, n: int, batch: int = 1000) -> None:
    from retrieval.chunking import Chunk

    for start in range(0, n, batch):
        ids = range(start, min(n, start + batch))
        chunks = [Chunk(f"syn-{i}", 0, f"synthetic point {i}", "", _metadata(i, n)) for i in ids]
        store.upsert(chunks, data.dense(len(chunks)), data.sparse(len(chunks)))
    store.flush()


def _same(a: list[Any], b: list[Any]) -> bool:
    """The same scores, and the same points above the last one (ties at the cut may come in either order)."""
    scores = [round(h.score, 6) for h in a]
    if scores != [round(h.score, 6) for h in b]:
        return False
    cut = scores[-1] if scores else 0.0
    return {h.id for h in a if round(h.score, 6) > cut} == {h.id for h in b if round(h.score, 6) > cut}


def _disk_kib(path: Any) -> int:
    return int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True).stdout.split()[0])


def run(points: int = 11_344, queries: int = 100, dir: str | None = None) -> dict[str, Any]:
    from retrieval.store import EdgeStore

    filters: dict[str, dict[str, Any] | None] = {
        f"tenant: rarest ({RARE} points)": {"tenant": "rare"},
        "doc_id: the same points (always indexed)": {"doc_id": [f"syn-{i}" for i in range(RARE)]},
        "tenant: 1%": {"tenant": "one-percent"},
        "tenant: 10%": {"tenant": "ten-percent"},
        "year = 2003 (4%)": {"year": 2003},
        "date: one year (4%)": {"date": {"gte": "2010-01-01", "lt": "2011-01-01"}},
        "no filter": None,
    }
    with workdir(dir) as root:
        plain = EdgeStore(root / "index", "filtered")
        plain.ensure(SCHEMA)
        _fill(plain, SyntheticData(seed=0), points)
        indexed = plain.stage(SCHEMA, copy_current=True)  # a copy of the same segments: the same hits
        stores = {"plain": plain, "indexed": indexed}
        try:
            before_kib = _disk_kib(indexed.dir)
            started = time.perf_counter()
            indexed.index_payload(INDEXES)
            index_s = time.perf_counter() - started
            indexed.flush()
            after_kib = _disk_kib(indexed.dir)
            plans = SyntheticData(seed=1).queries(queries)
            rows = []
            for label, spec in filters.items():
                samples: dict[str, list[float]] = {name: [] for name in stores}
                same = True
                for plan in (replace(p, filter=spec) for p in plans):
                    hits = {}
                    for name, store in stores.items():  # in turn: load hits both alike
                        hits[name], ms = timed_ms(lambda s=store, p=plan: s.query(p))
                        samples[name].append(ms)
                    same &= _same(hits["plain"], hits["indexed"])
                rows.append(
                    {
                        "filter": label,
                        "hits": len(hits["plain"]),
                        "plain": percentiles(samples["plain"]),
                        "indexed": percentiles(samples["indexed"]),
                        "same": same,
                    }
                )
        finally:
            for store in stores.values():
                store.close()
    return {
        "machine": machine_info(),
        "points": points,
        "queries": queries,
        "rows": rows,
        "index_s": index_s,
        "disk_kib": (before_kib, after_kib),
        "load_after": os.getloadavg()[0],
    }


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"], result["load_after"])
    rows = [
        [
            r["filter"],
            r["hits"],
            r["plain"]["p50"],
            r["plain"]["p95"],
            r["indexed"]["p50"],
            r["indexed"]["p95"],
            "yes" if r["same"] else "[red]no[/red]",
        ]
        for r in result["rows"]
    ]
    before, after = result["disk_kib"]
    console.print(
        table(
            f"Filtered hybrid query alone ({result['points']:,} synthetic points, {result['queries']} queries; ms)",
            ["filter", "hits", "no index p50", "p95", "indexed p50", "p95", "same hits"],
            rows,
            caption=f"indexing tenant, year and date on the filled collection: {result['index_s']:.2f} s; "
            f"version on disk {before / 1024:.1f} -> {after / 1024:.1f} MiB",
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=11_344)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dir", help="keep the collections here (default: a temporary directory)")
    args = parser.parse_args(argv)
    run_and_report(lambda: run(args.points, args.queries, args.dir), report)


if __name__ == "__main__":
    main()
