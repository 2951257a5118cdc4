import io
import json
import os
import tarfile
import time

import polars as pl
import pytest

from curation_assets.lib.shards import (
    ShardError,
    cap_caption,
    discover_shards,
    escape_text,
    inspect_shard,
    iter_items,
    shard_info,
)
from curation_assets_tests.conftest import age, image_bytes, write_images


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_discovery_recognises_the_three_kinds_and_ignores_staging(tmp_path):
    write_images(tmp_path / "folder-a", 2)
    _tar(tmp_path / "web-b.tar", [("k1.jpg", image_bytes(1))])
    (tmp_path / "list-c.csv").write_text("path\nfolder-a/img0000.jpg\n")
    pl.DataFrame({"path": ["folder-a/img0001.jpg"]}).write_parquet(tmp_path / "list-d.parquet")
    write_images(tmp_path / "_staging", 1)
    write_images(tmp_path / ".hidden", 1)
    (tmp_path / "web-e.tar.part").write_bytes(b"partial")
    (tmp_path / "notes.md").write_text("not a shard")
    for p in tmp_path.iterdir():
        age(p)
    shards = discover_shards(tmp_path, min_age_s=60)
    assert [(s.key, s.kind, s.ready) for s in shards] == [
        ("folder-a", "folder", True),
        ("list-c.csv", "manifest", True),
        ("list-d.parquet", "manifest", True),
        ("web-b.tar", "tar", True),
    ]


def test_a_shard_still_being_written_is_not_ready(tmp_path):
    write_images(tmp_path / "fresh", 1)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad name!").mkdir()
    write_images(tmp_path / "bad name!", 1)
    now = time.time()
    by_key = {s.key: s for s in discover_shards(tmp_path, min_age_s=60, now=now)}
    assert not by_key["fresh"].ready and "may still be written" in by_key["fresh"].why_not_ready
    assert not by_key["empty"].ready
    assert not by_key["bad name!"].ready and "must match" in by_key["bad name!"].why_not_ready
    # Quiet for longer than min_age_s -> ready.
    assert inspect_shard(tmp_path / "fresh", min_age_s=60, now=now + 61).ready
    # A _SUCCESS marker makes a folder ready at once.
    (tmp_path / "fresh" / "_SUCCESS").touch()
    assert inspect_shard(tmp_path / "fresh", min_age_s=60, now=now).ready


def test_folder_items_take_sidecar_captions_and_report_orphans(tmp_path):
    shard_dir = tmp_path / "s"
    paths = write_images(shard_dir, 2)
    write_images(shard_dir / "nested", 1, start=5)
    paths[0].with_suffix(".txt").write_text("a red thing\n")
    paths[1].with_suffix(".json").write_text(json.dumps({"caption": "from json"}))
    (shard_dir / "lonely.txt").write_text("caption without an image")
    (shard_dir / "_SUCCESS").touch()
    items = list(iter_items(shard_info(tmp_path, "s")))
    by_name = {i.source_uri.rsplit("/", 1)[1]: i for i in items}
    assert sorted(by_name) == ["img0000.jpg", "img0001.jpg", "img0005.jpg", "lonely.txt"]
    assert by_name["img0000.jpg"].caption == "a red thing"
    assert by_name["img0001.jpg"].caption == "from json"
    assert by_name["lonely.txt"].error[0] == "orphan_sidecar"
    assert by_name["img0005.jpg"].data is not None


def test_tar_samples_group_by_key_and_truncation_keeps_earlier_members(tmp_path):
    members = [
        ("a/s1.jpg", image_bytes(1)),
        ("a/s1.txt", b"first caption"),
        ("a/s2.png", image_bytes(2, fmt="PNG")),
        ("a/s2.json", json.dumps({"caption": "second", "license": "CC0"}).encode()),
        ("a/s3.jpg", image_bytes(3)),
    ]
    _tar(tmp_path / "ok.tar", members)
    items = list(iter_items(shard_info(tmp_path, "ok.tar")))
    assert [(i.source_uri.split("#")[1], i.caption) for i in items] == [
        ("a/s1.jpg", "first caption"),
        ("a/s2.png", "second"),
        ("a/s3.jpg", None),
    ]
    blob = (tmp_path / "ok.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(blob[: 512 * 4 + 300])  # ends inside a later member
    items = list(iter_items(shard_info(tmp_path, "cut.tar")))
    assert items[0].source_uri.endswith("#a/s1.jpg") and items[0].data == members[0][1]
    assert items[-1].error is not None and items[-1].error[0] == "tar_truncated"


def test_manifest_rows_resolve_relative_paths_and_report_bad_rows(tmp_path):
    write_images(tmp_path / "_imgs", 2)
    (tmp_path / "m.csv").write_text(
        "path,caption\n"
        "_imgs/img0000.jpg,first\n"
        f"{tmp_path / '_imgs' / 'img0001.jpg'},\n"
        "_imgs/missing.jpg,gone\n"
        "https://example.com/x.jpg,remote\n"
        ",empty path\n"
    )
    items = list(iter_items(shard_info(tmp_path, "m.csv")))
    assert [i.error[0] if i.error else None for i in items] == [
        None,
        None,
        "missing_file",
        "unsupported_uri",
        "missing_file",
    ]
    assert items[0].source_uri == str((tmp_path / "_imgs" / "img0000.jpg").resolve())
    assert items[0].caption == "first" and items[1].caption is None


def test_manifest_without_a_path_column_is_a_clear_shard_error(tmp_path):
    (tmp_path / "m.csv").write_text("filename,caption\na.jpg,x\n")
    with pytest.raises(ShardError, match="add a 'path' column"):
        list(iter_items(shard_info(tmp_path, "m.csv")))


def test_unknown_shard_key_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="registered as a partition"):
        shard_info(tmp_path, "gone")


def test_cap_caption_cuts_at_a_character_boundary_and_says_so():
    assert cap_caption("short", 10) == ("short", "")
    caption, note = cap_caption("a\u20ac\u20ac", 5)  # 1 + 3 + 3 bytes; byte 5 splits a euro
    assert caption == "a\u20ac" and "truncated to 4 of 7 bytes (max_caption_bytes=5)" in note
    caption, note = cap_caption("already a prefix", 100, total_bytes=10_000)
    assert caption == "already a prefix" and "of 10000 bytes" in note
    assert escape_text("ok.jpg") == "ok.jpg"
    assert escape_text(os.fsdecode(b"bad\xff.jpg")) == "bad\\xff.jpg"


def test_tar_sidecars_that_cannot_be_read_are_quarantined_and_the_image_kept(tmp_path):
    big_json = json.dumps({"caption": "x" * 5000}).encode()
    _tar(
        tmp_path / "t.tar",
        [
            ("k1.jpg", image_bytes(1)),
            ("k1.json", big_json),  # over max_file_bytes
            ("k2.jpg", image_bytes(2)),
            ("k2.txt", b"\xff\xfe not UTF-8"),
        ],
    )
    items = list(iter_items(shard_info(tmp_path, "t.tar"), max_file_bytes=4000))
    got = [(i.source_uri.split("#")[1], i.error[0] if i.error else None) for i in items]
    assert got == [("k1.jpg", None), ("k1.json", "too_large_file"), ("k2.jpg", None)]
    assert items[0].caption is None and "k1.json not read (too_large_file)" in items[0].notes[0]
    assert items[2].caption == "\ufffd\ufffd not UTF-8" and "not valid UTF-8" in items[2].notes[0]
