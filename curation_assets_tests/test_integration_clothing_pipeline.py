"""The whole pipeline on real photographs (../shared/datasets/clothing-small), with planted edits.

`curation run` on two shards of real photos — 150 originals, then 20 edited copies of some of
them (flip, crop, colour), one exact copy and 30 other photos — then every fate is asked of
`curation explain` (the tables, not a recomputation), uniqueness is checked against the planted
pairs, and `curation dedup retune` moves τ without recomputing: an edited copy whose cosine to
its original falls below the new τ comes back.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from PIL import Image, ImageEnhance, ImageOps

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DEDUPLICATED_IMAGES

EDITS = {
    "flip": ImageOps.mirror,
    "crop": lambda im: im.crop((im.width // 10, im.height // 10, im.width, im.height)),
    "colour": lambda im: ImageEnhance.Color(im).enhance(1.3),
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "curation_assets.cli", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _explain(home: Path, target: Path | str) -> dict:
    return json.loads(_cli("explain", "--home", str(home), "--json", str(target)).stdout)


def _outcomes(trace: dict) -> dict[str, str]:
    return {s["stage"]: s["outcome"] for s in trace["stages"]}


@pytest.mark.integration
@pytest.mark.slow
def test_real_photos_through_every_stage_explained_and_retuned(tmp_path, clothing_dir):
    photos = sorted((clothing_dir / "validation").rglob("*.jpg"))
    src, home = tmp_path / "src", tmp_path / "home"
    a, b = src / "a", src / "b"
    a.mkdir(parents=True)
    b.mkdir()
    copies = {p: a / f"{p.parent.name}-{p.name}" for p in photos[:150]}
    for p, dst in copies.items():
        shutil.copy(p, dst)
    planted: dict[Path, Path] = {}  # edited copy -> its original (as ingested in shard a)
    for i, p in enumerate(photos[:40:2]):
        name = list(EDITS)[i % len(EDITS)]
        out = b / f"{name}-{i:03d}.jpg"
        with Image.open(p) as im:
            EDITS[name](im.convert("RGB")).save(out, quality=85)
        planted[out] = copies[p]
    shutil.copy(photos[1], b / "exact-copy.jpg")
    for p in photos[150:180]:
        shutil.copy(p, b / f"{p.parent.name}-{p.name}")
    for shard in (a, b):
        (shard / "_SUCCESS").touch()

    _cli("run", "--home", str(home), "--source", str(src))

    # an exact copy: collapsed at ingest onto the photo it copies
    exact = _explain(home, b / "exact-copy.jpg")
    ingest = next(s for s in exact["stages"] if s["stage"] == "ingest")
    assert ingest["outcome"] == "exact_duplicate", ingest
    assert ingest["details"]["kept_source_uri"] == str(copies[photos[1]].resolve())

    # edited copies: in one duplicate group with their own original, through every stage
    delta = home / "delta"
    raw = pl.read_delta(str(delta / "raw_images")).select("image_id", "source_uri")
    id_of = dict(zip(raw["source_uri"], raw["image_id"], strict=True))
    component = DeltaStore(str(delta)).read(DEDUPLICATED_IMAGES)  # merged with its changes
    group_of = dict(zip(component["image_id"], component["component_id"], strict=True))
    found = 0
    for edit, original in planted.items():
        stages = _outcomes(trace := _explain(home, edit))
        assert stages["ingest"] == "ingested" and stages["embed"] == "embedded"
        # no labels: no classifier can score; the filter keeps it and says why
        assert stages["classify"] == "not_scored" and stages["filter"] == "kept", stages
        assert stages["cluster"] == "assigned"
        if stages["dedup"] == "near_duplicate":  # removed: never weighted nor exported
            assert "near duplicate of" in trace["fate"], trace["fate"]
            assert stages["weights"] == stages["export"] == "not_reached", stages
        else:  # alone, or the image its group keeps
            assert stages["dedup"] in ("unique", "kept"), stages
            assert stages["export"] == "exported", stages
        e, o = id_of[str(edit.resolve())], id_of[str(original.resolve())]
        found += group_of[e] is not None and group_of[e] == group_of[o]
    # EfficientNet features at the default τ: most planted edits are found (bench verify: 0.84)
    assert found >= 0.7 * len(planted), f"{found}/{len(planted)} planted pairs grouped"

    # a photo with no planted copy: weighted and exported
    alone = _explain(home, copies[photos[101]])
    assert _outcomes(alone)["weights"] == "weighted", alone["stages"]
    assert _outcomes(alone)["export"] == "exported" and "Exported" in alone["fate"]

    # uniqueness: every image scored against the whole index; an edited copy's nearest other
    # image is its original (k = 5: one planted copy does not make a photo un-unique)
    uniq = pl.read_delta(str(delta / "image_uniqueness"))
    assert sorted(uniq["image_id"]) == sorted(raw["image_id"])
    assert uniq["uniqueness"].is_between(0.0, 2.0).all()
    nearest = dict(zip(uniq["image_id"], uniq["nearest_id"], strict=True))
    hits = sum(
        nearest[id_of[str(e.resolve())]] == id_of[str(o.resolve())] for e, o in planted.items()
    )
    assert hits >= 0.9 * len(planted), f"{hits}/{len(planted)}"

    # τ retune: raise τ just above the strongest pair of the planted edit whose strongest pair
    # is the weakest; that copy is alone again, kept and exported, without a recomputation
    pairs = pl.read_delta(str(delta / "duplicate_pairs"))
    strongest = (
        pl.concat(
            [
                pairs.select(pl.col("image_id_a").alias("image_id"), "similarity"),
                pairs.select(pl.col("image_id_b").alias("image_id"), "similarity"),
            ]
        )
        .group_by("image_id")
        .agg(pl.col("similarity").max())
    )
    edits = {id_of[str(e.resolve())]: e for e in planted}
    weakest = strongest.filter(pl.col("image_id").is_in(list(edits))).sort("similarity").row(0)
    edit, new_tau = edits[weakest[0]], round(float(weakest[1]) + 0.002, 4)
    assert _outcomes(_explain(home, edit))["dedup"] in ("near_duplicate", "kept")
    kept_before = DeltaStore(str(delta)).read(DEDUPLICATED_IMAGES)["kept"].sum()
    _cli("dedup", "retune", "--home", str(home), "--tau", str(new_tau))
    runs = pl.read_delta(str(delta / "dedup_runs")).sort("run_at")
    assert runs["mode"].to_list()[-1] == "retune", runs.select("mode", "reason")
    assert DeltaStore(str(delta)).read(DEDUPLICATED_IMAGES)["kept"].sum() > kept_before
    back = _outcomes(_explain(home, edit))
    assert back["dedup"] == "unique" and back["export"] == "exported", back
