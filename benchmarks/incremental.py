"""What an incremental write costs at size on the embedded engine: adding one document, deleting one, a sync with
nothing changed and one with one document changed, on SciFact's documents repeated under new ids (``<id>-rK``)
to N documents (the repeats embed the same texts: after the first size their vectors come from the embedding
cache, so this measures the diff, the copy and the write, not the encoder).

    python -m benchmarks.incremental [--sizes 5000 10000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

NEW_DOC = ("bench-new-1", "A brand new document about zebrafish heart regeneration.")


def repeated(docs: Sequence[Any], n: int) -> list[Any]:
    """The first ``n`` documents of ``docs`` repeated: the K-th repeat's ids end with ``-rK``."""
    return [
        dataclasses.replace(docs[i % len(docs)], id=f"{docs[i % len(docs)].id}-r{i // len(docs)}")
        if i >= len(docs)
        else docs[i]
        for i in range(n)
    ]


@contextmanager
def counters(indexer: Any) -> Iterator[dict[str, int]]:
    """Counts the documents the indexer's chunker cuts and the stored points its hash reads return."""
    import retrieval.store.base as store_base

    counts = {"chunked": 0, "read": 0}
    chunk, scrolled = indexer.chunker.chunk, store_base.scrolled

    def counted_chunk(doc):
        counts["chunked"] += 1
        return chunk(doc)

    def counted_scrolled(scroll):
        for record in scrolled(scroll):
            counts["read"] += 1
            yield record

    indexer.chunker.chunk, store_base.scrolled = counted_chunk, counted_scrolled
    try:
        yield counts
    finally:
        indexer.chunker.chunk, store_base.scrolled = chunk, scrolled


def run(sizes: Sequence[int] = (5000, 10000), data: str | None = None, root: str | None = None) -> dict[str, Any]:
    info = machine_info()
    docs = read_docs(require_scifact(data))
    rows: list[dict[str, Any]] = []
    for n in sizes:
        with workdir(Path(root) / f"n{n}" if root else None) as work:
            rows += _one_size(repeated(docs, n), work)
    return {"machine": info, "rows": rows}


def _one_size(corpus: list[Any], work: Path) -> list[dict[str, Any]]:
    from retrieval import Document, RetrievalSettings, RetrievalStack

    new = Document(*NEW_DOC)
    edited = [dataclasses.replace(corpus[0], text=corpus[0].text + " (revised)"), *corpus[1:]]
    stack = RetrievalStack(RetrievalSettings(qdrant_path=work / "index", collection="bench", rerank=False))
    indexer = stack.indexer()
    rows: list[dict[str, Any]] = []

    def measure(name: str, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        with counters(indexer) as counts:
            started = time.perf_counter()
            report = write(*args, **kwargs)
            seconds = time.perf_counter() - started
        rows.append({"documents": len(corpus), "operation": name, "s": seconds, **counts, "points": report.points})

    try:
        measure("first build", indexer.index, corpus, progress=False)
        rows[-1]["note"] = f"{dir_size_mb(work / 'index'):.0f} MiB on disk (copied by a staged write)"
        measure("add one document", indexer.index, [new], progress=False)
        measure("delete one document", indexer.delete_documents, [new.id])
        measure("sync, nothing changed", indexer.index, corpus, prune=True, progress=False)
        measure("sync, one document changed", indexer.index, edited, prune=True, progress=False)
    finally:
        stack.close()
    return rows


def report(result: dict[str, Any]) -> None:
    print_machine(result["machine"])
    console.print(
        table(
            "Incremental writes (embedded engine, embedding cache on)",
            ["documents", "operation", "seconds", "documents chunked", "stored points read", "points", "note"],
            [
                (r["documents"], r["operation"], r["s"], r["chunked"], r["read"], r["points"], r.get("note", ""))
                for r in result["rows"]
            ],
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="BEIR directory (default: SciFact)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000], help="corpus sizes (documents)")
    parser.add_argument("--dir", help="work directory (kept); default: a temporary one per size")
    args = parser.parse_args(argv)
    report(run(args.sizes, args.data, args.dir))


if __name__ == "__main__":
    main()
