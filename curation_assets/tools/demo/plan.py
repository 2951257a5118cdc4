"""The plan: every item of the corpus (shard, kind, edit, format, caption, order)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from curation_assets.tools.demo.bases import Base
from curation_assets.tools.demo.layout import (
    EDITS,
    NEAR_DUP_BASE_FRACTION,
    NEAR_DUP_COPIES,
    NEAR_DUP_SAME_SHARD,
    SHARD_CSV,
    SHARD_FOLDER,
    SHARD_PARQUET,
    SHARD_SHARES,
    SHARD_TAR,
    SHARDS,
    seeded_rng,
)

_PHOTOGRAPHERS = ("A. Ansel", "B. Brandt", "C. Cartier", "D. Doisneau", "E. Erwitt", "F. Fan Ho")
_LICENSES = ("CC0", "CC-BY-4.0")
_CAPTION_SUFFIXES = ("", "", "", "", " — demo set", " (café series)", " ✨")


@dataclass
class Spec:
    """One enumerable input to write."""

    shard: str
    kind: str
    base_id: int | None = None
    edit: str | None = None
    corrupt: str | None = None
    special: list[str] = field(default_factory=list)
    ext: str = "jpg"
    caption: str | None = None
    meta: dict[str, str] | None = None
    subdir: str = ""
    dup_of: Spec | None = None
    same_path: bool = False
    exif_orientation: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    data: bytes | None = None
    seq: int = -1
    relpath: str = ""
    source_uri: str = ""


def _caption_for(rng: np.random.Generator, base: Base) -> str:
    tone = "warm" if base.attributes["palette"] == "warm" else "cool"
    if base.style == "photo":
        templates = ("{s}", "a close-up of {s}", "detail from a photo of {s}", "{s}, cropped")
    elif base.style == "mosaic":
        templates = ("{s}", "two photos side by side: {s}")
    elif base.style == "texture":
        templates = ("a {t}-toned {s}", "{s} in {t} colours", "seamless {t} {s}")
    else:
        templates = ("abstract {t} composition of {s}", "{s} on a {t} background", "{t} {s}")
    text = templates[int(rng.integers(len(templates)))].format(s=base.subject, t=tone)
    return text + _CAPTION_SUFFIXES[int(rng.integers(len(_CAPTION_SUFFIXES)))]


def _assign_caption(rng: np.random.Generator, spec: Spec, base: Base | None) -> None:
    """Caption (and tar metadata) for an image spec, according to its shard's conventions."""
    if base is None:
        return
    if spec.shard in (SHARD_CSV, SHARD_PARQUET):
        spec.caption = _caption_for(rng, base) if rng.random() < 0.6 else None
        return
    spec.caption = _caption_for(rng, base) if rng.random() < 1 / 3 else None
    if spec.shard == SHARD_TAR and rng.random() < 0.3:
        spec.meta = {
            "license": _LICENSES[int(rng.integers(len(_LICENSES)))],
            "photographer": _PHOTOGRAPHERS[int(rng.integers(len(_PHOTOGRAPHERS)))],
        }


def plan_items(seed: int, bases: list[Base]) -> list[Spec]:
    """Decide every item: shard, kind, edit, format, caption and order."""
    rng = seeded_rng(seed, 3)
    n = len(bases)
    # Originals: a balanced split of the bases over the shards.
    order = rng.permutation(n)
    cuts = np.cumsum([round(s * n) for s in SHARD_SHARES[:-1]])
    base_shard: dict[int, str] = {}
    for k, chunk in enumerate(np.split(order, cuts)):
        for b in chunk:
            base_shard[int(b)] = SHARDS[k]
    originals: dict[int, Spec] = {}
    for base in bases:
        shard = base_shard[base.base_id]
        ext = base.ext
        if shard == SHARD_FOLDER and rng.random() < 0.06:
            ext = "webp"
        spec = Spec(shard, "original", base.base_id, ext=ext)
        if shard == SHARD_FOLDER and rng.random() < 0.25:
            spec.subdir = "sub"
        originals[base.base_id] = spec

    # Specials: valid but unusual encodings of some originals.
    wanted = (
        ("exif_rotated", SHARD_FOLDER, 6),
        ("exif_rotated", SHARD_TAR, 8),
        ("animated_gif", SHARD_FOLDER, 0),
        ("16bit", SHARD_FOLDER, 0),
        ("grayscale", SHARD_TAR, 0),
        ("rgba", SHARD_CSV, 0),
        ("palette", SHARD_PARQUET, 0),
    )
    special_ext = {"animated_gif": "gif", "16bit": "png", "grayscale": "png", "rgba": "png"}
    taken: set[int] = set()
    for tag, shard, orient in wanted:
        cands = [
            b.base_id
            for b in bases
            if base_shard[b.base_id] == shard
            and b.base_id not in taken
            and (tag != "exif_rotated" or b.attributes["orientation"] != "square")
        ]
        bid = cands[int(rng.integers(len(cands)))]
        taken.add(bid)
        spec = originals[bid]
        spec.special = [tag]
        spec.ext = special_ext.get(tag, "png" if tag == "palette" else "jpg")
        if tag == "exif_rotated":
            spec.exif_orientation = orient

    seq: list[Spec] = []
    near: list[Spec] = []
    lo, hi = NEAR_DUP_COPIES
    for base in bases:
        orig = originals[base.base_id]
        seq.append(orig)
        if rng.random() >= NEAR_DUP_BASE_FRACTION:
            continue
        n_copies = int(rng.integers(lo, hi + 1))
        edits = rng.choice(len(EDITS), size=n_copies, replace=False)
        for e in edits:
            edit = EDITS[int(e)]
            if rng.random() < NEAR_DUP_SAME_SHARD:
                shard = orig.shard
            else:
                others = [s for s in SHARDS if s != orig.shard]
                shard = others[int(rng.integers(len(others)))]
            ext = "jpg" if edit == "reencode" else base.ext
            copy = Spec(shard, "near_duplicate", base.base_id, edit=edit, ext=ext, dup_of=orig)
            if shard == SHARD_FOLDER and rng.random() < 0.25:
                copy.subdir = "sub"
            seq.append(copy)
            near.append(copy)
    for spec in seq:
        _assign_caption(rng, spec, bases[spec.base_id] if spec.base_id is not None else None)

    # Corrupt inputs, spread over the shards, at random positions.
    corrupt = (
        (SHARD_FOLDER, "truncated", "jpg"),
        (SHARD_FOLDER, "zero_byte", "png"),
        (SHARD_FOLDER, "not_an_image", "jpg"),
        (SHARD_FOLDER, "orphan_sidecar", "txt"),
        (SHARD_FOLDER, "decompression_bomb", "png"),
        (SHARD_TAR, "truncated", "png"),
        (SHARD_TAR, "zero_byte", "jpg"),
        (SHARD_TAR, "not_an_image", "jpg"),
        (SHARD_CSV, "missing_file", "jpg"),
        (SHARD_CSV, "truncated", "png"),
        (SHARD_CSV, "not_an_image", "jpg"),
        (SHARD_PARQUET, "missing_file", "png"),
        (SHARD_PARQUET, "zero_byte", "webp"),
        (SHARD_PARQUET, "decompression_bomb", "png"),
    )
    for shard, what, ext in corrupt:
        spec = Spec(shard, "corrupt", corrupt=what, ext=ext)
        if shard == SHARD_FOLDER and rng.random() < 0.3:
            spec.subdir = "sub"
        seq.insert(int(rng.integers(0, len(seq) + 1)), spec)

    # Exact duplicates: byte copies of originals, inserted after them (so that the copy, not
    # the original, is the later one in enumeration order when both are in one shard).
    exact = (
        (SHARD_FOLDER, SHARD_FOLDER, False),
        (SHARD_FOLDER, SHARD_FOLDER, False),
        (SHARD_FOLDER, SHARD_FOLDER, False),
        (SHARD_TAR, SHARD_TAR, False),
        (SHARD_TAR, SHARD_TAR, False),
        (SHARD_FOLDER, SHARD_TAR, False),
        (SHARD_TAR, SHARD_FOLDER, False),
        (SHARD_CSV, SHARD_CSV, True),
        (SHARD_PARQUET, SHARD_PARQUET, True),
        (SHARD_CSV, SHARD_CSV, False),
        (SHARD_PARQUET, SHARD_CSV, False),
        (SHARD_FOLDER, SHARD_PARQUET, False),
    )
    used: set[int] = set(taken)
    for src_shard, dst_shard, same_path in exact:
        free = [s for s in originals.values() if s.shard == src_shard and s.base_id not in used]
        # An original at the shard's top level, so that a copy in the same shard enumerates
        # after it. A small corpus may have none left there: one from ``sub/`` moves up.
        cands = [s for s in free if s.subdir == ""] or free
        orig = cands[int(rng.integers(len(cands)))]
        orig.subdir = ""
        assert orig.base_id is not None
        used.add(orig.base_id)
        dup = Spec(dst_shard, "exact_duplicate", orig.base_id, ext=orig.ext, dup_of=orig)
        dup.same_path = same_path
        if dst_shard == SHARD_FOLDER and rng.random() < 0.5:
            dup.subdir = "sub"
        _assign_caption(rng, dup, bases[orig.base_id])
        pos = seq.index(orig)
        seq.insert(int(rng.integers(pos + 1, len(seq) + 1)), dup)

    for i, spec in enumerate(seq):
        spec.seq = i
        if spec.base_id is not None:
            spec.attributes = dict(bases[spec.base_id].attributes)
    return seq
