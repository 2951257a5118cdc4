import io
import os
import struct
import zlib
from datetime import UTC, datetime

import numpy as np
import polars as pl
from PIL import Image

from curation_assets.lib.ingest import DecodeLimits, decode_image, ingest_items, sha256_hex
from curation_assets.lib.shards import Item
from curation_assets.lib.tables import QUARANTINE, RAW_IMAGES
from curation_assets_tests.conftest import image_bytes


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds one tiny zlib stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_hostile_bytes_are_quarantined_with_reasons():
    jpeg = image_bytes(1)
    cases = {
        "zero_byte": b"",
        "not_an_image": b"this is a text file, not a JPEG",
        "truncated": jpeg[: len(jpeg) // 2],
        "decompression_bomb": _png_header_only(40_000, 40_000),
    }
    for reason, data in cases.items():
        decoded = decode_image(data, DecodeLimits(max_pixels=50_000_000))
        assert decoded.image is None
        assert decoded.error is not None and decoded.error[0] == reason, (reason, decoded.error)


def test_pixel_cap_is_configurable_and_checked_before_decoding():
    data = image_bytes(2, size=(200, 100))
    assert decode_image(data, DecodeLimits(max_pixels=19_999)).error[0] == "decompression_bomb"
    assert decode_image(data, DecodeLimits(max_pixels=20_000)).error is None
    assert decode_image(data, DecodeLimits(min_side=101)).error[0] == "too_small"


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (120, 60), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    decoded = decode_image(_save(img, "JPEG", exif=exif))
    assert (decoded.width, decoded.height) == (60, 120)
    assert decoded.image.size == (60, 120)


def test_animated_images_keep_their_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    decoded = decode_image(data)
    assert decoded.n_frames == 3 and decoded.format == "GIF"
    r, g, b = decoded.image.getpixel((5, 5))
    assert r > 200 and g < 50 and b < 50


def test_every_mode_becomes_rgb_with_alpha_on_white():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    assert decode_image(_save(rgba, "PNG")).image.getpixel((0, 0)) == (255, 255, 255)
    p = Image.new("P", (16, 16), 0)
    p.putpalette([10, 20, 30] * 256)
    assert decode_image(_save(p, "PNG")).image.getpixel((0, 0)) == (10, 20, 30)
    gray16 = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert decode_image(_save(gray16, "PNG")).image.getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (16, 16), (0, 0, 0, 0))
    decoded = decode_image(_save(cmyk, "JPEG"))
    assert decoded.image.mode == "RGB"
    for mode in ("L", "1", "LA"):
        assert decode_image(_save(Image.new(mode, (8, 8)), "PNG")).image.mode == "RGB"


def _no_existing(ids: list[str]) -> pl.DataFrame:
    return pl.DataFrame(schema={"image_id": pl.String, "shard": pl.String, "source_uri": pl.String})


def test_every_input_lands_in_exactly_one_table():
    a, b = image_bytes(1), image_bytes(2)
    items = [
        Item("s/a.jpg", a, caption="cap a"),
        Item("s/b.jpg", b),
        Item("s/a-copy.jpg", a),
        Item("s/empty.jpg", b""),
        Item("s/gone.jpg", error=("missing_file", "not there")),
        Item("s/bad.jpg", a[:100]),
    ]
    res = ingest_items("s", items, existing=_no_existing, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert res.n_enumerated == 6
    assert res.raw.height + res.quarantine.height + res.duplicates.height == 6
    assert res.raw["source_uri"].to_list() == ["s/a.jpg", "s/b.jpg"]
    assert res.raw["caption"].to_list() == ["cap a", None]
    assert res.duplicates.to_dicts() == [
        {
            "shard": "s",
            "source_uri": "s/a-copy.jpg",
            "image_id": sha256_hex(a),
            "kept_shard": "s",
            "kept_source_uri": "s/a.jpg",
        }
    ]
    assert res.reasons == {"missing_file": 1, "truncated": 1, "zero_byte": 1}
    assert res.quarantine.filter(pl.col("reason") == "zero_byte")["image_id"].to_list() == [
        sha256_hex(b"")
    ]


def test_images_kept_by_an_earlier_shard_collapse_there_with_their_copies():
    a, b = image_bytes(1), image_bytes(2)

    def existing(ids: list[str]) -> pl.DataFrame:
        rows = [{"image_id": sha256_hex(a), "shard": "old", "source_uri": "old/a.jpg"}]
        return pl.DataFrame(rows).filter(pl.col("image_id").is_in(ids))

    items = [Item("new/a.jpg", a), Item("new/b.jpg", b), Item("new/a2.jpg", a)]
    res = ingest_items("new", items, existing=existing)
    assert res.raw["source_uri"].to_list() == ["new/b.jpg"]
    assert sorted(res.duplicates.select("source_uri", "kept_shard", "kept_source_uri").rows()) == [
        ("new/a.jpg", "old", "old/a.jpg"),
        ("new/a2.jpg", "old", "old/a.jpg"),
    ]
    assert res.n_duplicates_within == 0


def test_undecodable_names_and_huge_captions_never_reach_a_row():
    a, b, c = image_bytes(1), image_bytes(2), image_bytes(3)
    bad_uri = "s/" + os.fsdecode(b"bad\xff.jpg")  # as os.listdir returns a non-UTF-8 name
    big = "\u00e9" * 40_000  # 80,000 bytes
    items = [
        Item("s/a.jpg", a, caption=big),
        Item(bad_uri, b, caption="fine"),
        Item("s/c.jpg", c, caption="lone \udcff surrogate"),
    ]
    limits = DecodeLimits(max_caption_bytes=1001)
    res = ingest_items("s", items, existing=_no_existing, limits=limits)
    assert res.n_enumerated == 3
    assert res.raw["source_uri"].to_list() == ["s/a.jpg", "s/c.jpg"]
    assert res.quarantine.select("source_uri", "reason").rows() == [
        ("s/bad\\xff.jpg", "bad_file_name")
    ]
    captions = res.raw["caption"].to_list()
    assert captions[0] == "\u00e9" * 500  # 1000 bytes: the split 1001st byte is dropped
    assert captions[1] == "lone \\udcff surrogate"
    assert res.notes["source_uri"].to_list() == ["s/a.jpg", "s/c.jpg"]
    assert "caption truncated to 1000 of 80000 bytes" in res.notes["note"][0]
    # Every frame converts to the table's Arrow schema (the Delta write used to fail here).
    RAW_IMAGES.to_arrow(res.raw)
    QUARANTINE.to_arrow(res.quarantine)


def test_ingest_checks_count_the_written_tables(tmp_path):
    """Accounting and uniqueness are re-counted on Delta.

    A lost row or a cross-shard clash fails, with the figures.
    """
    from curation_assets.lib.ingest import ingest_checks, write_ingest
    from curation_assets.lib.storage import DeltaStore

    store = DeltaStore(str(tmp_path))
    items = [Item(source_uri=f"a/{i}.jpg", data=image_bytes(i)) for i in range(3)]
    items.append(Item(source_uri="a/empty.jpg", data=b""))
    result = ingest_items("a", items, existing=lambda ids: pl.DataFrame(), now=datetime.now(UTC))
    write_ingest(store, "a", result)
    checks = {c.name: c for c in ingest_checks(store, "a", result.n_enumerated)}
    assert all(c.passed and c.asset == "raw_images" for c in checks.values())
    assert checks["every_input_accounted_for"].metadata["accounted"] == 4

    lost = {c.name: c for c in ingest_checks(store, "a", result.n_enumerated + 2)}
    assert not lost["every_input_accounted_for"].passed
    assert "2 inputs of shard a are in no table" in str(
        lost["every_input_accounted_for"].description
    )

    # the same image written for shard b too: a clash the uniqueness check reports
    store.replace_shard(RAW_IMAGES, "b", result.raw.with_columns(shard=pl.lit("b")).head(1))
    clash = {c.name: c for c in ingest_checks(store, "a", result.n_enumerated)}
    assert not clash["image_ids_unique"].passed
    assert clash["image_ids_unique"].metadata["also_in_other_shards"] == 1

    # an id twice within the shard (a foreign writer's rows): repeated, and each row of the
    # other shard holding one of the shard's ids is counted once
    twice = result.raw.head(1).with_columns(shard=pl.lit("a"))
    store.replace_shard(RAW_IMAGES, "a", pl.concat([result.raw, twice]))
    store.replace_shard(RAW_IMAGES, "c", result.raw.with_columns(shard=pl.lit("c")))
    both = {c.name: c for c in ingest_checks(store, "a", result.n_enumerated)}
    assert not both["image_ids_unique"].passed
    assert both["image_ids_unique"].metadata == {
        "repeated_within_shard": 1,
        "also_in_other_shards": 1 + result.raw.height,
    }


def _raw(shard: str, ids: list[str]) -> pl.DataFrame:
    rows = [{"image_id": i, "shard": shard, "source_uri": f"/{shard}/{i}.png"} for i in ids]
    frame = pl.DataFrame(rows)
    missing = [c for c in RAW_IMAGES.column_names if c not in frame.columns]
    return RAW_IMAGES.conform(frame.with_columns(pl.lit(None).alias(c) for c in missing))


def test_a_lookup_before_the_lock_is_brought_up_to_date_by_reading_only_what_changed(
    tmp_path, monkeypatch
):
    """A lookup as of one version, updated under the lock from the shards written since.

    One that landed meanwhile is seen, one re-ingested without the id is not, and the shards
    that did not change are not read again.
    """
    from curation_assets.lib.ingest import existing_since, lookup_elsewhere
    from curation_assets.lib.storage import DeltaStore

    store = DeltaStore(str(tmp_path / "delta"))
    store.replace_shard(RAW_IMAGES, "old", _raw("old", ["x", "y"]))
    store.replace_shard(RAW_IMAGES, "gone", _raw("gone", ["z"]))
    ids = ["x", "z", "w", "v"]
    version = store.version(RAW_IMAGES.name)
    seen = lookup_elsewhere(store, "new", ids, version)
    assert sorted(seen["image_id"]) == ["x", "z"]
    # meanwhile: another shard lands with "w", and "gone" is re-ingested without "z"
    store.replace_shard(RAW_IMAGES, "racer", _raw("racer", ["w"]))
    store.replace_shard(RAW_IMAGES, "gone", _raw("gone", ["u"]))
    reads: list[list[str]] = []
    real_read = store.read

    def read(spec, *, shards=None, **kwargs):
        reads.append(sorted(shards or ["<all>"]))
        return real_read(spec, shards=shards, **kwargs)

    monkeypatch.setattr(store, "read", read)
    now = existing_since(store, "new", ids, seen, version)
    assert sorted(now.select("image_id", "shard").rows()) == [("w", "racer"), ("x", "old")]
    assert reads == [["gone", "racer"]]  # not "old": it did not change
    assert existing_since(store, "new", ids, now, store.version(RAW_IMAGES.name)).equals(now)
