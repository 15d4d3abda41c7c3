"""SciFact quality table: dense, sparse, hybrid, hybrid+rerank (shipped defaults), then the E2Rank-style
trained query encoder with the tuned reranker. Training and tuning read the train split only; every figure
is on the test split.

    python -m benchmarks.scifact_quality [--epochs 4] [--out data/models/scifact-bench] [--data DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import SCIFACT, console, machine_info, print_machine
from evals.collections import load_collection
from evals.report import metrics_table
from evals.runner import evaluate_collection
from evals.tuning import tune_reranker
from retrieval import RetrievalSettings, RetrievalStack, read_documents


def run(
    epochs: int = 4, out: Path | None = None, index_dir: Path | None = None, data: Path = SCIFACT
) -> dict[str, dict[str, float]]:
    coll = load_collection(data)
    root = Path(index_dir or tempfile.mkdtemp(prefix="scifact-quality-"))
    settings = RetrievalSettings(qdrant_path=root, collection=coll.name, rerank=False)
    stack = RetrievalStack(settings)
    indexer = stack.indexer()
    docs, _ = read_documents(coll.corpus_path, "jsonl")
    indexer.index(docs)  # vectors come from the embedding cache after the first run
    base = stack.retriever()
    rows = evaluate_collection(base, coll, "test").metrics()
    profile = tune_reranker(coll.train_view(), base, out or root / "reranker", epochs=epochs)
    tuned = stack.retriever(
        query_model=profile.query_model,
        rerank_weight=profile.config.weight,
        rerank_feedback_k=profile.config.feedback_k,
        rerank_feedback_beta=profile.config.beta,
    )
    trained = evaluate_collection(tuned, coll, "test", ["dense", "hybrid", "hybrid+rerank"]).metrics()
    rows |= {f"trained {name}": values for name, values in trained.items()}
    stack.close()
    queries = len(coll.qrels("test"))
    title = f"{coll.name} test ({queries} queries); 'trained' = query encoder trained on train"
    console.print(metrics_table(rows, title=title))
    console.print(
        f"tuned on train: {profile.config}; dev nDCG@10 {profile.dev_baseline:.4f} -> "
        f"{profile.dev_first_stage:.4f} (trained) -> {profile.dev_reranked:.4f} (reranked)"
    )
    return rows


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="where the trained query encoder is saved")
    parser.add_argument("--data", type=Path, default=SCIFACT, help="BEIR directory (default: SciFact)")
    args = parser.parse_args(argv)
    print_machine(machine_info())
    return run(args.epochs, args.out, data=args.data)


if __name__ == "__main__":
    main()
