"""Hostile inputs: special files, paths leaving the root, bad names and huge captions.

Every test builds real files in tmp_path. Tests that could block (FIFOs) or read forever
(``/dev/zero``) carry a timeout, so a regression fails in seconds instead of hanging.
"""

import io
import json
import os
import tarfile
import time
from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib.ingest import DecodeLimits, IngestResult, ingest_shard
from curation_assets.lib.shards import (
    ShardError,
    discover_shards,
    inspect_shard,
    iter_items,
    shard_info,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DUPLICATE_FILES, QUARANTINE, RAW_IMAGES, REASON_CODES
from curation_assets_tests.conftest import image_bytes, write_images

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX file system needed")

EURO = "\u20ac"  # 3 UTF-8 bytes: a 64 KiB cap falls inside a character
BIG_CAPTION = EURO * 350_000  # 1,050,000 bytes


def _no_existing(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={"image_id": pl.String, "shard": pl.String, "source_uri": pl.String})


def _ingest(root: Path, key: str, **kw) -> IngestResult:
    res = ingest_shard(shard_info(root, key), existing=_no_existing, workers=1, **kw)
    total = res.raw.height + res.quarantine.height + res.duplicates.height
    assert total == res.n_enumerated, "every input must be accounted for"
    for reason in res.reasons:
        assert reason in REASON_CODES, reason
    return res


def _reasons(res: IngestResult) -> dict[str, str]:
    """File name (after the last '/') -> quarantine reason."""
    rows = res.quarantine.select("source_uri", "reason").rows()
    return {uri.rsplit("/", 1)[-1]: reason for uri, reason in rows}


def _names(frame: pl.DataFrame) -> list[str]:
    return sorted(uri.rsplit("/", 1)[-1] for uri in frame["source_uri"])


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _assert_capped(caption: str, cap: int = 64 << 10) -> None:
    raw = caption.encode("utf-8")
    assert len(raw) <= cap and len(raw) > cap - 4, len(raw)
    assert BIG_CAPTION.startswith(caption)  # cut at a character boundary, nothing mangled


@pytest.mark.timeout(20)
def test_fifos_and_devices_are_quarantined_without_being_opened(tmp_path):
    shard = tmp_path / "s"
    write_images(shard, 3)
    os.mkfifo(shard / "pipe.jpg")
    os.mkfifo(shard / "img0001.txt")  # a FIFO as the caption sidecar of a good image
    os.symlink("/dev/zero", shard / "zero.jpg")
    res = _ingest(tmp_path, "s")
    assert _names(res.raw) == ["img0000.jpg", "img0001.jpg", "img0002.jpg"]
    assert _reasons(res) == {
        "pipe.jpg": "not_regular_file",
        "img0001.txt": "not_regular_file",
        "zero.jpg": "outside_root",
    }
    details = dict(res.quarantine.select("source_uri", "detail").rows())
    assert "is a FIFO" in details[str(shard / "pipe.jpg")]
    # The image whose sidecar is a FIFO is kept, and the lost caption is not silent.
    note = res.notes.filter(pl.col("source_uri").str.ends_with("img0001.jpg"))["note"].item()
    assert "img0001.txt not read (not_regular_file)" in note

    # With /dev allowed, a device is still never read.
    res = _ingest(tmp_path, "s", allowed_roots=["/dev"])
    assert _reasons(res)["zero.jpg"] == "not_regular_file"
    details = dict(res.quarantine.select("source_uri", "detail").rows())
    assert "character device" in details[str(shard / "zero.jpg")]


@pytest.mark.timeout(20)
def test_a_fifo_or_device_shard_entry_is_never_ready_and_never_read(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    os.mkfifo(tmp_path / "pipe.tar")
    os.symlink("/dev/zero", tmp_path / "zero.parquet")
    os.symlink(tmp_path / "gone.csv", tmp_path / "dangling.csv")
    for p in tmp_path.iterdir():
        os.utime(p, (1, 1), follow_symlinks=False)
    shards = {s.key: s for s in discover_shards(tmp_path, min_age_s=0)}
    assert sorted(shards) == ["dangling.csv", "pipe.csv", "pipe.tar", "zero.parquet"]
    assert not any(s.ready for s in shards.values())
    assert "not a regular file" in shards["pipe.csv"].why_not_ready
    for key in ("pipe.csv", "pipe.tar", "zero.parquet"):
        with pytest.raises(ShardError, match="not a regular file"):
            list(iter_items(shard_info(tmp_path, key)))


@pytest.mark.timeout(20)
def test_manifest_paths_must_stay_inside_the_source_root(tmp_path):
    root = tmp_path / "source"
    write_images(root / "_imgs", 2)
    (tmp_path / "outside.jpg").write_bytes(image_bytes(7))
    (root / "m.csv").write_text(
        "path,caption\n"
        "/dev/zero,zeros\n"
        "/etc/hostname,host\n"
        "../outside.jpg,outside\n"
        "/proc/self/status,proc\n"
        "_imgs/../_imgs/img0000.jpg,inside\n"
        f"{root / '_imgs' / 'img0001.jpg'},absolute inside\n"
    )
    res = _ingest(root, "m.csv")
    assert _names(res.raw) == ["img0000.jpg", "img0001.jpg"]
    assert sorted(res.quarantine["reason"]) == ["outside_root"] * 4
    details = "\n".join(res.quarantine["detail"])
    for named in ("'/dev/zero'", "'/etc/hostname'", "'../outside.jpg'", "'/proc/self/status'"):
        assert named in details
    assert res.quarantine["image_id"].null_count() == 4  # refused unread: nothing hashed

    # An explicitly allowed root admits absolute paths and '..' into it, and nothing more.
    res = _ingest(root, "m.csv", allowed_roots=[tmp_path, "/dev"])
    assert _names(res.raw) == ["img0000.jpg", "img0001.jpg", "outside.jpg"]
    assert _reasons(res) == {
        "zero": "not_regular_file",
        "hostname": "outside_root",
        "status": "outside_root",
    }


@pytest.mark.timeout(20)
def test_the_byte_cap_is_enforced_while_reading_not_from_st_size(tmp_path):
    # /proc files are regular files that report st_size 0 whatever they hold.
    status = Path("/proc/self/status")
    if not status.exists() or status.stat().st_size != 0:
        pytest.skip("needs Linux /proc")
    (tmp_path / "m.csv").write_text("path\n/proc/self/status\n")
    limits = DecodeLimits(max_file_bytes=100)
    res = _ingest(tmp_path, "m.csv", limits=limits, allowed_roots=["/proc"])
    assert res.reasons == {"too_large_file": 1}
    assert "more than 100 bytes while reading" in res.quarantine["detail"].item()
    assert res.quarantine["image_id"].item() is None
    items = list(iter_items(shard_info(tmp_path, "m.csv"), allowed_roots=["/proc"]))
    assert items[0].error is None and items[0].data and b"Name:" in items[0].data


def test_symlinks_in_a_folder_shard_must_stay_inside_the_shard(tmp_path):
    root = tmp_path / "source"
    shard = root / "s"
    write_images(shard, 2)
    write_images(root / "other", 1, start=5)
    (tmp_path / "outside.jpg").write_bytes(image_bytes(7))
    os.symlink(tmp_path / "outside.jpg", shard / "to-outside.jpg")
    os.symlink("/etc/hostname", shard / "to-hostname.jpg")
    os.symlink("../other/img0005.jpg", shard / "to-sibling-shard.jpg")  # outside this shard
    os.symlink("img0000.jpg", shard / "to-inside.jpg")
    os.symlink("gone.jpg", shard / "dangling.jpg")
    os.symlink("loop.jpg", shard / "loop.jpg")
    os.symlink(tmp_path, shard / "linked-folder")  # not followed at all
    # Dangling links and loops do not break discovery.
    assert inspect_shard(shard, min_age_s=60, now=time.time() + 3600).ready
    res = _ingest(root, "s")
    assert _names(res.raw) == ["img0000.jpg", "img0001.jpg"]
    assert _names(res.duplicates) == ["to-inside.jpg"]  # a link inside the shard is read
    assert _reasons(res) == {
        "to-outside.jpg": "outside_root",
        "to-hostname.jpg": "outside_root",
        "to-sibling-shard.jpg": "outside_root",
        "dangling.jpg": "missing_file",
        "loop.jpg": "read_error",
    }
    detail = res.quarantine.filter(pl.col("source_uri").str.ends_with("to-hostname.jpg"))
    assert "/etc/hostname" in detail["detail"].item()


def test_a_bad_file_name_is_quarantined_and_the_rest_of_its_shard_is_written(tmp_path):
    shard = tmp_path / "s"
    write_images(shard, 3)
    bad = os.path.join(os.fsencode(shard), b"bad\xff.jpg")
    with open(bad, "wb") as fh:
        fh.write(image_bytes(9))
    with open(os.path.join(os.fsencode(shard), b"bad\xff.txt"), "wb") as fh:
        fh.write(b"its caption")
    _tar(
        tmp_path / "t.tar",
        [("ok.jpg", image_bytes(10)), (os.fsdecode(b"tar\xfe.jpg"), image_bytes(11))],
    )
    res = _ingest(tmp_path, "s")
    assert _names(res.raw) == ["img0000.jpg", "img0001.jpg", "img0002.jpg"]
    assert _reasons(res) == {"bad\\xff.jpg": "bad_file_name", "bad\\xff.txt": "bad_file_name"}
    assert "bad\\xff.jpg" in res.quarantine["detail"][0]
    # The rows are written to Delta as they are (this is where the shard used to fail).
    store = DeltaStore(str(tmp_path / "delta"))
    store.replace_shard(RAW_IMAGES, "s", res.raw)
    store.replace_shard(QUARANTINE, "s", res.quarantine)
    store.replace_shard(DUPLICATE_FILES, "s", res.duplicates)
    assert store.read(QUARANTINE, shards=["s"])["reason"].to_list() == ["bad_file_name"] * 2
    assert store.read(RAW_IMAGES, shards=["s"]).height == 3

    res = _ingest(tmp_path, "t.tar")
    assert [u.split("#")[1] for u in res.raw["source_uri"]] == ["ok.jpg"]
    assert res.quarantine.select("source_uri", "reason").row(0) == (
        f"{tmp_path / 't.tar'}#tar\\xfe.jpg",
        "bad_file_name",
    )


def _caption_of(res: IngestResult, name: str) -> str:
    return res.raw.filter(pl.col("source_uri").str.ends_with(name))["caption"].item()


def test_huge_captions_are_truncated_and_noted_from_every_source(tmp_path):
    shard = tmp_path / "s"
    paths = write_images(shard, 3)
    paths[0].with_suffix(".txt").write_text(BIG_CAPTION + "\n", encoding="utf-8")
    paths[1].with_suffix(".json").write_text(json.dumps({"caption": BIG_CAPTION}))
    paths[2].with_suffix(".txt").write_text("short caption\n")
    res = _ingest(tmp_path, "s")
    _assert_capped(_caption_of(res, "img0000.jpg"))
    _assert_capped(_caption_of(res, "img0001.jpg"))
    assert _caption_of(res, "img0002.jpg") == "short caption"
    notes = dict(res.notes.select("source_uri", "note").rows())
    assert "caption truncated" in notes[str(paths[0])] and "img0000.txt" in notes[str(paths[0])]
    assert "caption truncated" in notes[str(paths[1])] and "img0001.json" in notes[str(paths[1])]
    assert str(paths[2]) not in notes

    write_images(tmp_path / "_imgs", 2, start=10)
    pl.DataFrame({"path": ["_imgs/img0010.jpg"], "caption": [BIG_CAPTION]}).write_csv(
        tmp_path / "m.csv"
    )
    pl.DataFrame({"path": ["_imgs/img0011.jpg"], "caption": [BIG_CAPTION]}).write_parquet(
        tmp_path / "m.parquet"
    )
    blob = json.dumps({"caption": BIG_CAPTION}).encode()
    _tar(
        tmp_path / "t.tar",
        [
            ("k1.jpg", image_bytes(20)),
            ("k1.txt", BIG_CAPTION.encode()),
            ("k2.jpg", image_bytes(21)),
            ("k2.json", blob),
        ],
    )
    for key, names in [
        ("m.csv", ["img0010.jpg"]),
        ("m.parquet", ["img0011.jpg"]),
        ("t.tar", ["k1.jpg", "k2.jpg"]),
    ]:
        res = _ingest(tmp_path, key)
        for name in names:
            _assert_capped(_caption_of(res, name))
        assert res.notes.height == len(names)
        assert res.notes["note"].str.contains("caption truncated").all()

    # The cap is a parameter.
    res = _ingest(tmp_path, "m.csv", limits=DecodeLimits(max_caption_bytes=10))
    assert _caption_of(res, "img0010.jpg") == EURO * 3


def test_undecodable_or_broken_sidecars_keep_the_image_and_say_why(tmp_path):
    shard = tmp_path / "s"
    paths = write_images(shard, 4)
    paths[0].with_suffix(".txt").write_bytes(b"caf\xe9 au lait\xff")  # latin-1, not UTF-8
    paths[1].with_suffix(".json").write_bytes(b'{"caption": "unterminated')
    paths[2].with_suffix(".json").write_bytes(b"[" * 200_000)  # nesting beyond the parser
    paths[3].with_suffix(".json").write_bytes(b'{"caption": "lone \\udcff surrogate"}')
    res = _ingest(tmp_path, "s")
    assert res.raw.height == 4 and res.quarantine.height == 0
    assert _caption_of(res, "img0000.jpg") == "caf\ufffd au lait\ufffd"
    assert _caption_of(res, "img0001.jpg") is None
    assert _caption_of(res, "img0002.jpg") is None
    assert _caption_of(res, "img0003.jpg") == "lone \\udcff surrogate"
    notes = dict(res.notes.select("source_uri", "note").rows())
    assert "not valid UTF-8" in notes[str(paths[0])]
    assert "not valid JSON" in notes[str(paths[1])]
    assert "not valid JSON" in notes[str(paths[2])]
    RAW_IMAGES.to_arrow(res.raw)  # every caption is writable
