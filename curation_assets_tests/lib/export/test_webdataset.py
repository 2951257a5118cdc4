"""WebDataset shards: round trip, failures reported per row, determinism, keys, extensions."""

import io
import json
import tarfile
from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib.export.webdataset import image_extension, write_webdataset
from curation_assets.lib.images import SourceReader
from curation_assets_tests.conftest import image_bytes


def _png_bytes(seed: int) -> bytes:
    return image_bytes(seed, fmt="PNG")


@pytest.fixture
def sources(tmp_path: Path):
    src = tmp_path / "src#weird"  # a '#' in a folder name must not confuse the reader
    src.mkdir()
    files = {}
    for i in range(3):
        p = src / f"img{i}.jpg"
        p.write_bytes(image_bytes(i))
        files[f"{i:064x}"] = (str(p), p.read_bytes())
    # A PNG whose name claims .jpg: exported with its true extension.
    p = src / "liar.jpg"
    p.write_bytes(_png_bytes(9))
    files[f"{9:064x}"] = (str(p), p.read_bytes())
    tar_path = src / "shard.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in (3, 4):
            data = image_bytes(i)
            info = tarfile.TarInfo(f"sub/key{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            files[f"{i:064x}"] = (f"{tar_path}#sub/key{i}.jpg", data)
    (src / "empty.jpg").write_bytes(b"")
    (src / "text.bin").write_bytes(b"not an image at all")
    ok = [
        {"image_id": k, "source_uri": uri, "caption": f"caption {k[-1]}", "weight": 1.0 + j}
        for j, (k, (uri, _)) in enumerate(sorted(files.items()))
    ]
    ok[0]["caption"] = None
    bad = [
        {
            "image_id": "f" * 64,
            "source_uri": str(src / "missing.jpg"),
            "caption": "x",
            "weight": 1.0,
        },
        {"image_id": "e" * 64, "source_uri": str(src / "empty.jpg"), "caption": "x", "weight": 1.0},
        {"image_id": "d" * 64, "source_uri": str(src / "text.bin"), "caption": "x", "weight": 1.0},
        {"image_id": "c" * 64, "source_uri": f"{tar_path}#nope.jpg", "caption": "x", "weight": 1.0},
    ]
    return pl.DataFrame(ok + bad, schema_overrides={"caption": pl.String}), files


def _read_shard(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            assert fh is not None
            out[m.name] = fh.read()
            assert m.mtime == 0 and m.uid == 0 and m.mode == 0o644
        return out


def test_webdataset_round_trip_with_failures_reported(tmp_path, sources):
    rows, files = sources
    out = tmp_path / "wds"
    result = write_webdataset(rows, None, out, shard_size=2, prefix="train")
    assert [p.name for p, _ in result.shards] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    assert [n for _, n in result.shards] == [2, 2, 2] and result.n_written == 6
    assert not list(out.glob("*.tmp"))
    reasons = {f.image_id[0]: f.reason for f in result.failures}
    assert reasons == {
        "f": "read_error",
        "e": "zero_byte",
        "d": "unknown_format",
        "c": "read_error",
    }
    assert "no member" in next(f.detail for f in result.failures if f.image_id[0] == "c")
    assert result.failures_frame().height == 4

    members: dict[str, bytes] = {}
    for path, _ in result.shards:
        members.update(_read_shard(path))
    assert len(members) == 3 * 6
    captions = {r["image_id"]: r["caption"] for r in rows.iter_rows(named=True)}
    weights = {r["image_id"]: r["weight"] for r in rows.iter_rows(named=True)}
    for key, (uri, data) in files.items():
        ext = "png" if key.endswith("9") else "jpg"
        assert members[f"{key}.{ext}"] == data
        assert members[f"{key}.txt"].decode() == (captions[key] or "")
        meta = json.loads(members[f"{key}.json"])
        assert meta == {
            "image_id": key,
            "weight": weights[key],
            "source_uri": uri,
            "caption": captions[key],
        }
    # Samples are sorted by key within and across shards; a sample's members stay together.
    first = _read_shard(result.shards[0][0])
    assert sorted({n.split(".")[0] for n in first}) == sorted(files)[:2]


def test_webdataset_is_deterministic_and_overwrite_is_explicit(tmp_path, sources):
    rows, _ = sources
    a = write_webdataset(rows, None, tmp_path / "a", shard_size=4)
    b = write_webdataset(rows.reverse(), None, tmp_path / "b", shard_size=4)
    assert [p.read_bytes() for p, _ in a.shards] == [p.read_bytes() for p, _ in b.shards]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_webdataset(rows, None, tmp_path / "a", shard_size=4)
    smaller = write_webdataset(rows.head(3), None, tmp_path / "a", shard_size=2, overwrite=True)
    assert [n for _, n in smaller.shards] == [2, 1]
    assert [p.name for p in smaller.removed_stale] == []  # 2 shards before, 2 now
    one = write_webdataset(rows.head(1), None, tmp_path / "a", shard_size=2, overwrite=True)
    assert [p.name for p in one.removed_stale] == ["curated-000001.tar"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["curated-000000.tar"]


def test_webdataset_custom_reader_failure_does_not_stop_the_others(tmp_path):
    rows = pl.DataFrame(
        {
            "image_id": ["a1", "b2", "c3"],
            "source_uri": ["mem://a", "mem://b", "mem://c"],
            "caption": ["x", "y", "z"],
            "weight": [1.0, 1.0, 1.0],
            "shard": ["s", "s", "s"],
        }
    )
    store = {"mem://a": image_bytes(1), "mem://c": _png_bytes(2)}

    def read(uri: str) -> bytes:
        if uri not in store:
            raise ConnectionError(f"backend down for {uri}")
        return store[uri]

    result = write_webdataset(rows, read, tmp_path / "o", shard_size=10)
    assert result.n_written == 2 and len(result.shards) == 1
    assert [(f.image_id, f.reason) for f in result.failures] == [("b2", "read_error")]
    assert "ConnectionError" in result.failures[0].detail
    names = set(_read_shard(result.shards[0][0]))
    assert names == {"a1.jpg", "a1.txt", "a1.json", "c3.png", "c3.txt", "c3.json"}
    meta = json.loads(_read_shard(result.shards[0][0])["c3.json"])
    assert meta["shard"] == "s"


def test_webdataset_rejects_unusable_keys(tmp_path):
    rows = pl.DataFrame(
        {"image_id": ["a.b"], "source_uri": ["x"], "caption": [None], "weight": [1.0]},
        schema_overrides={"caption": pl.String},
    )
    with pytest.raises(ValueError, match="WebDataset keys"):
        write_webdataset(rows, None, tmp_path)


def test_source_reader_and_extension(tmp_path, sources):
    _, files = sources
    with SourceReader(max_open_tars=1) as reader:
        for uri, data in files.values():
            assert reader(uri) == data
        with pytest.raises(FileNotFoundError):
            reader(str(tmp_path / "nowhere.jpg"))
    assert image_extension(_png_bytes(0), "x.jpg") == "png"
    assert image_extension(image_bytes(0), "") == "jpg"
    assert image_extension(b"\x00\x01", "photo.JPEG") == "jpg"
    assert image_extension(b"\x00\x01", "blob") is None
