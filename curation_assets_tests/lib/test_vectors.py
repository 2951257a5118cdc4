import numpy as np
import polars as pl
import pytest

from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets.lib.vectors import (
    embedding_matrix,
    from_half_bytes,
    half_bytes,
    half_parts,
    vector_batches,
)


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


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float16)


def test_half_parts_views_every_chunk_without_converting():
    a, b = _vectors(5, 8, 1), _vectors(3, 8, 2)
    frame = pl.concat(
        [
            pl.DataFrame({"id": range(5), "v": half_bytes(a)}),
            pl.DataFrame({"id": range(5, 8), "v": half_bytes(b)}),
        ],
        rechunk=False,
    )
    rest, parts = half_parts(frame.lazy(), "v", 8)
    assert rest.columns == ["id"] and rest.height == 8
    assert all(p.dtype == np.float16 for p in parts)
    np.testing.assert_array_equal(np.concatenate(parts), np.concatenate([a, b]))
    np.testing.assert_array_equal(
        from_half_bytes(frame["v"]), np.concatenate([a, b]).astype(np.float32)
    )


def test_a_row_of_another_length_is_an_error_not_a_null():
    good = half_bytes(_vectors(2, 8))
    frame = pl.DataFrame({"v": pl.concat([good, pl.Series([b"\x00" * 6])])})
    with pytest.raises(ValueError, match=r"1 rows that are null or of \[6\] bytes; expected 16"):
        half_parts(frame.lazy(), "v", 8)
    with pytest.raises(ValueError, match="expected 16 bytes"):
        half_parts(pl.DataFrame({"v": pl.Series([None], dtype=pl.Binary)}).lazy(), "v", 8)


def test_vector_batches_read_files_a_batch_at_a_time(tmp_path):
    """Several files and row groups, batches smaller than a file: the rows in file order."""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 8)).astype(np.float32) for n in (5, 0, 7)]
    uris = []
    for i, x in enumerate(xs):
        frame = pl.DataFrame(
            {
                "image_id": [f"f{i}-{j}" for j in range(len(x))],
                "embedding": pl.Series(x.tolist(), dtype=pl.List(pl.Float32)),
            }
        )
        uris.append(str(tmp_path / f"part-{i}.parquet"))
        frame.write_parquet(uris[-1], row_group_size=3)
    got = list(vector_batches(uris, {}, "embedding", ["image_id"], batch_rows=2))
    assert max(x.shape[0] for _, x in got) == 2
    np.testing.assert_array_equal(np.concatenate([x for _, x in got]), np.concatenate(xs))
    frame = pl.concat([f for f, _ in got])
    assert frame["image_id"].to_list() == [f"f{i}-{j}" for i in (0, 2) for j in range(len(xs[i]))]
    assert frame["_file"].to_list() == [0] * 5 + [2] * 7
    ids = list(vector_batches(uris, {}, None, ["image_id"]))  # the ids alone
    assert pl.concat([f for f, _ in ids]).equals(frame)
    assert {x.shape[1] for _, x in ids} == {0}
    assert list(vector_batches([], {}, "embedding")) == []


def test_vector_batches_reject_a_vector_of_another_length(tmp_path):
    uri = str(tmp_path / "mixed.parquet")
    vectors = pl.Series([[0.1, 0.2], [0.3]], dtype=pl.List(pl.Float32))
    pl.DataFrame({"image_id": ["a", "b"], "embedding": vectors}).write_parquet(uri)
    with pytest.raises(ValueError, match="vectors of another length than 2"):
        list(vector_batches([uri], {}, "embedding", ["image_id"]))
