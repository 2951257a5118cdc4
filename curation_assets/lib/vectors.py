"""Embedding vectors as numpy arrays: the ``embedding`` column of ``image_embeddings`` read back.

Light on purpose (numpy and polars only): every stage after embed reads vectors through
:func:`embedding_matrix` without importing torch.
"""

import numpy as np
import polars as pl

from curation_assets.lib.errors import ConfigError


def embedding_matrix(embeddings: pl.Series) -> np.ndarray:
    """A ``List(Float32)`` column of equal-length vectors as an (n, dim) float32 array."""
    if embeddings.is_empty():
        return np.zeros((0, 0), dtype=np.float32)
    dim = int(embeddings.list.len().max())  # type: ignore[arg-type]
    return np.ascontiguousarray(embeddings.list.to_array(dim).to_numpy(), dtype=np.float32)


def single_model(df: pl.DataFrame, *, before: str, source: str = "the embeddings") -> str:
    """The one ``model_id`` of ``df``'s vectors.

    Vectors of two models (or dimensions) are not comparable: every stage that puts them in
    one space (classifier training, clustering, dedup) checks this first.

    Args:
        df: Rows with a ``model_id`` column (and ``dim``, when present, checked too).
        before: What needs one model, for the message ("training classifiers").
        source: What ``df`` holds, for the message.

    Raises:
        ConfigError: When several models (or dimensions) are mixed, or ``df`` is empty.
    """
    keys = [c for c in ("model_id", "dim") if c in df.columns]
    models = df.select(keys).unique().sort(keys)
    if models.height != 1:
        found = models.rows() if "dim" in keys else models["model_id"].to_list()
        msg = (
            f"{source} come from {models.height} models {found}; re-embed every shard with "
            f"one model before {before}"
        )
        raise ConfigError(msg)
    return str(models["model_id"][0])
