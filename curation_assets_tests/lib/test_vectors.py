import numpy as np
import polars as pl

from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.lib.vectors import embedding_matrix


def test_embedding_column_round_trips_to_a_float32_matrix():
    x = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    column = pl.Series("embedding", x.tolist(), dtype=IMAGE_EMBEDDINGS.schema["embedding"])
    m = embedding_matrix(column)
    assert m.dtype == np.float32 and m.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(m, x)


def test_no_vectors_is_an_empty_matrix():
    empty = IMAGE_EMBEDDINGS.empty()["embedding"]
    assert embedding_matrix(empty).shape == (0, 0)
