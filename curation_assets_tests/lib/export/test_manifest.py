"""The curated manifest: kept images joined with their weights."""

import polars as pl
import pytest

from curation_assets.lib.export.manifest import curated_rows
from curation_assets.lib.tables import CURATED_DATASET


def test_curated_rows_join_and_stale_weights():
    images = pl.DataFrame(
        {
            "image_id": ["b", "a"],
            "shard": ["s", "s"],
            "source_uri": ["/b.jpg", "/a.jpg"],
            "caption": [None, "x"],
            "width": [10, 20],
            "height": [10, 20],
        }
    )
    weights = pl.DataFrame({"image_id": ["a", "b"], "weight": [0.5, 1.5]})
    rows = curated_rows(images, weights)
    assert rows.schema == CURATED_DATASET.schema
    assert rows["image_id"].to_list() == ["a", "b"] and rows["weight"].to_list() == [0.5, 1.5]
    with pytest.raises(ValueError, match="stale"):
        curated_rows(images, weights.head(1))
