"""The ``hybrid-rag`` command line: index, search, evaluate, report, and run the main job."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Hybrid dense + sparse retrieval on Qdrant.", no_args_is_help=True, add_completion=False)
console = Console()

CollectionOpt = Annotated[str | None, typer.Option("--collection", "-c", help="Collection name (default: settings)")]
ENV_FILES: list[Path] = [Path(".env")]


def _settings(**overrides):
    from retrieval import RetrievalSettings

    return RetrievalSettings(_env_file=ENV_FILES, **{k: v for k, v in overrides.items() if v is not None})


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details")] = False,
    env_file: Annotated[
        list[Path] | None, typer.Option("--env-file", help="Extra HYBRID_RAG_* settings file (e.g. a tuned reranker)")
    ] = None,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    ENV_FILES[:] = [Path(".env"), *(env_file or [])]


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="BEIR directory, JSONL file, or folder of text/markdown files")],
    fmt: Annotated[str | None, typer.Option("--format", help="beir | jsonl | dir (default: detected)")] = None,
    collection: CollectionOpt = None,
    prune: Annotated[bool, typer.Option(help="Delete documents that are no longer in the source")] = True,
    policy: Annotated[str | None, typer.Option(help="Bad input: fail (default) or skip")] = None,
    rebuild: Annotated[bool, typer.Option(help="Build a new collection version and switch to it atomically")] = False,
) -> None:
    """Index documents (idempotent: unchanged chunks are neither embedded nor written again)."""
    from retrieval import BadInputError, Indexer, read_documents

    settings = _settings(collection=collection, bad_input_policy=policy)
    try:
        docs, read_report = read_documents(path, fmt, settings.bad_input_policy)
    except BadInputError as exc:
        console.print(f"[red]bad input[/red] {exc}")
        raise typer.Exit(2) from exc
    indexer = Indexer(settings)
    try:
        report = indexer.index(docs, prune=prune, rebuild=rebuild)
    finally:
        indexer.store.close()
    table = Table(title=f"indexed into {report.collection!r}")
    for name in ("documents", "chunks", "embedded", "unchanged", "deleted", "points", "cache_reused"):
        table.add_column(name, justify="right")
    table.add_row(
        *(
            f"{getattr(report, n):,}"
            for n in ("documents", "chunks", "embedded", "unchanged", "deleted", "points", "cache_reused")
        )
    )
    console.print(table)
    for problem in read_report.skipped:
        console.print(f"[yellow]skipped[/yellow] {problem}")
    console.print(f"{report.seconds:.1f}s")


@app.command()
def search(
    text: Annotated[str, typer.Argument(help="The query")],
    collection: CollectionOpt = None,
    k: Annotated[int, typer.Option("--k", "-k", help="Number of hits")] = 10,
    no_rerank: Annotated[bool, typer.Option("--no-rerank", help="First-stage ranking only")] = False,
    variant: Annotated[str, typer.Option(help="dense | sparse | hybrid")] = "hybrid",
    as_json: Annotated[bool, typer.Option("--json", help="Print hits as JSON")] = False,
) -> None:
    """Search a collection."""
    from retrieval import HybridRetriever

    retriever = HybridRetriever(_settings(collection=collection))
    try:
        hits = retriever.search(text, k=k, rerank=not no_rerank, variant=variant)
    finally:
        retriever.close()
    if as_json:
        typer.echo(json.dumps([{**h.__dict__} for h in hits], default=str, indent=2))
        return
    table = Table(title=f"{len(hits)} hits for {text!r}")
    for col in ("#", "doc", "score", "dense", "sparse", "title / text"):
        table.add_column(col)
    for rank, h in enumerate(hits, start=1):
        snippet = (h.title + " | " if h.title else "") + h.text[:100].replace("\n", " ")
        table.add_row(
            str(rank), h.doc_id, f"{h.score:.4f}", str(h.dense_rank or "-"), str(h.sparse_rank or "-"), snippet
        )
    console.print(table)


@app.command("eval")
def evaluate(
    beir_dir: Annotated[str, typer.Argument(help="BEIR directory (corpus.jsonl, queries.jsonl, qrels/) or 'sample'")],
    collection: CollectionOpt = None,
    split: Annotated[str, typer.Option(help="qrels split to score")] = "test",
    variant: Annotated[
        list[str] | None, typer.Option(help="dense | sparse | hybrid | hybrid+rerank (repeatable)")
    ] = None,
    run_file: Annotated[Path | None, typer.Option(help="Write the (last) variant's run as a TREC run file")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write metrics as JSON")] = None,
    history: Annotated[Path, typer.Option(help="Evaluation history (SQLite)")] = Path("data/history/evals.sqlite"),
) -> None:
    """Evaluate retrieval variants on a BEIR collection; indexes it first when the collection does not exist."""
    from evals.collections import load_collection
    from evals.history import EvalHistory
    from evals.report import metrics_table
    from evals.runner import evaluate_variants
    from evals.runs import write_run
    from retrieval import HybridRetriever, Indexer, read_documents
    from retrieval.search import Variant

    coll = load_collection(beir_dir)
    settings = _settings(collection=collection or coll.name)
    variants = [Variant(v) for v in (variant or [v.value for v in Variant])]
    indexer = Indexer(settings)
    try:
        if indexer.store.schema() is None:
            console.print(f"collection {settings.collection!r} does not exist: indexing {coll.corpus_path}")
            docs, _ = read_documents(coll.corpus_path, "jsonl", settings.bad_input_policy)
            indexer.index(docs)
        retriever = HybridRetriever(settings, store=indexer.store, dense=indexer.dense, sparse=indexer.sparse)
        results = evaluate_variants(retriever, coll.split_queries(split), coll.qrels(split), variants)
    finally:
        indexer.store.close()
    rows = {name: {**r.metrics, "latency_ms": r.latency_ms["p50"]} for name, r in results.items()}
    console.print(metrics_table(rows, title=f"{coll.name} ({split})"))
    store = EvalHistory(history)
    for name, r in results.items():
        store.append(
            coll.name,
            split,
            name,
            r.metrics,
            context={"collection": settings.collection, "dense_model": settings.dense_model},
        )
    if run_file:
        last = variants[-1].value
        write_run(run_file, results[last].run, tag=f"hybrid-rag-{last}")
        console.print(f"run file ({last}): {run_file}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rows, indent=2))


@app.command()
def compare(
    baseline: Annotated[Path, typer.Argument(help="TREC run file of the baseline")],
    candidate: Annotated[Path, typer.Argument(help="TREC run file of the candidate")],
    beir_dir: Annotated[str, typer.Argument(help="BEIR directory with the qrels, or 'sample'")],
    split: Annotated[str, typer.Option(help="qrels split")] = "test",
    metric: Annotated[list[str] | None, typer.Option(help="Metrics to compare (repeatable)")] = None,
) -> None:
    """Compare two runs query by query: wins/losses/ties and a paired significance test."""
    from evals.collections import load_collection
    from evals.compare import compare_runs, format_comparison
    from evals.runs import read_run

    qrels = load_collection(beir_dir).qrels(split)
    (base_run, base_tag), (cand_run, cand_tag) = read_run(baseline), read_run(candidate)
    rows = [
        compare_runs(qrels, base_run, cand_run, m, names=(base_tag or baseline.stem, cand_tag or candidate.stem))
        for m in (metric or ["ndcg@10", "recall@100"])
    ]
    console.print(format_comparison(rows))


@app.command("eval-report")
def eval_report(
    history: Annotated[Path, typer.Option(help="Evaluation history (SQLite)")] = Path("data/history/evals.sqlite"),
    out: Annotated[Path, typer.Option(help="Output folder for the PNG plot and markdown table")] = Path("data/reports"),
    collection: CollectionOpt = None,
    metric: Annotated[str, typer.Option(help="Metric to plot over time")] = "ndcg@10",
) -> None:
    """Plot a metric over time per variant (PNG) and write the latest figures as a markdown table."""
    from evals.history import EvalHistory
    from evals.report import markdown_table, plot_history

    df = EvalHistory(history).records(collection=collection)
    if df.empty:
        console.print(f"[yellow]no evaluations recorded in {history}[/yellow]")
        raise typer.Exit(1)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_history(df, metric=metric, out_png=out / f"{metric.replace('@', '_at_')}.png")
    table = markdown_table(df)
    (out / "latest.md").write_text(table)
    console.print(table)
    console.print(f"plot: {png}")


@app.command("tune-reranker")
def tune_reranker(
    beir_dir: Annotated[str, typer.Argument(help="BEIR directory with a train split, or 'sample'")],
    collection: CollectionOpt = None,
    split: Annotated[str, typer.Option(help="Split to tune on (never test)")] = "train",
    train: Annotated[bool, typer.Option(help="Train the E2Rank-style pseudo-query encoder first")] = True,
    epochs: Annotated[int, typer.Option(help="Training epochs")] = 4,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: data/models/<collection>)")] = None,
) -> None:
    """Tune (and train) the reranker on the train split; writes an env file for --env-file."""
    from evals.collections import load_collection
    from evals.tuning import tune_reranker as tune
    from retrieval import HybridRetriever

    coll = load_collection(beir_dir)
    settings = _settings(collection=collection or coll.name)
    out = out or Path("data/models") / settings.collection
    retriever = HybridRetriever(settings)
    try:
        retriever.check_schema()
        profile = tune(coll.train_view(split), retriever, out, train=train, epochs=epochs)
    finally:
        retriever.close()
    env_path = profile.write_env(out / "reranker.env")
    table = Table(title=f"{coll.name}/{split}: {profile.fit_queries} queries to train, {profile.dev_queries} to tune")
    for col in ("dev nDCG@10: hybrid", "+ trained query encoder", "+ rerank", "weight", "feedback_k", "beta"):
        table.add_column(col, justify="right")
    c = profile.config
    table.add_row(
        f"{profile.dev_baseline:.4f}",
        f"{profile.dev_first_stage:.4f}",
        f"{profile.dev_reranked:.4f}",
        f"{c.weight}",
        str(c.feedback_k),
        f"{c.beta}",
    )
    console.print(table)
    console.print(f"settings: {env_path}  (use: hybrid-rag --env-file {env_path} eval {beir_dir})")


@app.command()
def run(corpus: Annotated[str, typer.Option(help="Corpus partition to build")] = "sample") -> None:
    """The main job: materialize the Dagster asset graph (ingest, chunk, embed, index, evaluate) and print metrics."""
    from orchestration.main_job import MainJobError, print_results, run_main_job

    try:
        print_results(run_main_job(corpus))
    except MainJobError as exc:  # e.g. the evaluation gate refused the new version: readers keep the old one
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc


if __name__ == "__main__":
    app()
