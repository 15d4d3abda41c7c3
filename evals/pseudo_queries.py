"""Corpus adaptation without qrels: pseudo-queries from the corpus itself train the query-side encoder.

GenQ / GPL adapt a dense retriever with queries generated from the corpus; nothing can be downloaded here, so
the pseudo-queries are taken from the documents themselves: a document's title, and sentences of its text
(inverse cloze task, Lee et al. 2019), each paired with its own document. The document side stays frozen:
the query encoder learns against the dense vectors already stored in the collection (a softmax over the
pseudo-queries' documents' chunks, the targets, and up to ``max_negatives`` other stored chunks drawn uniformly),
so nothing is re-indexed. Memory is bounded by the settings, not by the corpus: texts are read only for the
documents the pseudo-queries come from (at most ``max_queries`` + ``max_holdout``), vectors only for the pool.

Whether the adapted encoder is used at all (it must not score below the base model) is decided by real
judgements where they exist (:class:`JudgedQueries`: a ``dev`` or ``train`` split, never ``test``), scored
with the search users get (the default, hybrid + rerank, on the collection's index, with and without the
adapted encoder), else by dense search for the pseudo-queries of a held-out slice of the documents (a weak
judge: they are lexical). Both are reported.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import random
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evals.collections import EvalCollection
from evals.metrics import evaluate
from evals.runner import evaluate_variants
from evals.runs import best_chunk_per_document
from retrieval.documents import Document
from retrieval.errors import InvalidArgumentError
from retrieval.search import Variant
from retrieval.settings import ADAPTED_MARKER
from retrieval.stack import RetrievalStack
from retrieval.store import QdrantStore
from retrieval.wording import counted

log = logging.getLogger(__name__)

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


@dataclass(frozen=True)
class PseudoQuery:
    qid: str
    text: str
    doc_id: str
    kind: str  # "title" or "sentence"


@dataclass(frozen=True)
class AdaptConfig:
    max_queries: int = 3000  # pseudo-queries to train on (sampled over documents)
    sentences_per_doc: int = 1
    min_words: int = 6
    max_words: int = 40
    holdout: float = 0.1  # share of documents whose pseudo-queries are held out
    max_holdout: int = 500
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    temperature: float = 0.05
    seed: int = 13
    # Chunks the softmax (and the held-out dense search) ranks besides every chunk of the pseudo-queries' own
    # documents: a uniform sample of the other stored chunks. Bounds memory on large corpora (about 1.5 KB a
    # chunk); SciFact (5k documents) and NFCorpus (3.6k) have fewer, so they train on every stored chunk.
    max_negatives: int = 200_000


JUDGED_SPLITS = ("dev", "train")  # the splits that may judge an adaptation, in order of preference
PSEUDO_GATE = "held-out pseudo-queries"


@dataclass(frozen=True)
class JudgedQueries:
    """Real judgements that decide whether an adapted encoder is used: a non-test split's queries and qrels."""

    split: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]

    def __post_init__(self) -> None:
        _refuse_test(self.split)
        missing = [qid for qid in self.qrels if qid not in self.queries]
        if not self.qrels or missing:
            raise ValueError(f"split {self.split!r}: no judged queries, or qrels of unknown queries {missing[:5]}")
        if not any(grade > 0 for docs in self.qrels.values() for grade in docs.values()):
            raise ValueError(
                f"split {self.split!r}: no relevant judgement (every grade is 0), so every search scores 0 there: "
                "it cannot judge an adaptation (judge on a split with relevant documents, or without --qrels)"
            )

    @property
    def gate(self) -> str:
        return f"qrels ({self.split}, {counted(len(self.qrels), 'query')})"

    def default_search_ndcg(self, stack: RetrievalStack, query_model: str | Path | None = None) -> float:
        """nDCG@10 of the default search (hybrid + rerank) of ``stack``'s collection on these queries, with
        ``query_model`` as the query encoder; None: without any adapted encoder (as if there were none)."""
        overrides = {"query_model": str(query_model)} if query_model else {"adapted_query_model": False}
        retriever = stack.retriever(**overrides)
        results = evaluate_variants(retriever, self.queries, self.qrels, [Variant.HYBRID_RERANK], progress=False)
        return results[Variant.HYBRID_RERANK.value].metrics["ndcg@10"]


def _refuse_test(split: str) -> None:
    if split.strip().lower() == "test":
        raise ValueError("the 'test' split cannot judge an adaptation: decide on a dev or train split only")


def judged_split(collection: EvalCollection, evaluated: str | None = None) -> str | None:
    """The split of ``collection`` that judges an adaptation: ``dev`` if present, else ``train``; never ``test``
    nor the split the corpus is evaluated on (``evaluated``). None when there is none."""
    available = set(collection.splits())
    return next((s for s in JUDGED_SPLITS if s in available and s != evaluated), None)


def judged_queries(
    collection: EvalCollection, split: str | None = None, evaluated: str | None = None
) -> JudgedQueries | None:
    """The judgements of ``split`` (default: :func:`judged_split`), or None when the collection has none."""
    split = split or judged_split(collection, evaluated)
    if split is None:
        return None
    _refuse_test(split)
    if split == evaluated:
        raise ValueError(f"split {split!r} is the corpus' evaluation split: it cannot judge an adaptation")
    return JudgedQueries(split, collection.split_queries(split), collection.qrels(split))


@dataclass
class AdaptReport:
    out_dir: Path
    used: bool  # the adapted encoder scored at least as well as the base model for the judge (``gate``)
    base_ndcg: float  # held-out pseudo-queries, always computed
    adapted_ndcg: float
    train_queries: int
    held_out_queries: int
    steps: int
    losses: list[float] = field(default_factory=list)
    gate: str = PSEUDO_GATE  # which judge decided: "qrels (train, 809 queries)" or "held-out pseudo-queries"
    judged_base_ndcg: float | None = None  # default-search nDCG@10 on the judged split, when there is one
    judged_adapted_ndcg: float | None = None

    @property
    def model_dir(self) -> Path | None:
        return self.out_dir if self.used else None


def stored_corpus(
    store: QdrantStore, config: AdaptConfig | None = None, page: int = 4096
) -> tuple[list[Document], np.ndarray, np.ndarray]:
    """What adaptation needs, read from the index alone: the documents the pseudo-queries come from
    (:func:`adaptation_documents`; chunk texts joined in order), and the document id and vector (float32) of every
    chunk in the candidate pool (:func:`candidate_pool`), in point id order. The ids are scrolled twice, a page at
    a time, and only the samples are kept; then the pool is read a ``page`` of points at a time, all from one
    version of the collection. No other chunk's text is read, and no other chunk's vector: memory is bounded by
    ``config``, not by the corpus."""
    config = config or AdaptConfig()
    with store.reading():  # one version for both scrolls and every read (a writer may publish meanwhile)
        train, held = adaptation_documents((owner for _, owner in store.stored_owners()), config)
        targets = set(train) | set(held)
        pool = candidate_pool(store.stored_owners(), targets, config)
        ids, owners = [pid for pid, _ in pool], np.array([owner for _, owner in pool], dtype=object)
        del pool
        vectors: np.ndarray | None = None
        parts: dict[str, list[tuple[int, str, str]]] = {}
        for start in range(0, len(ids), page):
            page_ids = ids[start : start + page]
            own = [pid for pid, owner in zip(page_ids, owners[start : start + page], strict=True) if owner in targets]
            points = store.points(own, with_dense_vectors=True)
            dense = store.dense_vectors([pid for pid in page_ids if pid not in points])
            for row, pid in enumerate(page_ids, start):
                vector = points[pid].dense_vector if pid in points else dense[pid]
                if vectors is None:
                    vectors = np.empty((len(ids), len(vector)), dtype=np.float32)
                vectors[row] = vector
                if pid in points:
                    p = points[pid].payload
                    parts.setdefault(str(p["doc_id"]), []).append(
                        (p.get("chunk_index") or 0, p.get("title", ""), p.get("text", ""))
                    )
    docs = [
        Document(id=doc_id, title=chunks[0][1], text=" ".join(t for _, _, t in sorted(chunks)))
        for doc_id, chunks in parts.items()
    ]
    return docs, owners, vectors if vectors is not None else np.empty((0, 0), dtype=np.float32)


def _held_out(doc_id: str, config: AdaptConfig) -> bool:
    """Documents are held out by a hash of their id, so a re-run holds out the same ones."""
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < config.holdout


def _rank(key: str, config: AdaptConfig) -> int:
    """A seeded pseudo-random rank of ``key`` (64 bits): the same on every machine and in every scroll order."""
    return int.from_bytes(hashlib.blake2b(f"{config.seed}:{key}".encode(), digest_size=8).digest(), "big")


class _Lowest:
    """The (at most) ``k`` distinct keys of lowest :func:`_rank` seen so far: a seeded uniform sample without
    replacement of a stream that may repeat keys, in O(k) memory (a bottom-k sketch)."""

    def __init__(self, k: int, config: AdaptConfig) -> None:
        self.k, self.config = k, config
        self.heap: list[tuple[int, str]] = []  # (-rank, key): the root is the highest rank kept
        self.kept: set[str] = set()

    def add(self, key: str) -> None:
        if key in self.kept or self.k <= 0:
            return
        item = (-_rank(key, self.config), key)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            self.kept.discard(heapq.heapreplace(self.heap, item)[1])
        else:
            return
        self.kept.add(key)

    def sample(self) -> list[str]:
        """The kept keys, lowest rank first."""
        return [key for _, key in sorted(self.heap, reverse=True)]


def adaptation_documents(doc_ids: Iterable[str], config: AdaptConfig | None = None) -> tuple[list[str], list[str]]:
    """(train, held out) documents whose pseudo-queries adaptation uses: a seeded sample of at most
    ``max_queries`` and ``max_holdout`` documents (enough: a document gives one pseudo-query or more, if any).
    ``doc_ids`` may repeat ids (one per chunk) and come in any order; it is read once, only the samples are kept."""
    config = config or AdaptConfig()
    train, held = _Lowest(config.max_queries, config), _Lowest(config.max_holdout, config)
    for doc_id in doc_ids:
        (held if _held_out(doc_id, config) else train).add(doc_id)
    return train.sample(), held.sample()


def candidate_pool(
    chunks: Iterable[tuple[str, str]], targets: set[str], config: AdaptConfig | None = None
) -> list[tuple[str, str]]:
    """The (point id, doc id) rows the softmax ranks, in point id order: every chunk of the ``targets`` documents
    and a seeded uniform sample of at most ``max_negatives`` of the other ``chunks`` (all of them when there are
    no more). ``chunks`` is read once; only the pool is kept."""
    config = config or AdaptConfig()
    own: list[tuple[str, str]] = []

    def others() -> Iterator[tuple[str, str]]:
        for row in chunks:
            if row[1] in targets:
                own.append(row)
            else:
                yield row

    negatives = heapq.nsmallest(config.max_negatives, others(), key=lambda row: _rank(row[0], config))
    return sorted(own + negatives)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def pseudo_queries(docs: Sequence[Document], config: AdaptConfig | None = None) -> list[PseudoQuery]:
    """A title query (when the title has enough words) and ``sentences_per_doc`` sentence queries per document."""
    config = config or AdaptConfig()
    out: list[PseudoQuery] = []
    for doc in docs:
        rng = random.Random(f"{config.seed}:{doc.id}")  # a document's pseudo-queries depend on it alone
        title = doc.title or ""  # None: no title
        if config.min_words // 2 <= len(title.split()) <= config.max_words:
            out.append(PseudoQuery(f"{doc.id}#t", title, doc.id, "title"))
        candidates = [s for s in sentences(doc.text) if config.min_words <= len(s.split()) <= config.max_words]
        for i, s in enumerate(rng.sample(candidates, min(config.sentences_per_doc, len(candidates)))):
            out.append(PseudoQuery(f"{doc.id}#s{i}", s, doc.id, "sentence"))
    return out


def split_held_out(
    queries: Sequence[PseudoQuery], config: AdaptConfig | None = None
) -> tuple[list[PseudoQuery], list[PseudoQuery]]:
    """(train, held out): whole documents are held out (:func:`_held_out`); the order of ``queries`` does not
    matter."""
    config = config or AdaptConfig()
    queries = sorted(queries, key=lambda q: q.qid)
    train = [q for q in queries if not _held_out(q.doc_id, config)]
    rest = [q for q in queries if _held_out(q.doc_id, config)]
    rng = random.Random(config.seed)
    rng.shuffle(train)
    rng.shuffle(rest)
    return train[: config.max_queries], rest[: config.max_holdout]


def dense_ndcg(
    query_vectors: np.ndarray,
    qids: Sequence[str],
    qrels: dict[str, dict[str, int]],
    owners: np.ndarray,
    vectors: np.ndarray,
    depth: int = 200,
    block: int = 256,
) -> float:
    """nDCG@10 of exact dense search (the top ``depth`` chunks, best chunk per document) over the stored chunk
    vectors; BEIR conventions (:func:`evals.metrics.evaluate`: a hit whose id is the query id is ignored)."""
    run = {}
    for start in range(0, len(qids), block):  # a block of queries at a time: scores stay block x chunks
        scores = query_vectors[start : start + block] @ vectors.T
        top = np.argpartition(-scores, min(depth, scores.shape[1] - 1), axis=1)[:, :depth]
        for qid, row, candidates in zip(qids[start : start + block], scores, top, strict=True):
            best = candidates[np.argsort(-row[candidates])]
            run[qid] = best_chunk_per_document((str(owners[i]), float(row[i])) for i in best)
    return evaluate(qrels, run, k_values=(10,)).mean["ndcg@10"]


def install_adapted(candidate: Path | None, out_dir: Path) -> None:
    """Make ``candidate`` (a whole saved model, its marker written last) the adapted encoder at ``out_dir``, or
    remove the one there (None). Folders are renamed, never written in place: a searching process that follows
    the marker (:class:`retrieval.adapted.AdaptedQueryEncoder`) sees the old encoder, none, or the new one whole."""
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    if candidate is not None:
        candidate.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def adapt_query_encoder(
    docs: Sequence[Document],
    owners: np.ndarray,
    vectors: np.ndarray,
    base_model: str,
    out_dir: str | Path,
    config: AdaptConfig | None = None,
    query_prompt: str = "",
    judged: JudgedQueries | None = None,
    stack: RetrievalStack | None = None,
    device: str | None = None,
) -> AdaptReport:
    """Train ``base_model``'s query side on pseudo-queries of ``docs`` (those :func:`adaptation_documents`
    picks) against the stored chunk ``vectors`` (``owners``: the document id of each row; the softmax and the
    held-out search rank every row: :func:`stored_corpus`'s pool). The model is saved to ``out_dir`` only when it does
    not hurt: on the ``judged`` queries when given (nDCG@10 of ``stack``'s default search of the indexed
    collection, with and without the adapted encoder), else on held-out pseudo-queries (dense search);
    otherwise ``out_dir`` is removed (a stale adapted model is never left behind). It trains in float32 on
    ``device`` (None: the best available, a GPU when there is one)."""
    if judged is not None and stack is None:
        raise ValueError("judged queries are scored by searching the index: pass the collection's stack")
    import torch
    from sentence_transformers.util import batch_to_device

    from retrieval.encoders.dense import resolve_model_path
    from retrieval.encoders.runtime import trainable_model

    config = config or AdaptConfig()
    out_dir = Path(out_dir)
    chosen = set().union(*adaptation_documents((d.id for d in docs), config))
    train, held = split_held_out(pseudo_queries([d for d in docs if d.id in chosen], config), config)
    torch.manual_seed(config.seed)
    model = trainable_model(resolve_model_path(base_model), device)

    def encode(texts: Sequence[str]) -> np.ndarray:
        # prompt= even when "": a model's default_prompt_name must not add a prompt searches do not use
        return model.encode(list(texts), prompt=query_prompt, normalize_embeddings=True, batch_size=64)

    def held_out_ndcg() -> float:
        return dense_ndcg(encode([q.text for q in held]), [q.qid for q in held], held_qrels, owners, vectors)

    row_of_doc: dict[str, list[int]] = {}
    for row, owner in enumerate(owners):
        row_of_doc.setdefault(str(owner), []).append(row)
    train = [q for q in train if q.doc_id in row_of_doc]
    held = [q for q in held if q.doc_id in row_of_doc]
    if not train or not held:
        raise InvalidArgumentError(
            f"too few documents to adapt on ({counted(len(train), 'pseudo-query')} to train, {len(held)} held out)"
        )
    held_qrels = {q.qid: {q.doc_id: 1} for q in held}
    base = held_out_ndcg()
    judged_base = judged.default_search_ndcg(stack) if judged else None
    stored = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(model.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    rng = random.Random(config.seed)
    losses: list[float] = []
    model.train()
    for _ in range(config.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            batch = [train[i] for i in order[start : start + config.batch_size]]
            features = batch_to_device(model.preprocess([q.text for q in batch], prompt=query_prompt), model.device)
            embeddings = torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1)
            scores = embeddings @ stored.T / config.temperature
            positives = torch.full_like(scores, float("-inf"))
            for i, q in enumerate(batch):
                rows = row_of_doc.get(q.doc_id, [])
                positives[i, rows] = scores[i, rows]
            loss = (torch.logsumexp(scores, 1) - torch.logsumexp(positives, 1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    model.eval()
    adapted = held_out_ndcg()
    candidate = out_dir.with_name(out_dir.name + ".candidate")  # searched by the judge before it is used
    shutil.rmtree(candidate, ignore_errors=True)
    model.save(str(candidate))
    try:
        judged_adapted = judged.default_search_ndcg(stack, candidate) if judged else None
    except BaseException:
        shutil.rmtree(candidate, ignore_errors=True)
        raise
    gate = judged.gate if judged else PSEUDO_GATE
    used = judged_adapted >= judged_base if judged else adapted >= base
    if used:  # the marker makes it the collection's query encoder (RetrievalSettings.resolved_query_model)
        marker = {"base_model": base_model, "gate": gate, "held_out_ndcg@10": {"base": base, "adapted": adapted}}
        if judged:
            marker["judged_ndcg@10"] = {"split": judged.split, "base": judged_base, "adapted": judged_adapted}
        marker |= {"train_queries": len(train), "steps": len(losses)}
        (candidate / ADAPTED_MARKER).write_text(json.dumps(marker))
    install_adapted(candidate if used else None, out_dir)
    shutil.rmtree(candidate, ignore_errors=True)  # not used
    log.info(
        "adapted query encoder: held-out nDCG@10 %.4f -> %.4f, judged %s -> %s; %s decided: %s",
        base,
        adapted,
        judged_base,
        judged_adapted,
        gate,
        "used" if used else "not used",
    )
    return AdaptReport(
        out_dir, used, base, adapted, len(train), len(held), len(losses), losses, gate, judged_base, judged_adapted
    )
