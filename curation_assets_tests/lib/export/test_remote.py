"""The export's per-shard files on S3 (moto): same rows and tars as a local export, incremental."""

import io
import tarfile
from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib.export import remote as remote_files
from curation_assets.lib.export.run import run_export
from curation_assets.lib.export.shards import published_shards, scan_manifest, webdataset_urls
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.objectstore import read_bytes
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    CURATED_DATASET,
    DEDUPLICATED_IMAGES,
    FILTERED_IMAGES,
    SAMPLE_WEIGHTS,
)
from curation_assets_tests.servers_s3 import S3Server, s3_server  # noqa: F401
from curation_assets_tests.weights_inputs import write_linear_weights, write_weight_inputs

pytestmark = pytest.mark.cluster


def _run(store: DeltaStore, out: Path | str, **overrides):
    settings = {
        "export_dir": str(out),
        "webdataset": True,
        "shard_size": 25,
        "soft_cap_samples": 200,
        "penalty": 0.15,
        "seed": 0,
        **overrides,
    }
    return run_export(
        store,
        out,
        settings,
        soft_cap_samples=settings["soft_cap_samples"],
        penalty=settings["penalty"],
        seed=settings["seed"],
        webdataset=settings["webdataset"],
        shard_size=settings["shard_size"],
        budget=MemoryBudget(64),
    )


def _tar_members(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getnames()


@pytest.fixture
def stores(tmp_path: Path, s3_server: S3Server):  # noqa: F811
    """The same inputs on a local root and on an S3 root (the S3 one's files also on S3)."""
    local = DeltaStore(str(tmp_path / "delta"))
    write_weight_inputs(local, tmp_path / "images", n=120)
    remote = DeltaStore(s3_server.uri(f"export-{tmp_path.name}", "delta"), s3_server.options)
    write_linear_weights(local)
    for spec in (FILTERED_IMAGES, DEDUPLICATED_IMAGES, SAMPLE_WEIGHTS):  # the export's inputs
        for key in local.shard_files(spec.name):
            remote.replace_shard(spec, key, local.read(spec, shards=[key]))
    return local, remote, tmp_path / "export", remote.root_uri.rsplit("/", 1)[0] + "/export"


def test_s3_export_equals_the_local_one_and_reruns_incrementally(stores, s3_server: S3Server):  # noqa: F811
    local, remote, local_out, s3_out = stores
    want = _run(local, local_out)
    got = _run(remote, s3_out)
    assert published_shards(s3_out, remote.storage_options) == published_shards(local_out)
    assert got.summary["totals"] == want.summary["totals"]
    manifest = scan_manifest(s3_out, remote.storage_options).collect().sort("image_id")
    assert manifest.equals(scan_manifest(local_out).collect().sort("image_id"))
    assert manifest.equals(remote.read(CURATED_DATASET).sort("image_id"))
    local_tars = webdataset_urls(local_out)
    assert local_tars == [str(p) for p in sorted(local_out.glob("shard=*/*.tar"))]
    s3_tars = webdataset_urls(s3_out, remote.storage_options)
    assert len(s3_tars) == len(local_tars) > len(published_shards(local_out))
    for uri, tar in zip(s3_tars, local_tars, strict=True):
        assert uri.rsplit("/", 1)[1] == Path(tar).name
        assert _tar_members(read_bytes(uri, remote.storage_options)) == _tar_members(
            Path(tar).read_bytes()
        )
    soft = pl.read_parquet(f"{s3_out}/soft_cap_sample.parquet", storage_options=s3_server.options)
    assert soft.equals(pl.read_parquet(local_out / "soft_cap_sample.parquet"))

    version = remote.version(CURATED_DATASET.name)
    assert _run(remote, s3_out).up_to_date and remote.version(CURATED_DATASET.name) == version
    # a manifest deleted behind the export's back: that shard alone is rewritten
    shard = sorted(published_shards(s3_out, remote.storage_options))[0]
    prefix = s3_out.removeprefix(f"s3://{s3_server.bucket}/")
    s3_server.client().delete_object(
        Bucket=s3_server.bucket, Key=f"{prefix}/shard={shard}/curated_dataset.parquet"
    )
    redo = _run(remote, s3_out)
    assert redo.plan.rewrite == [shard] and not redo.up_to_date
    # fewer samples per tar: every shard rewritten, and the tars the new version lacks pruned
    before = set(s3_server.keys(prefix))
    bigger = _run(remote, s3_out, shard_size=1000)
    assert bigger.plan.full
    after = set(s3_server.keys(prefix))
    tars = [k for k in after if k.endswith(".tar")]
    assert (
        len(tars)
        == len(published_shards(s3_out, remote.storage_options))
        < len([k for k in before if k.endswith(".tar")])
    )
    # without Soft Cap Sampling its file goes
    _run(remote, s3_out, shard_size=1000, soft_cap_samples=0)
    assert f"{prefix}/soft_cap_sample.parquet" not in s3_server.keys(prefix)


def test_a_killed_upload_leaves_the_published_shard_whole(stores, s3_server: S3Server, monkeypatch):  # noqa: F811
    """A rewrite killed between its tars and its manifest shows nothing of itself.

    The old manifests still name the old tars, all there; the next write deletes the orphans.
    """
    _, remote, _, s3_out = stores
    options = remote.storage_options
    _run(remote, s3_out)
    prefix = s3_out.removeprefix(f"s3://{s3_server.bucket}/")
    manifests = {
        k: s3_server.client().get_object(Bucket=s3_server.bucket, Key=k)["Body"].read()
        for k in s3_server.keys(prefix)
        if k.endswith("curated_dataset.parquet")
    }
    tars = webdataset_urls(s3_out, options)
    members = {uri: _tar_members(read_bytes(uri, options)) for uri in tars}
    real_upload = remote_files.ost.upload

    def killed_at_the_manifest(local, uri, opts):
        if str(uri).endswith(remote_files.MANIFEST_NAME):
            raise KeyboardInterrupt("killed")
        real_upload(local, uri, opts)

    monkeypatch.setattr(remote_files.ost, "upload", killed_at_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        _run(remote, s3_out, shard_size=1000)  # every shard rewritten: fewer, bigger tars
    monkeypatch.setattr(remote_files.ost, "upload", real_upload)
    orphaned = set(s3_server.keys(prefix))
    assert webdataset_urls(s3_out, options) == tars
    for key, data in manifests.items():
        assert (
            s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == data
        )
    for uri in tars:  # not overwritten by the killed write's tars of the same names
        assert _tar_members(read_bytes(uri, options)) == members[uri]
    assert len([k for k in orphaned if k.endswith(".tar")]) > len(tars)  # the killed upload's

    again = _run(remote, s3_out, shard_size=1000)
    assert again.plan.full
    now = webdataset_urls(s3_out, options)
    assert len(now) == len(published_shards(s3_out, options)) < len(tars)
    assert sorted(k for k in s3_server.keys(prefix) if k.endswith(".tar")) == sorted(
        u.removeprefix(f"s3://{s3_server.bucket}/") for u in now
    )


def test_a_shard_that_only_lost_images_is_republished_on_s3_as_locally(stores):
    """The drop patch downloads the shard's files, filters and copies them, uploads them."""
    from curation_assets_tests.lib.export.test_drops import _drop_in_place

    local, remote, local_out, s3_out = stores
    _run(local, local_out)
    _run(remote, s3_out)
    for store in (local, remote):
        _drop_in_place(store, "shard-b", 3)
    want, got = _run(local, local_out), _run(remote, s3_out)
    assert got.written.patched == want.written.patched == ["shard-b"]
    assert got.summary["totals"] == want.summary["totals"]
    manifest = scan_manifest(s3_out, remote.storage_options).collect().sort("image_id")
    assert manifest.equals(scan_manifest(local_out).collect().sort("image_id"))
    assert manifest.equals(remote.read(CURATED_DATASET).sort("image_id"))
    s3_tars = webdataset_urls(s3_out, remote.storage_options)
    local_tars = webdataset_urls(local_out)
    assert len(s3_tars) == len(local_tars)
    for uri, tar in zip(s3_tars, local_tars, strict=True):
        assert read_bytes(uri, remote.storage_options) == Path(tar).read_bytes()
    assert _run(remote, s3_out).up_to_date
