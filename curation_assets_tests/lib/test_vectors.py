import numpy as np
import polars as pl
import pytest

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


def test_single_model_rejects_mixed_embeddings():
    from curation_assets.lib.errors import ConfigError
    from curation_assets.lib.vectors import single_model

    assert single_model(pl.DataFrame({"model_id": ["m", "m"]}), before="x") == "m"
    with pytest.raises(ConfigError, match="2 models .* before clustering"):
        single_model(pl.DataFrame({"model_id": ["m", "n"]}), before="clustering")
    both = pl.DataFrame({"model_id": ["m", "m"], "dim": [512, 768]})
    with pytest.raises(ConfigError, match=r"2 models \[\('m', 512\), \('m', 768\)\]"):
        single_model(both, before="training classifiers", source="image_embeddings")
    with pytest.raises(ConfigError, match="0 models"):
        single_model(pl.DataFrame({"model_id": []}, schema={"model_id": pl.String}), before="x")
