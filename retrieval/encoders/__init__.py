"""Dense and sparse encoders."""

from retrieval.encoders.dense import DenseEncoder
from retrieval.encoders.runtime import select_device
from retrieval.encoders.sparse import Bm25Encoder, SparseVec, SpladeEncoder, make_sparse_encoder

__all__ = ["Bm25Encoder", "DenseEncoder", "SparseVec", "SpladeEncoder", "make_sparse_encoder", "select_device"]
