import io
import tarfile

import dagster as dg
import numpy as np
import polars as pl
import pytest

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DUPLICATE_FILES, IMAGE_EMBEDDINGS, QUARANTINE, RAW_IMAGES
from curation_assets.lib.vectors import embedding_matrix
from curation_assets.runner import step_errors
from curation_assets_tests.conftest import image_bytes, write_images
from curation_assets_tests.defs.helpers import check_results, materialize_shard, resources


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_ingest_and_embed_two_shards_and_rematerialize_one(tmp_path, instance):
    """Re-materializing shard a replaces exactly its rows; shard b is untouched."""
    src = tmp_path / "src"
    a_paths = write_images(src / "a", 6)
    (src / "a" / "broken.jpg").write_bytes(b"")
    (src / "a" / "copy.jpg").write_bytes(a_paths[0].read_bytes())
    _tar(
        src / "b.tar",
        [
            ("k1.jpg", image_bytes(100)),
            ("k1.txt", b"caption one"),
            ("k2.jpg", a_paths[1].read_bytes()),  # exact duplicate of an image of shard a
            ("k3.jpg", image_bytes(101)[:200]),  # truncated member
        ],
    )
    res = resources(tmp_path, src)
    store = DeltaStore(str(tmp_path / "delta"))
    for shard in ("a", "b.tar"):
        result = materialize_shard(instance, res, shard)
        assert result.success
        assert all(check_results(result).values()), check_results(result)

    raw = store.read(RAW_IMAGES)
    assert raw.group_by("shard").len().sort("shard").rows() == [("a", 6), ("b.tar", 1)]
    assert store.read(QUARANTINE).select("shard", "reason").sort("shard").rows() == [
        ("a", "zero_byte"),
        ("b.tar", "truncated"),
    ]
    dups = store.read(DUPLICATE_FILES).select("shard", "kept_shard").sort("shard").rows()
    assert dups == [("a", "a"), ("b.tar", "a")]
    assert raw.filter(pl.col("shard") == "b.tar")["caption"].to_list() == ["caption one"]
    emb_b = store.read(IMAGE_EMBEDDINGS, shards=["b.tar"])

    # Change shard a on disk and re-materialize it twice: b is untouched, nothing doubles.
    (src / "a" / "img0005.jpg").unlink()
    for _ in range(2):
        assert materialize_shard(instance, res, "a").success
    raw = store.read(RAW_IMAGES)
    assert raw.group_by("shard").len().sort("shard").rows() == [("a", 5), ("b.tar", 1)]
    assert raw["image_id"].n_unique() == raw.height
    emb = store.read(IMAGE_EMBEDDINGS)
    assert emb.group_by("shard").len().sort("shard").rows() == [("a", 5), ("b.tar", 1)]
    assert store.read(IMAGE_EMBEDDINGS, shards=["b.tar"]).equals(emb_b)
    x = embedding_matrix(emb["embedding"])
    assert x.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert set(emb["image_id"]) == set(raw["image_id"])


def test_materialization_metadata_is_conventional(tmp_path, instance):
    src = tmp_path / "src"
    write_images(src / "s", 3)
    result = materialize_shard(instance, resources(tmp_path, src), "s")
    mats = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.asset_materializations_for_node("ingest")
    }
    meta = mats["raw_images"]
    assert meta["dagster/row_count"].value == 3
    assert meta["dagster/uri"].value.endswith("/delta/raw_images")
    assert [c.name for c in meta["dagster/column_schema"].schema.columns][:3] == [
        "image_id",
        "shard",
        "source_uri",
    ]
    assert meta["enumerated"].value == 3
    emb_meta = result.asset_materializations_for_node("image_embeddings")[0].metadata
    assert emb_meta["model_id"].value == "open_clip:tiny-clip-test@random-init"
    assert emb_meta["dim"].value == 32


def test_a_bad_manifest_fails_its_shard_with_a_clear_error_and_writes_nothing(tmp_path, instance):
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.csv").write_text("filename\nx.jpg\n")
    result = materialize_shard(instance, resources(tmp_path, src), "m.csv", embed=False)
    assert not result.success
    (error,) = step_errors(result)
    assert (
        error.startswith("ingest: curation_assets.lib.shards.ShardError")
        and "add a 'path' column" in error
    )
    assert not DeltaStore(str(tmp_path / "delta")).exists("raw_images")


def test_shard_source_limits_reach_every_stage(tmp_path, instance):
    """The resource's allowed_roots, max_file_bytes and max_caption_bytes govern every stage.

    Ingest and embed read the shard alike; a truncated caption is a row of ingest_notes.
    """
    from curation_assets.defs.resources import ShardSource
    from curation_assets.lib.tables import INGEST_NOTES

    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    photos = write_images(outside, 3)
    big = outside / "big.png"
    big.write_bytes(image_bytes(7, size=(400, 300), fmt="PNG"))
    src.mkdir()
    pl.DataFrame(
        {
            "path": [str(p) for p in photos] + [str(big)],
            "caption": ["x" * 300, "short", None, None],
        }
    ).write_csv(src / "m.csv")
    res = resources(tmp_path, src)
    limit = big.stat().st_size - 1
    assert all(p.stat().st_size <= limit for p in photos)

    # Without allowed_roots every absolute path out of the source root is refused.
    assert materialize_shard(instance, res, "m.csv").success
    store = DeltaStore(str(tmp_path / "delta"))
    assert store.read(RAW_IMAGES).height == 0
    assert set(store.read(QUARANTINE)["reason"]) == {"outside_root"}

    res["shard_source"] = ShardSource(
        root=str(src),
        min_age_s=0,
        allowed_roots=[str(outside)],
        max_file_bytes=limit,
        max_caption_bytes=100,
    )
    result = materialize_shard(instance, res, "m.csv")
    assert result.success and all(check_results(result).values())
    assert store.read(RAW_IMAGES).height == 3
    assert store.read(QUARANTINE).select("reason").rows() == [("too_large_file",)]
    # embed re-reads the shard through the same resource: the outside photos are embedded.
    assert store.read(IMAGE_EMBEDDINGS).height == 3
    notes = store.read(INGEST_NOTES)
    assert notes.height == 1 and notes["shard"][0] == "m.csv"
    assert notes["source_uri"][0] == str(photos[0]) and "truncated" in notes["note"][0]
    raw = store.read(RAW_IMAGES)
    assert raw.filter(pl.col("image_id") == notes["image_id"][0])["caption"][0] == "x" * 100


def _materializations(result, node: str, asset: str) -> dict[str, dict]:
    return {
        m.partition: m.metadata
        for m in result.asset_materializations_for_node(node)
        if m.asset_key.to_user_string() == asset
    }


def test_one_run_covers_many_shards_with_metadata_per_shard(tmp_path, instance):
    from curation_assets.defs.embed import image_embeddings
    from curation_assets.defs.ingest import ingest
    from curation_assets.defs.partitions import SHARDS_PARTITION, range_tags

    src = tmp_path / "src"
    sizes = {"a": 2, "b": 4, "c": 3}
    for i, (name, n) in enumerate(sizes.items()):
        write_images(src / name, n, start=100 * i)
    instance.add_dynamic_partitions(SHARDS_PARTITION, list(sizes))
    result = dg.materialize(
        [ingest, image_embeddings],
        instance=instance,
        resources=resources(tmp_path, src),
        tags=range_tags(list(sizes)),
    )
    assert result.success and len(instance.get_runs()) == 1
    raw = _materializations(result, "ingest", "raw_images")
    assert {k: m["dagster/row_count"].value for k, m in raw.items()} == sizes
    assert {k: m["enumerated"].value for k, m in raw.items()} == sizes
    assert set(_materializations(result, "ingest", "quarantine")) == set(sizes)
    emb = _materializations(result, "image_embeddings", "image_embeddings")
    assert {k: m["dagster/row_count"].value for k, m in emb.items()} == sizes
    store = DeltaStore(str(tmp_path / "delta"))
    assert dict(store.read(IMAGE_EMBEDDINGS).group_by("shard").len().iter_rows()) == sizes
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    accounted = evaluations["every_input_accounted_for"]
    assert accounted.passed and accounted.metadata["shards"].value == 3
    assert set(accounted.metadata["by_shard"].value) == set(sizes)
    assert all(e.passed for e in evaluations.values())


def test_a_shard_failing_mid_run_leaves_complete_shards_and_a_rerun_converges(tmp_path, instance):
    """A broken shard between two good ones: the first is complete and reported, the last untouched.

    Once the manifest is fixed, the same run converges to every shard once.
    """
    from curation_assets.defs.ingest import ingest
    from curation_assets.defs.partitions import SHARDS_PARTITION, completed_shards, range_tags

    src = tmp_path / "src"
    write_images(src / "a", 3)
    photos = write_images(tmp_path / "photos", 2, start=50)
    write_images(src / "c", 2, start=80)
    (src / "m.csv").write_text("filename\nx.jpg\n")
    keys = ["a", "m.csv", "c"]
    instance.add_dynamic_partitions(SHARDS_PARTITION, keys)
    res = resources(tmp_path, src)
    res["shard_source"] = res["shard_source"].model_copy(
        update={"allowed_roots": [str(tmp_path / "photos")]}
    )
    first = dg.materialize(
        [ingest], instance=instance, resources=res, tags=range_tags(keys), raise_on_error=False
    )
    assert not first.success
    (error,) = step_errors(first)
    assert "add a 'path' column" in error
    store = DeltaStore(str(tmp_path / "delta"))
    raw = store.read(RAW_IMAGES)
    assert dict(raw.group_by("shard").len().iter_rows()) == {"a": 3}  # complete, nothing else
    assert set(_materializations(first, "ingest", "raw_images")) == {"a"}
    assert completed_shards(first, keys) == {"a"}

    pl.DataFrame({"path": [str(p) for p in photos]}).write_csv(src / "m.csv")
    again = dg.materialize([ingest], instance=instance, resources=res, tags=range_tags(keys))
    assert again.success
    raw = store.read(RAW_IMAGES)
    assert dict(raw.group_by("shard").len().iter_rows()) == {"a": 3, "m.csv": 2, "c": 2}
    assert raw["image_id"].n_unique() == raw.height
    assert set(_materializations(again, "ingest", "raw_images")) == set(keys)
