"""Tests for the deterministic demo corpus (``curation_assets.tools.demo``)."""

import io
import json
import os
import struct
import tarfile
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from curation_assets.tools.demo import (
    CORRUPT_KINDS,
    EDITS,
    GENERATOR_VERSION,
    ITEM_SCHEMA,
    MIN_N_BASE,
    SHARDS,
    SPECIAL_TAGS,
    DemoCorpus,
    build_demo_corpus,
    load_ground_truth,
)

SIDECARS = (".txt", ".json")
SMALL_N_BASE = 48


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> DemoCorpus:
    """The default demo corpus, built once for the module."""
    return build_demo_corpus(tmp_path_factory.mktemp("demo") / "source")


@pytest.fixture(scope="module")
def items(corpus: DemoCorpus) -> pl.DataFrame:
    """The ground-truth items of the default corpus."""
    return corpus.load_items()


@pytest.fixture(scope="module")
def tar_members(corpus: DemoCorpus) -> dict[str, bytes]:
    """Member name -> bytes of the tar shard, in archive order."""
    out: dict[str, bytes] = {}
    with tarfile.open(corpus.root / "shard-001.tar") as tar:
        for m in tar.getmembers():
            fh = tar.extractfile(m)
            assert fh is not None
            out[m.name] = fh.read()
    return out


def _read(root: Path, relpath: str, tar_members: dict[str, bytes]) -> bytes:
    if "#" in relpath:
        return tar_members[relpath.split("#", 1)[1]]
    return (root / relpath).read_bytes()


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_shards_exist_with_their_kinds(corpus: DemoCorpus) -> None:
    """The four shards exist under the root, of the three kinds, and match the ground truth."""
    assert corpus.shards == sorted(SHARDS)
    assert (corpus.root / "shard-000").is_dir()
    assert (corpus.root / "shard-000" / "sub").is_dir()
    assert tarfile.is_tarfile(corpus.root / "shard-001.tar")
    assert (corpus.root / "shard-002.csv").is_file()
    assert (corpus.root / "shard-003.parquet").is_file()
    assert (corpus.root / "_manifest_images" / "shard-002").is_dir()
    doc = json.loads(corpus.ground_truth_path.read_text(encoding="utf-8"))
    kinds = {name: s["kind"] for name, s in doc["shards"].items()}
    assert kinds == {
        "shard-000": "folder",
        "shard-001.tar": "tar",
        "shard-002.csv": "manifest",
        "shard-003.parquet": "manifest",
    }
    assert (
        doc["generator_version"] == GENERATOR_VERSION and doc["seed"] == 0 and doc["n_base"] == 360
    )


def test_frame_schema_and_bases(items: pl.DataFrame) -> None:
    """The frame has the documented columns; every base has exactly one original."""
    assert items.schema == pl.Schema(ITEM_SCHEMA)
    assert 500 <= items.height <= 1000
    assert set(items["kind"]) == {"original", "near_duplicate", "exact_duplicate", "corrupt"}
    originals = items.filter(pl.col("kind") == "original")
    assert sorted(originals["base_id"].to_list()) == list(range(360))
    good = items.filter(pl.col("kind") != "corrupt")
    assert good["attr_source"].null_count() == 0
    assert set(good["attr_source"]) == {"photo", "procedural"}
    assert set(good["attr_palette"]) == {"warm", "cool"}
    assert set(good["attr_orientation"]) == {"landscape", "portrait", "square"}
    n_photo = originals.filter(pl.col("attr_source") == "photo").height
    assert 0.25 * 360 <= n_photo <= 0.4 * 360
    corrupt = items.filter(pl.col("kind") == "corrupt")
    assert corrupt["base_id"].null_count() == corrupt.height
    assert corrupt["attr_source"].null_count() == corrupt.height
    near = items.filter(pl.col("kind") == "near_duplicate")
    assert set(near["edit"]) == set(EDITS)
    assert items.filter(pl.col("kind") != "near_duplicate")["edit"].null_count() == (
        items.height - near.height
    )
    # Near duplicates land both in their original's shard and in other shards.
    orig_shard = dict(zip(originals["source_uri"], originals["shard"], strict=True))
    same = [orig_shard[d] == s for d, s in zip(near["duplicate_of"], near["shard"], strict=True)]
    assert any(same) and not all(same)


def test_counts_match_files_members_and_rows(corpus: DemoCorpus, items: pl.DataFrame) -> None:
    """Per-shard item counts match the folder's files, the tar's members and manifest rows."""
    doc = json.loads(corpus.ground_truth_path.read_text(encoding="utf-8"))
    per_shard = Counter(items["shard"].to_list())
    for name, s in doc["shards"].items():
        assert per_shard[name] == s["n_items"]

    groups: dict[str, list[str]] = {}
    for dirpath, _, filenames in os.walk(corpus.root / "shard-000"):
        for f in filenames:
            if f != "_SUCCESS":
                p = Path(dirpath) / f
                groups.setdefault(str(p.with_suffix("")), []).append(p.suffix)
    n_folder = sum(max(1, sum(s not in SIDECARS for s in sfx)) for sfx in groups.values())
    assert n_folder == per_shard["shard-000"]

    with tarfile.open(corpus.root / "shard-001.tar") as tar:
        names = tar.getnames()
    images = [n for n in names if not n.endswith(SIDECARS)]
    assert len(images) == per_shard["shard-001.tar"]
    keys = [n.split(".", 1)[0] for n in names]
    assert keys == sorted(keys)  # members of one key are consecutive
    assert all(k.startswith("sample") and len(k) == len("sample000000") for k in keys)

    csv = pl.read_csv(corpus.root / "shard-002.csv", infer_schema=False)
    assert csv.columns == ["path", "caption"] and csv.height == per_shard["shard-002.csv"]
    pq = pl.read_parquet(corpus.root / "shard-003.parquet")
    assert pq.schema == pl.Schema({"path": pl.String, "caption": pl.String})
    assert pq.height == per_shard["shard-003.parquet"]
    assert pq["caption"].null_count() > 0
    for frame, shard in ((csv, "shard-002.csv"), (pq, "shard-003.parquet")):
        expected = items.filter(pl.col("shard") == shard)["source_uri"].to_list()
        got = [str((corpus.root / p).resolve()) for p in frame["path"]]
        assert got == expected
        assert all(p.startswith("_manifest_images/") for p in frame["path"])


def test_source_uris_name_inputs_as_ingest_does(corpus: DemoCorpus, items: pl.DataFrame) -> None:
    """Folder/manifest URIs are absolute paths; tar URIs are ``tar_path#member``."""
    tar_path = str((corpus.root / "shard-001.tar").resolve())
    for row in items.iter_rows(named=True):
        uri, rel = row["source_uri"], row["relpath"]
        if row["shard"] == "shard-001.tar":
            assert uri == f"{tar_path}#{rel.split('#', 1)[1]}"
        else:
            assert uri == str((corpus.root / rel).resolve())
            exists = Path(uri).exists()
            assert exists == (row["corrupt"] != "missing_file")


def test_every_good_item_decodes(
    corpus: DemoCorpus, items: pl.DataFrame, tar_members: dict[str, bytes]
) -> None:
    """Every non-corrupt item decodes fully; EXIF-rotated ones come out upright."""
    good = items.filter(pl.col("kind") != "corrupt")
    for row in good.iter_rows(named=True):
        data = _read(corpus.root, row["relpath"], tar_members)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            raw_size = im.size
            upright = ImageOps.exif_transpose(im)
            w, h = upright.size
        assert min(w, h) >= 1
        if "exif_rotated" in row["special"]:
            assert (w, h) == raw_size[::-1]
            orientation = "landscape" if w > h else "portrait"
            assert orientation == row["attr_orientation"]


def test_duplicates(corpus: DemoCorpus, items: pl.DataFrame, tar_members: dict[str, bytes]) -> None:
    """Exact duplicates are byte-identical to their original; near duplicates are not."""
    by_uri = {
        r["source_uri"]: r for r in items.filter(pl.col("kind") == "original").iter_rows(named=True)
    }
    exact = items.filter(pl.col("kind") == "exact_duplicate")
    assert 10 <= exact.height <= 14
    shards_of = []
    for row in exact.iter_rows(named=True):
        orig = by_uri[row["duplicate_of"]]
        assert orig["base_id"] == row["base_id"]
        a = _read(corpus.root, row["relpath"], tar_members)
        b = _read(corpus.root, orig["relpath"], tar_members)
        assert a == b
        shards_of.append((orig["shard"], row["shard"], row["source_uri"] == orig["source_uri"]))
    assert any(o == d and not same for o, d, same in shards_of)  # copy within a shard
    assert any(o != d for o, d, _ in shards_of)  # copy across shards
    assert any(same for _, _, same in shards_of)  # manifest row repeating a path
    near = items.filter(pl.col("kind") == "near_duplicate")
    assert near.height > 50
    for row in near.iter_rows(named=True):
        orig = by_uri[row["duplicate_of"]]
        assert orig["base_id"] == row["base_id"]
        a = _read(corpus.root, row["relpath"], tar_members)
        assert a != _read(corpus.root, orig["relpath"], tar_members)


def test_corrupt_items(
    corpus: DemoCorpus, items: pl.DataFrame, tar_members: dict[str, bytes]
) -> None:
    """Every corrupt kind is planted and really is broken in the way it claims."""
    corrupt = items.filter(pl.col("kind") == "corrupt")
    assert set(corrupt["corrupt"]) == set(CORRUPT_KINDS)
    assert corrupt.height >= 12
    assert corrupt["shard"].n_unique() == 4
    for row in corrupt.iter_rows(named=True):
        what, rel = row["corrupt"], row["relpath"]
        if what == "missing_file":
            assert not Path(row["source_uri"]).exists()
            continue
        data = _read(corpus.root, rel, tar_members)
        if what == "zero_byte":
            assert data == b""
        elif what == "not_an_image":
            with pytest.raises(UnidentifiedImageError):
                Image.open(io.BytesIO(data))
        elif what == "truncated":
            with pytest.raises(OSError), Image.open(io.BytesIO(data)) as im:
                im.load()
        elif what == "orphan_sidecar":
            p = corpus.root / rel
            assert p.suffix == ".txt" and p.read_text(encoding="utf-8").strip()
            assert not [q for q in p.parent.glob(p.stem + ".*") if q.suffix != ".txt"]
        elif what == "decompression_bomb":
            assert len(data) < 200_000 and data[12:16] == b"IHDR"
            w, h = struct.unpack(">II", data[16:24])
            assert w * h > 500_000_000
            with pytest.raises(Image.DecompressionBombError):
                Image.open(io.BytesIO(data))
    assert "truncated" in corrupt.filter(pl.col("shard") == "shard-001.tar")["corrupt"].to_list()


def test_special_encodings(
    corpus: DemoCorpus, items: pl.DataFrame, tar_members: dict[str, bytes]
) -> None:
    """Each special tag is present once or more, with the encoding it names."""
    special = items.filter(pl.col("special").list.len() > 0)
    tags = [t for ts in special["special"] for t in ts]
    assert set(tags) == set(SPECIAL_TAGS)
    assert set(special["kind"]) == {"original"}
    for row in special.iter_rows(named=True):
        with Image.open(io.BytesIO(_read(corpus.root, row["relpath"], tar_members))) as im:
            tag = row["special"][0]
            if tag == "exif_rotated":
                assert im.format == "JPEG" and im.getexif().get(0x0112) in (6, 8)
            elif tag == "animated_gif":
                assert im.format == "GIF" and getattr(im, "n_frames", 1) == 3
            elif tag == "rgba":
                assert im.mode == "RGBA" and im.getchannel("A").getextrema() == (0, 255)
            elif tag == "palette":
                assert im.mode == "P"
            elif tag == "grayscale":
                assert im.mode == "L"
            else:
                assert im.mode.startswith("I;16") or im.mode == "I"


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    """Two builds with one seed are byte-identical; the ground truth differs only by root."""
    a = build_demo_corpus(tmp_path / "a", seed=3, n_base=SMALL_N_BASE)
    b = build_demo_corpus(tmp_path / "b", seed=3, n_base=SMALL_N_BASE)
    fa, fb = _files(a.root), _files(b.root)
    assert fa.keys() == fb.keys()
    gt = "ground_truth.json"
    assert {k: v for k, v in fa.items() if k != gt} == {k: v for k, v in fb.items() if k != gt}
    ta = fa[gt].decode("utf-8").replace(str(a.root), "<ROOT>")
    tb = fb[gt].decode("utf-8").replace(str(b.root), "<ROOT>")
    assert ta == tb
    assert (
        a.load_items()
        .drop("source_uri", "duplicate_of")
        .equals(b.load_items().drop("source_uri", "duplicate_of"))
    )
    small = a.load_items()
    assert set(small["corrupt"].drop_nulls()) == set(CORRUPT_KINDS)
    assert {t for ts in small["special"] for t in ts} == set(SPECIAL_TAGS)


def test_rerun_reuses_and_other_seed_rebuilds(tmp_path: Path) -> None:
    """A complete corpus is reused untouched; other settings rebuild it in place."""
    dest = tmp_path / "src"
    first = build_demo_corpus(dest, seed=5, n_base=SMALL_N_BASE)
    (dest / "notes.md").write_text("not ours", encoding="utf-8")
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}
    again = build_demo_corpus(dest, seed=5, n_base=SMALL_N_BASE)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before
    other = build_demo_corpus(dest, seed=6, n_base=SMALL_N_BASE)
    assert json.loads(other.ground_truth_path.read_text(encoding="utf-8"))["seed"] == 6
    assert (dest / "notes.md").read_text(encoding="utf-8") == "not ours"
    assert load_ground_truth(other.ground_truth_path).height > SMALL_N_BASE
    assert not list(dest.glob("*.tmp"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_smallest_allowed_corpus_plants_every_kind(tmp_path: Path, seed: int) -> None:
    """``n_base=MIN_N_BASE`` builds and still plants every kind of item.

    It crashed (``high <= 0``) when the folder shard ran out of top-level originals for its
    exact duplicates.
    """
    corpus = build_demo_corpus(tmp_path / "min", seed=seed, n_base=MIN_N_BASE)
    items = corpus.load_items()
    assert set(items["kind"]) == {"original", "near_duplicate", "exact_duplicate", "corrupt"}
    originals = items.filter(pl.col("kind") == "original")
    assert sorted(originals["base_id"].to_list()) == list(range(MIN_N_BASE))
    assert set(items["corrupt"].drop_nulls()) == set(CORRUPT_KINDS)
    assert {t for ts in items["special"] for t in ts} == set(SPECIAL_TAGS)
    uris = items["source_uri"].to_list()
    shard_of = dict(zip(originals["source_uri"], originals["shard"], strict=True))
    exact = items.filter(pl.col("kind") == "exact_duplicate")
    assert exact.height == 12
    for row in exact.iter_rows(named=True):
        orig = row["duplicate_of"]
        assert orig in shard_of
        if shard_of[orig] == row["shard"] and row["source_uri"] != orig:
            # the copy, not the original, is the later input of its shard
            assert uris.index(orig) < uris.index(row["source_uri"]), row


def test_too_small_n_base_is_refused(tmp_path: Path) -> None:
    """An n_base too small to plant every kind of item is refused."""
    with pytest.raises(ValueError, match="n_base"):
        build_demo_corpus(tmp_path / "x", n_base=5)
