"""The signals on real photographs (clothing-small; skipped when absent)."""

import polars as pl

from curation_assets.lib.ingest import ingest_shard, write_ingest
from curation_assets.lib.quality.report import corpus_stats, quality_text, worst_uris
from curation_assets.lib.quality.signals import CHECKS
from curation_assets.lib.shards import inspect_shard
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_QUALITY, RAW_IMAGES


def test_clothing_photos_are_measured_and_rarely_flagged(clothing_dir, tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    shard = inspect_shard(clothing_dir / "test", min_age_s=0)
    assert shard is not None
    result = ingest_shard(shard, existing=lambda ids: pl.DataFrame())
    write_ingest(store, shard.key, result)
    raw = store.read(RAW_IMAGES)
    quality = store.read(IMAGE_QUALITY)
    assert raw.height > 300 and quality.height == raw.height
    assert set(quality["image_id"]) == set(raw["image_id"])
    stats, shards = corpus_stats(store, k=3)
    assert stats.n == raw.height and shards == [shard.key]
    # product photos are sharp, exposed and coloured: the defaults flag at most 2 % per check
    for name in CHECKS:
        assert stats.flags[name] <= 0.02 * stats.n, (name, stats.flags[name])
    text = quality_text(stats, shards, worst_uris(store, stats.worst))
    # the report names the photos by their resolved path (../shared may be a link)
    assert f"{raw.height} images in 1 shards" in text
    assert str((clothing_dir / "test").resolve()) in text
