"""E2Rank-style continued training of the pseudo-query encoder on a collection's train split (CPU-feasible).

E2Rank (arXiv 2510.22733) continues training one embedding model under a listwise objective so that the
embedding of a query (or of the listwise prompt: the query with its top candidates) ranks the candidate
list well. Here the candidates are the real first-stage lists of the train queries, with the dense vectors
already stored in the collection: the document side stays frozen and is never re-encoded, only the
pseudo-query encoder learns. The loss is listwise softmax cross-entropy over each list, with the judged
relevant candidates as targets. The result is a sentence-transformers model directory that
``RetrievalSettings.query_model`` points at. Only a :class:`~evals.collections.TrainSplitView` is
accepted, so held-out qrels cannot leak in.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evals.candidates import CandidateList
from evals.collections import TrainSplitView
from retrieval.errors import InvalidArgumentError
from retrieval.progress import progress_bar
from retrieval.rerank import listwise_prompt
from retrieval.settings import RerankMode
from retrieval.wording import counted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    mode: RerankMode = RerankMode.FEEDBACK
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 2e-5
    temperature: float = 0.05
    prompt_candidates: int = 3
    seed: int = 13


@dataclass
class TrainingReport:
    out_dir: Path
    examples: int
    steps: int
    losses: list[float]


def trainable_lists(view: TrainSplitView, lists: Sequence[CandidateList]) -> list[tuple[CandidateList, np.ndarray]]:
    """The lists that contain at least one judged relevant candidate, with their 0/1 target vectors."""
    if not isinstance(view, TrainSplitView):
        raise TypeError("training takes a TrainSplitView, so that held-out qrels cannot be read")
    qrels = view.qrels()
    out = []
    for cl in lists:
        relevant = {d for d, grade in qrels.get(cl.qid, {}).items() if grade > 0}
        target = np.array([d in relevant for d in cl.doc_ids], dtype=np.float32)
        if target.any() and not target.all():
            out.append((cl, target))
    return out


def anchor_text(cl: CandidateList, config: TrainingConfig, tokenizer) -> str:
    if config.mode is RerankMode.PROMPT:
        return listwise_prompt(cl.query, cl.texts[: config.prompt_candidates], tokenizer)
    return cl.query


def train_pseudo_query_encoder(
    view: TrainSplitView,
    lists: Sequence[CandidateList],
    base_model: str,
    out_dir: str | Path,
    config: TrainingConfig | None = None,
    device: str | None = None,
    query_prompt: str = "",
) -> TrainingReport:
    """Fine-tune ``base_model`` so its query (or prompt) embeddings rank the stored candidate vectors (in float32,
    on ``device``; None: the best available, a GPU when there is one). ``query_prompt``: the dense encoder's query
    prompt, which searches put before each query (or listwise prompt), so training sees what searches encode."""
    import torch
    from sentence_transformers.util import batch_to_device

    from retrieval.encoders.dense import resolve_model_path
    from retrieval.encoders.runtime import trainable_model

    config = config or TrainingConfig()
    torch.manual_seed(config.seed)
    examples = trainable_lists(view, lists)
    if not examples:
        raise InvalidArgumentError(f"{view}: no train query has a judged relevant document among its candidates")
    model = trainable_model(resolve_model_path(base_model), device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    rng = random.Random(config.seed)
    losses: list[float] = []
    steps = 0
    total = config.epochs * ((len(examples) + config.batch_size - 1) // config.batch_size)
    bar = progress_bar(total=total, desc="training pseudo-query encoder", unit="step")
    for _ in range(config.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            batch = [examples[i] for i in order[start : start + config.batch_size]]
            features = batch_to_device(
                model.preprocess([anchor_text(cl, config, model.tokenizer) for cl, _ in batch], prompt=query_prompt),
                model.device,
            )
            embeddings = model(features)["sentence_embedding"]
            embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
            loss = torch.zeros((), device=model.device)
            for row, (cl, target) in enumerate(batch):
                scores = torch.from_numpy(cl.vectors).to(model.device) @ embeddings[row] / config.temperature
                positives = scores[torch.from_numpy(target).to(model.device) > 0]
                loss = loss + torch.logsumexp(scores, 0) - torch.logsumexp(positives, 0)
            loss = loss / len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    bar.close()
    model.eval()
    out_dir = Path(out_dir)
    model.save(str(out_dir))
    log.info("saved pseudo-query encoder to %s after %s", out_dir, counted(steps, "step"))
    return TrainingReport(out_dir=out_dir, examples=len(examples), steps=steps, losses=losses)
