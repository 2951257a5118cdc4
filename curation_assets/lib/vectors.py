"""Embedding vectors as numpy arrays: the ``embedding`` column of ``image_embeddings`` read back.

Light on purpose (numpy and polars only): every stage after embed reads vectors through
:func:`embedding_matrix` without importing torch.
"""

import numpy as np
import polars as pl


def embedding_matrix(embeddings: pl.Series) -> np.ndarray:
    """A ``List(Float32)`` column of equal-length vectors as an (n, dim) float32 array."""
    if embeddings.is_empty():
        return np.zeros((0, 0), dtype=np.float32)
    dim = int(embeddings.list.len().max())  # type: ignore[arg-type]
    return np.ascontiguousarray(embeddings.list.to_array(dim).to_numpy(), dtype=np.float32)
